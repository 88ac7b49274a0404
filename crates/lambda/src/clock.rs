//! What time it is, for the cron scheduler: injected, so that a test can
//! run schedules on tokio's paused clock in milliseconds instead of waiting
//! for real minutes. Waiting is always tokio's (`tokio::time::sleep`),
//! which a paused runtime advances by itself; only reading the wall clock
//! is injected.

use std::time::SystemTime;

/// A wall clock.
pub trait Clock: Send + Sync {
    /// The time now.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock (what a worker uses).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A wall clock that moves with tokio's clock from a time the test
/// chooses: on a paused runtime (`#[tokio::test(start_paused = true)]`) it
/// moves only as tokio advances time, so sleeping to a minute boundary
/// lands on it exactly.
#[derive(Debug, Clone)]
pub struct TokioClock {
    /// The wall time at `since`.
    start: SystemTime,
    since: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `start` now.
    pub fn starting_at(start: SystemTime) -> Self {
        Self {
            start,
            since: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.start + self.since.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_moves_with_paused_time_only() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clock = TokioClock::starting_at(start);
        assert_eq!(clock.now(), start);
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), start + Duration::from_secs(90));
    }
}
