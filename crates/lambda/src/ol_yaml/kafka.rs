//! `triggers.kafka`: Kafka consumer groups that call the lambda once per
//! record (docs/triggers.md), with OpenLambda's `brokers`, `topic` and
//! `group` and the same delivery keys as `triggers.nats`.
//!
//! ```yaml
//! triggers:
//!   kafka:
//!     - brokers: ["127.0.0.1:9092"]  # HOST:PORT, port 9092 by default
//!       topic: orders                # an existing topic
//!       group: ol-orders             # the consumer group: where delivery resumes
//!       concurrency: 4               # calls in flight at once (default 1)
//!       retries: 3                   # attempts after the first (default 3)
//!       backoff_ms: 200              # before the first retry, doubling (default 100)
//!       max_backoff_ms: 5000         # cap of the doubling (default 10000)
//!       dead_letter: orders-dead     # a topic; optional
//! ```

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::queue::{
    DeliveryPolicy, MAX_NAME_LEN, address, backoff_ms, concurrency, default_backoff_ms,
    default_concurrency, default_max_backoff_ms, default_retries, host_port, retries,
};

/// Most bootstrap brokers one entry may list.
pub const MAX_BROKERS: usize = 16;
/// Longest topic name Kafka accepts, in bytes.
pub const MAX_TOPIC_LEN: usize = 249;

/// One entry of `triggers.kafka`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTrigger {
    /// The bootstrap brokers, 1 to [`MAX_BROKERS`].
    #[serde(deserialize_with = "brokers")]
    pub brokers: Vec<KafkaBroker>,
    /// The topic holding the records; the worker never creates it.
    pub topic: KafkaTopic,
    /// The consumer group: the broker keeps its committed offsets, so a
    /// restarted worker resumes where this one stopped, and workers in the
    /// same group share the topic's partitions.
    pub group: KafkaGroup,
    /// Calls in flight at once, 1 to [`super::queue::MAX_CONCURRENCY`].
    #[serde(default = "default_concurrency", deserialize_with = "concurrency")]
    pub concurrency: u32,
    /// Attempts after the first failed one, 0 to [`super::queue::MAX_RETRIES`].
    #[serde(default = "default_retries", deserialize_with = "retries")]
    pub retries: u32,
    /// Wait before the first retry, in ms; it doubles for each next one.
    #[serde(default = "default_backoff_ms", deserialize_with = "backoff_ms")]
    pub backoff_ms: u64,
    /// Longest wait between retries, in ms.
    #[serde(default = "default_max_backoff_ms", deserialize_with = "backoff_ms")]
    pub max_backoff_ms: u64,
    /// The topic a record goes to after its last failed retry; `None`: it
    /// is tried again after `max_backoff_ms`, never dropped.
    #[serde(default)]
    pub dead_letter: Option<KafkaTopic>,
}

impl KafkaTrigger {
    /// Its retries, backoff and concurrency.
    pub fn delivery(&self) -> DeliveryPolicy {
        DeliveryPolicy {
            concurrency: self.concurrency,
            retries: self.retries,
            backoff_ms: self.backoff_ms,
            max_backoff_ms: self.max_backoff_ms,
        }
    }

    /// The brokers as `HOST:PORT,...` (librdkafka's `bootstrap.servers`).
    pub fn bootstrap(&self) -> String {
        let all: Vec<String> = self.brokers.iter().map(KafkaBroker::address).collect();
        all.join(",")
    }
}

fn brokers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<KafkaBroker>, D::Error> {
    let list = Vec::<KafkaBroker>::deserialize(d)?;
    if list.is_empty() || list.len() > MAX_BROKERS {
        return Err(de::Error::custom(format_args!(
            "must list 1 to {MAX_BROKERS} brokers, got {}",
            list.len()
        )));
    }
    Ok(list)
}

/// Checks what one entry's fields cannot check alone: a dead-letter topic
/// other than the topic consumed, and no two entries on one group and
/// topic (they would split each other's partitions). Returns the
/// offending key.
pub(super) fn check_kafka(triggers: &[KafkaTrigger]) -> Result<(), (String, String)> {
    for (i, t) in triggers.iter().enumerate() {
        if t.dead_letter.as_ref() == Some(&t.topic) {
            return Err((
                format!("triggers.kafka[{i}].dead_letter"),
                format!(
                    "`{}` is the topic consumed: its failures would come back",
                    t.topic
                ),
            ));
        }
        let same = |o: &KafkaTrigger| o.topic == t.topic && o.group == t.group;
        if let Some(first) = triggers[..i].iter().position(same) {
            return Err((
                format!("triggers.kafka[{i}].group"),
                format!(
                    "group `{}` on topic `{}` is already used by triggers.kafka[{first}]",
                    t.group, t.topic
                ),
            ));
        }
    }
    Ok(())
}

/// A bootstrap broker: `HOST[:PORT]` (port 9092 by default). A scheme,
/// credentials or a path are refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KafkaBroker {
    /// Host name or address, lower case; IPv6 without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl KafkaBroker {
    /// `HOST:PORT` (IPv6 in brackets): the form config.json
    /// `triggers.allowed_brokers` lists.
    pub fn address(&self) -> String {
        address(&self.host, self.port)
    }
}

impl fmt::Display for KafkaBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address())
    }
}

impl std::str::FromStr for KafkaBroker {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.contains("://") {
            return Err(format!(
                "`{text}`: a Kafka broker is HOST:PORT, without a scheme"
            ));
        }
        if text.contains('@') {
            return Err(format!(
                "`{text}` holds credentials, which ol.yaml may not carry"
            ));
        }
        if text.contains(['/', '?', '#', ',']) {
            return Err(format!("`{text}` is not HOST:PORT"));
        }
        let (host, port) = host_port(text, text, 9092)?;
        Ok(Self { host, port })
    }
}

impl<'de> Deserialize<'de> for KafkaBroker {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// A Kafka topic name: 1 to [`MAX_TOPIC_LEN`] of `A-Z a-z 0-9 . _ -`,
/// not `.` or `..` (the broker's own rule).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KafkaTopic(String);

impl KafkaTopic {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KafkaTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn kafka_name(name: &str, most: usize) -> bool {
    !name.is_empty()
        && name.len() <= most
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl<'de> Deserialize<'de> for KafkaTopic {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        if kafka_name(&name, MAX_TOPIC_LEN) {
            Ok(Self(name))
        } else {
            Err(de::Error::custom(format_args!(
                "`{name}` is not a Kafka topic: 1 to {MAX_TOPIC_LEN} of A-Z a-z 0-9 . _ -"
            )))
        }
    }
}

/// A consumer group id: 1 to 255 of `A-Z a-z 0-9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KafkaGroup(String);

impl KafkaGroup {
    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KafkaGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for KafkaGroup {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        if kafka_name(&name, MAX_NAME_LEN) {
            Ok(Self(name))
        } else {
            Err(de::Error::custom(format_args!(
                "`{name}` is not a consumer group: 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 . _ -"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ol_yaml::tests::{assert_err, ok};

    #[test]
    fn full_entry_parses_to_exact_values() {
        let config = ok(r#"
triggers:
  kafka:
    - brokers: ["127.0.0.1:9093", "Kafka.Example"]
      topic: orders
      group: ol-orders
      concurrency: 4
      retries: 2
      backoff_ms: 200
      max_backoff_ms: 5000
      dead_letter: orders.dead
"#);
        let t = &config.triggers.kafka[0];
        assert_eq!(t.bootstrap(), "127.0.0.1:9093,kafka.example:9092");
        assert_eq!(t.topic.as_str(), "orders");
        assert_eq!(t.group.as_str(), "ol-orders");
        assert_eq!(
            t.delivery(),
            DeliveryPolicy {
                concurrency: 4,
                retries: 2,
                backoff_ms: 200,
                max_backoff_ms: 5000
            }
        );
        assert_eq!(
            t.dead_letter.as_ref().map(KafkaTopic::as_str),
            Some("orders.dead")
        );
        let d = ok("triggers: {kafka: [{brokers: ['[::1]:9092'], topic: t, group: g}]}");
        assert_eq!(d.triggers.kafka[0].delivery(), DeliveryPolicy::default());
        assert_eq!(d.triggers.kafka[0].brokers[0].address(), "[::1]:9092");
    }

    #[test]
    fn bad_values_are_named_by_their_key() {
        let entry = |extra: &str| {
            format!("triggers: {{kafka: [{{brokers: ['h:9092'], topic: t, group: g{extra}}}]}}")
        };
        for (extra, key, why) in [
            (
                ", concurrency: 0",
                ".concurrency",
                "must be between 1 and 64, got 0",
            ),
            (
                ", retries: 21",
                ".retries",
                "must be between 0 and 20, got 21",
            ),
            (
                ", backoff_ms: 0",
                ".backoff_ms",
                "must be between 1 and 3600000",
            ),
            (
                ", dead_letter: t",
                ".dead_letter",
                "`t` is the topic consumed",
            ),
            (
                ", dead_letter: 'a b'",
                ".dead_letter",
                "`a b` is not a Kafka topic",
            ),
            (", durable: d", ".durable", "unknown field `durable`"),
        ] {
            assert_err(
                &entry(extra),
                &format!("ol.yaml: triggers.kafka[0]{key}: {why}"),
            );
        }
        for (brokers, why) in [
            ("[]", "must list 1 to 16 brokers, got 0"),
            ("['kafka://h:1']", "without a scheme"),
            ("['u:p@h:1']", "credentials"),
            ("['h:1/x']", "is not HOST:PORT"),
            ("['h:0']", "invalid port `0`"),
            ("[':9092']", "no valid host"),
        ] {
            assert_err(
                &format!("triggers: {{kafka: [{{brokers: {brokers}, topic: t, group: g}}]}}"),
                "ol.yaml: triggers.kafka[0].brokers",
            );
            assert_err(
                &format!("triggers: {{kafka: [{{brokers: {brokers}, topic: t, group: g}}]}}"),
                why,
            );
        }
        for bad in ["", ".", "..", "a/b", "é"] {
            assert_err(
                &format!("triggers: {{kafka: [{{brokers: [h], topic: '{bad}', group: g}}]}}"),
                "ol.yaml: triggers.kafka[0].topic: ",
            );
        }
        assert_err(
            "triggers: {kafka: [{brokers: [h], topic: t}]}",
            "ol.yaml: triggers.kafka[0]: missing field `group`",
        );
    }

    #[test]
    fn two_entries_may_not_share_a_group_on_a_topic() {
        assert_err(
            "triggers: {kafka: [{brokers: [h], topic: t, group: g}, \
             {brokers: [h], topic: t, group: g, concurrency: 2}]}",
            "ol.yaml: triggers.kafka[1].group: group `g` on topic `t` is already used by triggers.kafka[0]",
        );
        ok("triggers: {kafka: [{brokers: [h], topic: t, group: g}, \
            {brokers: [h], topic: u, group: g}]}");
    }
}
