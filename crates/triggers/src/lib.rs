//! Queue triggers of `ol` (docs/triggers.md): lambdas called once per
//! message of a NATS JetStream consumer or record of a Kafka consumer
//! group, at least once.
//!
//! - [`TriggerManager`] (`manager`) keeps a consumer running for each
//!   `triggers.nats` and `triggers.kafka` entry of every lambda in the registry, started and
//!   stopped as lambdas come, go and change;
//! - `nats` is one consumer: a durable pull consumer whose messages become
//!   calls, at most `concurrency` at once;
//! - `kafka` is one consumer group member: its records become calls, at
//!   most `concurrency` at once, and `offsets` says which offset of each
//!   partition may be committed (all before it settled);
//! - `supervise` is a consumer's life: refused, or sessions with the
//!   broker and waits between failed ones;
//! - `delivery` is one message's way, whatever the broker: calls, retries
//!   with backoff, the dead-letter target, and the acknowledgement only
//!   after a call succeeded;
//! - [`stats`] is what `/stats` and `/metrics` show of each trigger.
//!
//! Tenants write ol.yaml, operators write config.json: a trigger reaches
//! only the brokers [`TriggerSettings::allowed_brokers`] lists.

mod delivery;
mod kafka;
mod manager;
mod nats;
mod offsets;
pub mod stats;
mod supervise;
#[cfg(feature = "testing")]
pub mod testing;

use std::time::Duration;

use ol_lambda::ol_yaml::queue::BrokerUrl;

pub use delivery::{CallTarget, Delivery, Outcome, Plan, deliver};
pub use manager::TriggerManager;
pub use stats::{TriggerCounters, TriggerStats};

/// The worker's settings for queue triggers (config.json `triggers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerSettings {
    /// Brokers a trigger may connect to, as `HOST:PORT` (IPv6 in
    /// brackets), compared with the host as ol.yaml writes it; `*` allows
    /// any. Empty: no trigger runs.
    pub allowed_brokers: Vec<String>,
    /// Cap on a trigger's `concurrency`.
    pub max_concurrency: u32,
    /// Cap on a trigger's `retries`.
    pub max_retries: u32,
    /// Longest a connection or a request to a broker may take.
    pub connect_timeout: Duration,
    /// How long a broker waits for a message's acknowledgement before it
    /// sends it again; a message being worked on is kept alive every third
    /// of it, so it only matters when the worker is gone.
    pub ack_wait: Duration,
    /// How often the registry is read again for new, changed and removed
    /// triggers.
    pub rescan: Duration,
    /// This worker's identity, the same after a restart and distinct from
    /// every other worker's (`A-Z a-z 0-9 . _ -`). Kafka members use it
    /// for static group membership, so that a restarted worker takes its
    /// partitions back at once; `None`: members join afresh each time.
    pub worker_id: Option<String>,
}

impl Default for TriggerSettings {
    fn default() -> Self {
        Self {
            allowed_brokers: Vec::new(),
            max_concurrency: ol_lambda::ol_yaml::queue::MAX_CONCURRENCY,
            max_retries: ol_lambda::ol_yaml::queue::MAX_RETRIES,
            connect_timeout: Duration::from_secs(5),
            ack_wait: Duration::from_secs(30),
            rescan: Duration::from_secs(5),
            worker_id: None,
        }
    }
}

impl TriggerSettings {
    /// Whether a trigger may connect to `url`.
    pub fn allows(&self, url: &BrokerUrl) -> bool {
        self.allows_address(&url.address())
    }

    /// Whether a trigger may connect to `address` (`HOST:PORT`, as ol.yaml
    /// writes it).
    pub fn allows_address(&self, address: &str) -> bool {
        self.allowed_brokers
            .iter()
            .any(|a| a == "*" || a.trim().eq_ignore_ascii_case(address))
    }

    /// How often a message being worked on is reported in progress.
    pub(crate) fn keepalive(&self) -> Duration {
        (self.ack_wait / 3).max(Duration::from_millis(100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> BrokerUrl {
        text.parse().expect("url")
    }

    #[test]
    fn only_listed_brokers_are_allowed() {
        let none = TriggerSettings::default();
        assert!(!none.allows(&url("nats://127.0.0.1:4222")), "default: none");
        let some = TriggerSettings {
            allowed_brokers: vec![
                "127.0.0.1:4222".into(),
                "Broker.Example:7422".into(),
                "[::1]:4222".into(),
            ],
            ..TriggerSettings::default()
        };
        assert!(some.allows(&url("nats://127.0.0.1")));
        assert!(some.allows(&url("tls://broker.example:7422")));
        assert!(some.allows(&url("nats://[::1]:4222")));
        assert!(!some.allows(&url("nats://127.0.0.1:4223")), "another port");
        assert!(
            !some.allows(&url("nats://localhost:4222")),
            "names are compared as written"
        );
        assert!(!some.allows(&url("nats://10.0.0.1:4222")));
        let any = TriggerSettings {
            allowed_brokers: vec!["*".into()],
            ..TriggerSettings::default()
        };
        assert!(any.allows(&url("nats://10.0.0.1:4222")));
    }
}
