//! What each trigger has done, for `/stats` (`triggers`) and `/metrics`
//! (`ol_trigger_*`): messages delivered, failed calls, retries, dead
//! letters, the consumer's lag at the broker and its state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// A counter that only goes up.
#[derive(Debug, Default)]
pub struct Count(AtomicU64);

impl Count {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Its value now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The live counters of one trigger.
#[derive(Debug, Default)]
pub struct TriggerCounters {
    /// Messages whose call succeeded and that were acknowledged.
    pub delivered: Count,
    /// Calls that failed (each attempt counts).
    pub failed: Count,
    /// Attempts after a failed one.
    pub retried: Count,
    /// Messages stored on the dead-letter target.
    pub dead_lettered: Count,
    /// Messages not yet settled at the broker: not delivered yet, or
    /// delivered and not acknowledged (`None` until first asked).
    pub lag: Mutex<Option<u64>>,
    /// Calls in flight now.
    pub in_flight: AtomicU64,
    /// `starting`, `running`, `reconnecting`, `refused` or `stopped`.
    pub state: Mutex<&'static str>,
    /// The last error, even after later successes.
    pub last_error: Mutex<Option<String>>,
}

impl TriggerCounters {
    /// Delivered, failed, retried and dead-lettered, for tests.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.delivered.get(),
            self.failed.get(),
            self.retried.get(),
            self.dead_lettered.get(),
        )
    }

    /// Records `error` as the last one.
    pub fn set_error(&self, error: &str) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error.to_owned());
    }

    /// The last error, or "".
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_default()
    }

    /// Sets the state.
    pub fn set_state(&self, state: &'static str) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }

    /// Sets the lag.
    pub fn set_lag(&self, lag: u64) {
        *self.lag.lock().unwrap_or_else(PoisonError::into_inner) = Some(lag);
    }
}

/// One trigger in `/stats` (`triggers: [...]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerStats {
    /// The lambda it calls.
    pub lambda: String,
    /// Which of its triggers: `nats[0]`, ...
    pub trigger: String,
    /// The broker's URL.
    pub broker: String,
    /// The stream (or topic).
    pub stream: String,
    /// The subjects consumed.
    pub subject: String,
    /// The durable consumer (or group).
    pub consumer: String,
    /// `starting`, `running`, `reconnecting`, `refused` or `stopped`.
    pub state: String,
    /// Messages not yet settled at the broker (pending plus unacknowledged);
    /// `None` before the broker was first asked.
    pub lag: Option<u64>,
    /// Calls in flight now.
    pub in_flight: u64,
    /// Messages whose call succeeded and that were acknowledged.
    pub delivered: u64,
    /// Calls that failed, each attempt counted.
    pub failed: u64,
    /// Attempts after a failed one.
    pub retried: u64,
    /// Messages stored on the dead-letter target.
    pub dead_lettered: u64,
    /// The last error (a failed call, a broker that cannot be reached, a
    /// broker config.json does not allow).
    pub last_error: Option<String>,
}
