//! The balancing policies (`--policy`) and what each asks of the engine:
//! HAProxy's `balance` and hashing directives for the workers' backend.
//!
//! - `round-robin`: each call to the next worker.
//! - `least-loaded`: the worker with the fewest calls in flight
//!   (HAProxy's `leastconn` counts the streams a server is serving, so
//!   with pooled keep-alive connections it is outstanding requests).
//! - `name`: consistent hashing of `/run/NAME` (the first two path
//!   segments, so `/run/NAME/any/path` and `?query` hash alike) with
//!   bounded load: a worker never takes more than `(1 + epsilon)` times
//!   the average of the calls in flight; past that, the next worker on
//!   the ring takes the call.
//! - `content`: the same hashing over a key taken from the request: a
//!   header, a query parameter, or a top-level field of a JSON body (the
//!   body is buffered for it). A request without the key goes
//!   round-robin.

use std::fmt;
use std::str::FromStr;

use crate::LbError;

/// The default `epsilon` of the hashing policies: a worker may carry
/// 25% more than the average load before calls spill over.
pub const DEFAULT_EPSILON: f64 = 0.25;
/// The largest `epsilon` accepted (a worker may carry 11× the average).
pub const MAX_EPSILON: f64 = 10.0;

/// Which policy, as `--policy` names it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// Each call to the next worker in turn.
    RoundRobin,
    /// The worker with the fewest calls in flight.
    LeastLoaded,
    /// Consistent hashing on the lambda name, with bounded load.
    Name,
    /// Consistent hashing on a key of the request (`--key`), with bounded
    /// load.
    Content,
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyKind::RoundRobin => "round-robin",
            PolicyKind::LeastLoaded => "least-loaded",
            PolicyKind::Name => "name",
            PolicyKind::Content => "content",
        })
    }
}

/// Where the `content` policy takes its hash key from (`--key`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "from", content = "name")]
pub enum ContentKey {
    /// `header:NAME`: a request header.
    Header(String),
    /// `query:NAME`: a query-string parameter.
    Query(String),
    /// `json:FIELD`: a top-level field of a JSON request body.
    Json(String),
}

impl FromStr for ContentKey {
    type Err = LbError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || {
            LbError::Usage(format!(
                "--key {s:?}: say where the key is, as header:NAME, query:NAME or json:FIELD \
                 (NAME and FIELD: letters, digits, '-' and '_')"
            ))
        };
        let (from, name) = s.split_once(':').ok_or_else(usage)?;
        // The name lands in the engine's config: only characters that
        // cannot end a word or a quoted string there.
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(usage());
        }
        match from {
            "header" => Ok(ContentKey::Header(name.to_string())),
            "query" => Ok(ContentKey::Query(name.to_string())),
            "json" => Ok(ContentKey::Json(name.to_string())),
            _ => Err(usage()),
        }
    }
}

impl fmt::Display for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContentKey::Header(n) => write!(f, "header:{n}"),
            ContentKey::Query(n) => write!(f, "query:{n}"),
            ContentKey::Json(n) => write!(f, "json:{n}"),
        }
    }
}

/// A policy with its settings, checked.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    /// Which one.
    pub kind: PolicyKind,
    /// How far above the average load a worker may go before its calls
    /// spill over (`name` and `content`).
    pub epsilon: f64,
    /// The `content` policy's key.
    pub key: Option<ContentKey>,
}

impl Policy {
    /// Checks that `kind`, `epsilon` and `key` go together: `content`
    /// needs a key and nothing else takes one; `epsilon` is in
    /// `0..=MAX_EPSILON`.
    pub fn new(kind: PolicyKind, epsilon: f64, key: Option<ContentKey>) -> Result<Self, LbError> {
        if !(0.0..=MAX_EPSILON).contains(&epsilon) {
            return Err(LbError::Usage(format!(
                "--epsilon {epsilon}: must be between 0 (never above the average load) and {MAX_EPSILON}"
            )));
        }
        match (kind, &key) {
            (PolicyKind::Content, None) => Err(LbError::Usage(
                "--policy content needs --key header:NAME, query:NAME or json:FIELD".into(),
            )),
            (PolicyKind::Content, Some(_)) => Ok(Self { kind, epsilon, key }),
            (_, Some(k)) => Err(LbError::Usage(format!(
                "--key {k} is for --policy content, not {kind}"
            ))),
            (_, None) => Ok(Self { kind, epsilon, key }),
        }
    }

    /// HAProxy's `hash-balance-factor`: the percentage of the average load
    /// a server may carry, `100 * (1 + epsilon)`.
    pub fn balance_factor(&self) -> u32 {
        // In 0..=1100 by the check in `new`: the cast cannot truncate.
        (100.0 * (1.0 + self.epsilon)).round() as u32
    }

    /// The backend directives that make HAProxy balance this way.
    pub fn haproxy_directives(&self) -> Vec<String> {
        let hashed = |balance: String| {
            vec![
                balance,
                "hash-type consistent".to_string(),
                format!("hash-balance-factor {}", self.balance_factor()),
            ]
        };
        match (self.kind, &self.key) {
            (PolicyKind::RoundRobin, _) => vec!["balance roundrobin".into()],
            (PolicyKind::LeastLoaded, _) => vec!["balance leastconn".into()],
            (PolicyKind::Name, _) => hashed("balance uri path-only depth 2".into()),
            (PolicyKind::Content, Some(ContentKey::Header(h))) => {
                hashed(format!("balance hdr({h})"))
            }
            (PolicyKind::Content, Some(ContentKey::Query(q))) => {
                hashed(format!("balance url_param {q}"))
            }
            (PolicyKind::Content, Some(ContentKey::Json(field))) => {
                let mut lines = vec!["option http-buffer-request".to_string()];
                lines.extend(hashed(format!(
                    "balance hash req.body,json_query('$.{field}')"
                )));
                lines
            }
            // `new` refuses content without a key; hash nothing, i.e.
            // round-robin, rather than fail here.
            (PolicyKind::Content, None) => vec!["balance roundrobin".into()],
        }
    }
}

impl Policy {
    /// The directives of the gRPC backend (calls to `ol.v1.Lambda/Invoke`,
    /// docs/lb.md "gRPC"): the same balancing, keyed on what the engine
    /// can read of a gRPC call: the lambda's name is the `ol-lambda`
    /// metadata header (the path is the method's, the message protobuf).
    /// A `content` key in a header is read from the call's metadata; a
    /// query or JSON key does not exist in a gRPC call, so those calls
    /// hash on the lambda's name.
    pub fn haproxy_grpc_directives(&self) -> Vec<String> {
        let hashed = |header: &str| {
            vec![
                format!("balance hdr({header})"),
                "hash-type consistent".to_string(),
                format!("hash-balance-factor {}", self.balance_factor()),
            ]
        };
        match (self.kind, &self.key) {
            (PolicyKind::RoundRobin | PolicyKind::LeastLoaded, _) => self.haproxy_directives(),
            (PolicyKind::Content, Some(ContentKey::Header(h))) => hashed(h),
            (PolicyKind::Name | PolicyKind::Content, _) => hashed(LAMBDA_METADATA),
        }
    }
}

/// The gRPC metadata key naming a call's lambda
/// (crates/worker/proto/ol/v1/lambda.proto).
pub const LAMBDA_METADATA: &str = ol_worker::grpc::proto::LAMBDA_METADATA;

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.kind, &self.key) {
            (PolicyKind::Name, _) => write!(f, "name (epsilon {})", self.epsilon),
            (PolicyKind::Content, Some(k)) => {
                write!(f, "content on {k} (epsilon {})", self.epsilon)
            }
            (kind, _) => write!(f, "{kind}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_refuse_what_could_break_the_config() {
        assert_eq!(
            "json:user".parse::<ContentKey>().ok(),
            Some(ContentKey::Json("user".into()))
        );
        assert_eq!(
            "header:X-Session".parse::<ContentKey>().ok(),
            Some(ContentKey::Header("X-Session".into()))
        );
        assert_eq!(
            "query:db_id".parse::<ContentKey>().ok(),
            Some(ContentKey::Query("db_id".into()))
        );
        for bad in [
            "user",
            "json:",
            "body:user",
            "json:a.b",
            "header:X Y",
            "json:a')\nbalance roundrobin",
            "query:a,b",
        ] {
            assert!(bad.parse::<ContentKey>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn content_needs_a_key_and_only_content_takes_one() {
        assert!(Policy::new(PolicyKind::Content, 0.25, None).is_err());
        let key = Some(ContentKey::Json("user".into()));
        assert!(Policy::new(PolicyKind::Name, 0.25, key.clone()).is_err());
        assert!(Policy::new(PolicyKind::Content, 0.25, key).is_ok());
        assert!(Policy::new(PolicyKind::Name, -0.1, None).is_err());
        assert!(Policy::new(PolicyKind::Name, 10.5, None).is_err());
        assert!(Policy::new(PolicyKind::Name, f64::NAN, None).is_err());
    }

    #[test]
    fn epsilon_is_the_balance_factor_above_100() -> Result<(), LbError> {
        let factor = |e| Policy::new(PolicyKind::Name, e, None).map(|p| p.balance_factor());
        assert_eq!(factor(DEFAULT_EPSILON)?, 125);
        assert_eq!(factor(0.0)?, 100);
        assert_eq!(factor(0.5)?, 150);
        assert_eq!(factor(MAX_EPSILON)?, 1100);
        Ok(())
    }

    #[test]
    fn each_policy_names_its_balance_algorithm() -> Result<(), LbError> {
        let d = |kind, key| Policy::new(kind, 0.25, key).map(|p| p.haproxy_directives());
        assert_eq!(d(PolicyKind::RoundRobin, None)?, ["balance roundrobin"]);
        assert_eq!(d(PolicyKind::LeastLoaded, None)?, ["balance leastconn"]);
        assert_eq!(
            d(PolicyKind::Name, None)?,
            [
                "balance uri path-only depth 2",
                "hash-type consistent",
                "hash-balance-factor 125"
            ]
        );
        assert_eq!(
            d(PolicyKind::Content, Some(ContentKey::Header("X-Id".into())))?[0],
            "balance hdr(X-Id)"
        );
        assert_eq!(
            d(PolicyKind::Content, Some(ContentKey::Query("id".into())))?[0],
            "balance url_param id"
        );
        let json = d(PolicyKind::Content, Some(ContentKey::Json("user".into())))?;
        assert_eq!(json[0], "option http-buffer-request");
        assert_eq!(json[1], "balance hash req.body,json_query('$.user')");
        assert_eq!(json[3], "hash-balance-factor 125");
        Ok(())
    }

    #[test]
    fn grpc_calls_hash_on_the_lambda_metadata_or_a_header_key() -> Result<(), LbError> {
        let d = |kind, key| Policy::new(kind, 0.5, key).map(|p| p.haproxy_grpc_directives());
        assert_eq!(d(PolicyKind::RoundRobin, None)?, ["balance roundrobin"]);
        assert_eq!(d(PolicyKind::LeastLoaded, None)?, ["balance leastconn"]);
        assert_eq!(
            d(PolicyKind::Name, None)?,
            [
                "balance hdr(ol-lambda)",
                "hash-type consistent",
                "hash-balance-factor 150"
            ]
        );
        assert_eq!(
            d(PolicyKind::Content, Some(ContentKey::Header("X-Id".into())))?[0],
            "balance hdr(X-Id)"
        );
        for key in [
            ContentKey::Json("user".into()),
            ContentKey::Query("id".into()),
        ] {
            assert_eq!(
                d(PolicyKind::Content, Some(key))?[0],
                "balance hdr(ol-lambda)"
            );
        }
        Ok(())
    }
}
