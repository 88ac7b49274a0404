//! A moving average of durations over about the last 8 samples, kept in one
//! atomic so that the call path records and reads it without a lock. Call
//! times and sandbox creation times are kept this way, to choose between
//! waiting for a busy sandbox and starting a new one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A moving average of durations; zero until the first sample.
#[derive(Debug, Default)]
pub(crate) struct MovingAverage {
    /// In µs; a sample is stored as at least 1, so zero means none yet.
    micros: AtomicU64,
}

impl MovingAverage {
    /// Adds a sample (the first one is taken as it is).
    pub(crate) fn record(&self, took: Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        let old = self.micros.load(Ordering::Relaxed);
        let new = if old == 0 { us } else { old - old / 8 + us / 8 };
        self.micros.store(new.max(1), Ordering::Relaxed);
    }

    /// The average; zero before the first sample.
    pub(crate) fn get(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sample_is_taken_whole_then_each_weighs_an_eighth() {
        let avg = MovingAverage::default();
        assert_eq!(avg.get(), Duration::ZERO);
        avg.record(Duration::from_micros(800));
        assert_eq!(avg.get(), Duration::from_micros(800));
        avg.record(Duration::from_micros(1600));
        assert_eq!(avg.get(), Duration::from_micros(800 - 100 + 200));
    }

    #[test]
    fn an_instant_sample_still_counts_as_a_sample() {
        let avg = MovingAverage::default();
        avg.record(Duration::ZERO);
        assert_eq!(avg.get(), Duration::from_micros(1));
    }
}
