//! `triggers.nats`: JetStream consumers that call the lambda once per
//! message (docs/triggers.md).
//!
//! ```yaml
//! triggers:
//!   nats:
//!     - url: nats://127.0.0.1:4222   # nats:// or tls://, host and port only
//!       stream: ORDERS               # an existing stream
//!       subject: orders.>            # filter; wildcards allowed
//!       durable: ol-orders           # the consumer's name: where delivery resumes
//!       concurrency: 4               # calls in flight at once (default 1)
//!       retries: 3                   # attempts after the first (default 3)
//!       backoff_ms: 200              # before the first retry, doubling (default 100)
//!       max_backoff_ms: 5000         # cap of the doubling (default 10000)
//!       dead_letter: orders.dead     # a subject of some stream; optional
//! ```
//!
//! Every value is checked here, where the key path can be named; whether
//! the worker may reach the broker at all is the worker's decision
//! (config.json `triggers.allowed_brokers`), made when the consumer starts.
//! The caps ([`MAX_CONCURRENCY`], [`MAX_RETRIES`], ...) bound what one
//! tenant's ol.yaml can ask of a worker; the worker may lower them.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

/// Most calls one trigger may have in flight.
pub const MAX_CONCURRENCY: u32 = 64;
/// Most retries after a message's first failed call.
pub const MAX_RETRIES: u32 = 20;
/// Longest wait before a retry, in ms (one hour).
pub const MAX_BACKOFF_MS: u64 = 3_600_000;
/// Longest stream, durable or subject name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// One entry of `triggers.nats`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTrigger {
    /// The server to connect to.
    pub url: BrokerUrl,
    /// The stream holding the messages; the worker never creates it.
    pub stream: NatsName,
    /// The subjects to consume (the consumer's filter subject).
    pub subject: NatsSubject,
    /// The durable consumer's name: the broker keeps its position, so a
    /// restarted worker resumes where this one stopped.
    pub durable: NatsName,
    /// Calls in flight at once, 1 to [`MAX_CONCURRENCY`].
    #[serde(default = "default_concurrency", deserialize_with = "concurrency")]
    pub concurrency: u32,
    /// Attempts after the first failed one, 0 to [`MAX_RETRIES`].
    #[serde(default = "default_retries", deserialize_with = "retries")]
    pub retries: u32,
    /// Wait before the first retry, in ms; it doubles for each next one.
    #[serde(default = "default_backoff_ms", deserialize_with = "backoff_ms")]
    pub backoff_ms: u64,
    /// Longest wait between retries, in ms.
    #[serde(default = "default_max_backoff_ms", deserialize_with = "backoff_ms")]
    pub max_backoff_ms: u64,
    /// Where a message goes after its last failed retry (a subject some
    /// stream stores); `None`: it is redelivered later, never dropped.
    #[serde(default)]
    pub dead_letter: Option<NatsSubject>,
}

impl NatsTrigger {
    /// Its retries, backoff and concurrency.
    pub fn delivery(&self) -> DeliveryPolicy {
        DeliveryPolicy {
            concurrency: self.concurrency,
            retries: self.retries,
            backoff_ms: self.backoff_ms,
            max_backoff_ms: self.max_backoff_ms,
        }
    }
}

pub(super) fn default_concurrency() -> u32 {
    DeliveryPolicy::default().concurrency
}
pub(super) fn default_retries() -> u32 {
    DeliveryPolicy::default().retries
}
pub(super) fn default_backoff_ms() -> u64 {
    DeliveryPolicy::default().backoff_ms
}
pub(super) fn default_max_backoff_ms() -> u64 {
    DeliveryPolicy::default().max_backoff_ms
}

/// Checks what one entry's fields cannot check alone: a dead-letter
/// subject without wildcards, and no two entries on one durable consumer
/// (they would take each other's messages). Returns the offending key.
pub(super) fn check_nats(triggers: &[NatsTrigger]) -> Result<(), (String, String)> {
    for (i, t) in triggers.iter().enumerate() {
        if let Some(dead) = t.dead_letter.as_ref().filter(|d| d.has_wildcard()) {
            return Err((
                format!("triggers.nats[{i}].dead_letter"),
                format!("`{dead}` may not hold a wildcard: messages are published to it"),
            ));
        }
        let same = |o: &NatsTrigger| {
            o.url.address() == t.url.address() && o.stream == t.stream && o.durable == t.durable
        };
        if let Some(first) = triggers[..i].iter().position(same) {
            return Err((
                format!("triggers.nats[{i}].durable"),
                format!(
                    "consumer `{}` of stream `{}` on {} is already used by triggers.nats[{first}]",
                    t.durable, t.stream, t.url
                ),
            ));
        }
    }
    Ok(())
}

/// How the messages of one trigger are delivered to the lambda.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryPolicy {
    /// Calls in flight at once.
    pub concurrency: u32,
    /// Attempts after the first failed one.
    pub retries: u32,
    /// Wait before the first retry, in ms; it doubles for each next one.
    pub backoff_ms: u64,
    /// Longest wait between retries, in ms.
    pub max_backoff_ms: u64,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            concurrency: 1,
            retries: 3,
            backoff_ms: 100,
            max_backoff_ms: 10_000,
        }
    }
}

impl DeliveryPolicy {
    /// The wait before retry `retry` (1 for the first): `backoff_ms`
    /// doubled `retry - 1` times, at most `max_backoff_ms`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(63);
        let ms = self
            .backoff_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_backoff_ms.max(self.backoff_ms));
        Duration::from_millis(ms)
    }
}

/// A number in `least..=most`, refused naming the range otherwise.
fn in_range<'de, D: Deserializer<'de>>(d: D, least: u64, most: u64) -> Result<u64, D::Error> {
    let n = u64::deserialize(d)?;
    if (least..=most).contains(&n) {
        Ok(n)
    } else {
        Err(de::Error::custom(format_args!(
            "must be between {least} and {most}, got {n}"
        )))
    }
}

pub(super) fn concurrency<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    in_range(d, 1, MAX_CONCURRENCY.into()).map(|n| n as u32)
}

pub(super) fn retries<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    in_range(d, 0, MAX_RETRIES.into()).map(|n| n as u32)
}

pub(super) fn backoff_ms<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    in_range(d, 1, MAX_BACKOFF_MS)
}

/// A broker address: `nats://HOST[:PORT]` or `tls://HOST[:PORT]` (port
/// 4222 by default). Credentials, paths and queries are refused: they
/// would be secrets in a tenant's file, or mean nothing to the client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrokerUrl {
    /// `nats` or `tls`.
    pub scheme: String,
    /// Host name or address, lower case; IPv6 without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl BrokerUrl {
    /// `HOST:PORT` (IPv6 in brackets): the form config.json
    /// `triggers.allowed_brokers` lists.
    pub fn address(&self) -> String {
        address(&self.host, self.port)
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.address())
    }
}

impl std::str::FromStr for BrokerUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("`{url}` is not a URL: expected nats://HOST:PORT"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "nats" && scheme != "tls" {
            return Err(format!(
                "unsupported scheme `{scheme}` in `{url}`: expected nats:// or tls://"
            ));
        }
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('@') {
            return Err(format!(
                "`{url}` holds credentials, which ol.yaml may not carry"
            ));
        }
        if authority.contains(['/', '?', '#']) {
            return Err(format!(
                "`{url}` has a path or query: expected nats://HOST:PORT only"
            ));
        }
        let (host, port) = host_port(authority, url, 4222)?;
        Ok(Self { scheme, host, port })
    }
}

/// `HOST:PORT`, an IPv6 host in brackets: a broker as config.json
/// `triggers.allowed_brokers` lists it.
pub(super) fn address(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The host (lower case, IPv6 without brackets) and port of `authority`
/// (`HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT`; `default_port` when there
/// is none); errors quote `whole`, what the user wrote.
pub(super) fn host_port(
    authority: &str,
    whole: &str,
    default_port: u16,
) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{whole}`: unclosed `[` in the host"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    if !host_ok {
        return Err(format!("`{whole}` has no valid host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("`{whole}` has an invalid port `{p}`")),
        },
    };
    Ok((host.to_ascii_lowercase(), port))
}

impl<'de> Deserialize<'de> for BrokerUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// A JetStream stream or consumer name: `[A-Za-z0-9_-]`, 1 to 255 bytes
/// (the server also refuses `.`, `*`, `>` and white space in them).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NatsName(String);

impl NatsName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NatsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NatsName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        let ok = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(name))
        } else {
            Err(de::Error::custom(format_args!(
                "`{name}` is not a stream or consumer name: 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 _ -"
            )))
        }
    }
}

/// A NATS subject: dot-separated tokens of printable ASCII without white
/// space; `*` (one token) and a last `>` (the rest) are wildcards.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NatsSubject(String);

impl NatsSubject {
    /// The subject.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it holds a wildcard (a dead-letter subject may not).
    pub fn has_wildcard(&self) -> bool {
        self.0.split('.').any(|t| t == "*" || t == ">")
    }
}

impl fmt::Display for NatsSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NatsSubject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let subject = String::deserialize(d)?;
        let tokens: Vec<&str> = subject.split('.').collect();
        let last = tokens.len() - 1;
        let ok = subject.len() <= MAX_NAME_LEN
            && tokens.iter().enumerate().all(|(i, t)| {
                !t.is_empty()
                    && t.bytes().all(|b| b.is_ascii_graphic())
                    && (!t.contains('>') || (*t == ">" && i == last))
                    && (!t.contains('*') || *t == "*")
            });
        if ok {
            Ok(Self(subject))
        } else {
            Err(de::Error::custom(format_args!(
                "`{subject}` is not a NATS subject: dot-separated tokens of printable ASCII, `*` or a last `>`"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ol_yaml::tests::{assert_err, ok};

    fn url(text: &str) -> Result<BrokerUrl, String> {
        text.parse()
    }

    #[test]
    fn full_entry_parses_to_exact_values() {
        let config = ok(r#"
triggers:
  nats:
    - url: nats://127.0.0.1:4333
      stream: ORDERS
      subject: orders.>
      durable: ol-orders
      concurrency: 4
      retries: 2
      backoff_ms: 200
      max_backoff_ms: 5000
      dead_letter: orders.dead
"#);
        let t = &config.triggers.nats[0];
        assert_eq!(t.url.to_string(), "nats://127.0.0.1:4333");
        assert_eq!(t.url.address(), "127.0.0.1:4333");
        assert_eq!(t.stream.as_str(), "ORDERS");
        assert_eq!(t.subject.as_str(), "orders.>");
        assert_eq!(t.durable.as_str(), "ol-orders");
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
            t.dead_letter.as_ref().map(NatsSubject::as_str),
            Some("orders.dead")
        );
        assert!(t.subject.has_wildcard());
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let config = ok(
            "triggers: {nats: [{url: 'nats://localhost', stream: S, subject: a.b, durable: d}]}",
        );
        let t = &config.triggers.nats[0];
        assert_eq!(t.url.address(), "localhost:4222");
        assert_eq!(t.delivery(), DeliveryPolicy::default());
        assert_eq!(t.dead_letter, None);
        assert!(config.triggers.allows("GET"), "nats leaves http alone");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let p = DeliveryPolicy {
            backoff_ms: 100,
            max_backoff_ms: 1000,
            ..DeliveryPolicy::default()
        };
        let waits: Vec<u64> = (1..=6).map(|r| p.backoff(r).as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.backoff(u32::MAX), Duration::from_millis(1000));
        // A cap below the first wait never shortens it.
        let p = DeliveryPolicy {
            backoff_ms: 500,
            max_backoff_ms: 10,
            ..p
        };
        assert_eq!(p.backoff(3), Duration::from_millis(500));
    }

    #[test]
    fn urls_are_host_and_port_only() {
        assert_eq!(
            url("NATS://Broker.Example:4222/").map(|u| u.to_string()),
            Ok("nats://broker.example:4222".into())
        );
        assert_eq!(
            url("tls://[::1]:7422").map(|u| u.address()),
            Ok("[::1]:7422".into())
        );
        assert_eq!(url("nats://[::1]").map(|u| u.port), Ok(4222));
        for (bad, why) in [
            ("127.0.0.1:4222", "is not a URL"),
            ("http://h:1", "unsupported scheme `http`"),
            ("nats://user:pw@h:1", "credentials"),
            ("nats://h:1/x", "path or query"),
            ("nats://h:1?x=1", "path or query"),
            ("nats://h:0", "invalid port `0`"),
            ("nats://h:99999", "invalid port"),
            ("nats://:4222", "no valid host"),
            ("nats://h st:1", "no valid host"),
            ("nats://[::1:1", "unclosed"),
        ] {
            let e = url(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_values_are_named_by_their_key() {
        let entry = |extra: &str| {
            format!(
                "triggers: {{nats: [{{url: 'nats://h', stream: S, subject: a, durable: d{extra}}}]}}"
            )
        };
        for (extra, key, why) in [
            (
                ", concurrency: 0",
                "concurrency",
                "must be between 1 and 64, got 0",
            ),
            (
                ", concurrency: 65",
                "concurrency",
                "must be between 1 and 64, got 65",
            ),
            (
                ", retries: 21",
                "retries",
                "must be between 0 and 20, got 21",
            ),
            (
                ", backoff_ms: 0",
                "backoff_ms",
                "must be between 1 and 3600000",
            ),
            (
                ", max_backoff_ms: 3600001",
                "max_backoff_ms",
                "must be between",
            ),
            (
                ", dead_letter: 'a.*'",
                "dead_letter",
                "`a.*` may not hold a wildcard",
            ),
            (
                ", dead_letter: 'a..b'",
                "dead_letter",
                "`a..b` is not a NATS subject",
            ),
            (", group: g", "group", "unknown field `group`"),
        ] {
            let expected = if key.is_empty() {
                format!("ol.yaml: triggers.nats[0]: {why}")
            } else {
                format!("ol.yaml: triggers.nats[0].{key}: {why}")
            };
            assert_err(&entry(extra), &expected);
        }
        assert_err(
            "triggers: {nats: [{url: 'nats://h', stream: 'a.b', subject: a, durable: d}]}",
            "ol.yaml: triggers.nats[0].stream: `a.b` is not a stream or consumer name",
        );
        assert_err(
            "triggers: {nats: [{url: 'nats://h', stream: S, subject: a, durable: ''}]}",
            "ol.yaml: triggers.nats[0].durable: `` is not a stream or consumer name",
        );
        assert_err(
            "triggers: {nats: [{url: 'nats://h', stream: S, subject: a}]}",
            "ol.yaml: triggers.nats[0]: missing field `durable`",
        );
        assert_err(
            "triggers: {nats: [{url: 'ftp://h', stream: S, subject: a, durable: d}]}",
            "ol.yaml: triggers.nats[0].url: unsupported scheme `ftp`",
        );
    }

    #[test]
    fn subjects_follow_nats_token_rules() {
        let subject = |s: &str| {
            ok(&format!(
                "triggers: {{nats: [{{url: 'nats://h', stream: S, subject: '{s}', durable: d}}]}}"
            ))
            .triggers
            .nats[0]
                .subject
                .clone()
        };
        assert!(!subject("a.b.c").has_wildcard());
        assert!(subject("a.*.c").has_wildcard());
        assert!(subject(">").has_wildcard());
        for bad in ["", "a.", ".a", "a b", "a.>.c", "a*", "a.b>", "é"] {
            assert_err(
                &format!(
                    "triggers: {{nats: [{{url: 'nats://h', stream: S, subject: '{bad}', durable: d}}]}}"
                ),
                "triggers.nats[0].subject: ",
            );
        }
    }

    #[test]
    fn two_entries_may_not_share_a_durable_consumer() {
        assert_err(
            "triggers: {nats: [{url: 'nats://h', stream: S, subject: a, durable: d}, \
             {url: 'nats://h', stream: S, subject: b, durable: d}]}",
            "ol.yaml: triggers.nats[1].durable: consumer `d` of stream `S` on nats://h:4222 is already used by triggers.nats[0]",
        );
        // The same name on another stream is another consumer.
        ok(
            "triggers: {nats: [{url: 'nats://h', stream: S, subject: a, durable: d}, \
            {url: 'nats://h', stream: T, subject: b, durable: d}]}",
        );
    }
}
