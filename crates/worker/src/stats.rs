//! The schema of `GET /stats`, one type for every side of it: the worker
//! builds a [`WorkerStats`] and serializes it, `/metrics` reads its lambda
//! layer's numbers from the same `ol_lambda::Stats` it flattens, and `ol
//! worker status` and the benchmarks deserialize it. docs/observability.md lists
//! every key.
//!
//! The JSON is one flat object: OpenLambda's own keys sit beside ours, and
//! the per-phase keys (`<phase>.cnt`, `<phase>.ms-avg`, ...) and the named
//! counters take their names from `ol-obs` at run time ([`RecordedStats`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Everything `GET /stats` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Requests to `/run` and `/runLambda`.
    pub invocations: u64,
    /// Invocations answered with a 4xx status.
    pub errors_4xx: u64,
    /// Invocations answered with a 5xx status.
    pub errors_5xx: u64,
    /// Invocations by status, for every status ≥ 400 seen (`"404"`, ...).
    pub errors_by_status: BTreeMap<String, u64>,
    /// Lambdas, sandboxes and the memory pool (the lambda layer's own
    /// snapshot).
    #[serde(flatten)]
    pub lambda_layer: ol_lambda::Stats,
    /// Each queue trigger's consumer: state, lag, delivered, failed,
    /// dead letters (absent from workers older than this key).
    #[serde(default)]
    pub triggers: Vec<ol_triggers::TriggerStats>,
    /// Where code comes from and whether it answers (absent from workers
    /// older than this key).
    #[serde(default)]
    pub registry: Option<RegistryStats>,
    /// Phase latencies and named counters.
    #[serde(flatten)]
    pub recorded: RecordedStats,
}

/// The registry's part of `/stats` (`registry: {kind, location, ok,
/// last_error, last_ok_ms_ago, last_error_ms_ago}`): whether the code
/// source answers; when it does not, lambdas keep the code they have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryStats {
    /// `dir`, `http` or `s3`.
    pub kind: String,
    /// A path or URL (never a key).
    pub location: String,
    /// Whether its last request succeeded (true before any).
    pub ok: bool,
    /// The last failure, even after a later success.
    pub last_error: Option<String>,
    /// Milliseconds since a request last succeeded.
    pub last_ok_ms_ago: Option<u64>,
    /// Milliseconds since a request last failed.
    pub last_error_ms_ago: Option<u64>,
}

impl From<ol_registry::Health> for RegistryStats {
    fn from(h: ol_registry::Health) -> Self {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            kind: h.kind.to_string(),
            location: h.location,
            ok: h.ok,
            last_error: h.last_error,
            last_ok_ms_ago: h.since_ok.map(ms),
            last_error_ms_ago: h.since_error.map(ms),
        }
    }
}

/// One phase's latency (OpenLambda's `<phase>.cnt` and `<phase>.ms-avg`,
/// and our percentiles), in ms to the µs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseLatency {
    /// Times the phase ran (`<phase>.cnt`).
    pub count: u64,
    /// Mean (`<phase>.ms-avg`).
    pub mean_ms: f64,
    /// Median (`<phase>.ms-p50`).
    pub p50_ms: f64,
    /// 99th percentile (`<phase>.ms-p99`).
    pub p99_ms: f64,
    /// Maximum (`<phase>.ms-max`).
    pub max_ms: f64,
}

/// The keys of `/stats` named at run time: five per phase (`call.cnt`,
/// `call.ms-avg`, `call.ms-p50`, `call.ms-p99`, `call.ms-max`) and one per
/// named counter (`zygote_hits`, ...).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordedStats {
    /// Latency by phase name (`web-request`, `call`, ...).
    pub phases: BTreeMap<String, PhaseLatency>,
    /// Named counters by name.
    pub counters: BTreeMap<String, u64>,
}

/// The key suffix of each [`PhaseLatency`] field.
const COUNT: &str = "cnt";
const MEAN: &str = "ms-avg";
const P50: &str = "ms-p50";
const P99: &str = "ms-p99";
const MAX: &str = "ms-max";

impl Serialize for RecordedStats {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (name, p) in &self.phases {
            map.serialize_entry(&format!("{name}.{COUNT}"), &p.count)?;
            for (suffix, ms) in [
                (MEAN, p.mean_ms),
                (P50, p.p50_ms),
                (P99, p.p99_ms),
                (MAX, p.max_ms),
            ] {
                map.serialize_entry(&format!("{name}.{suffix}"), &ms)?;
            }
        }
        for (name, n) in &self.counters {
            map.serialize_entry(name, n)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for RecordedStats {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RecordedVisitor)
    }
}

struct RecordedVisitor;

impl<'de> Visitor<'de> for RecordedVisitor {
    type Value = RecordedStats;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("phase keys (<phase>.cnt, <phase>.ms-avg, ...) and named counters")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RecordedStats, A::Error> {
        let mut out = RecordedStats::default();
        while let Some((key, value)) = map.next_entry::<String, serde_json::Value>()? {
            let phase_field = key
                .rsplit_once('.')
                .filter(|(_, suffix)| [COUNT, MEAN, P50, P99, MAX].contains(suffix));
            match phase_field {
                Some((name, suffix)) => {
                    let p = out.phases.entry(name.to_string()).or_default();
                    let ms = value.as_f64().unwrap_or_default();
                    match suffix {
                        COUNT => p.count = value.as_u64().unwrap_or_default(),
                        MEAN => p.mean_ms = ms,
                        P50 => p.p50_ms = ms,
                        P99 => p.p99_ms = ms,
                        _ => p.max_ms = ms,
                    }
                }
                // Whole numbers are counters; keys a later worker may add
                // with other values are not this version's to read.
                None => {
                    if let Some(n) = value.as_u64() {
                        out.counters.insert(key, n);
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ol_lambda::{LambdaStats, SandboxInfo, SandboxesByState};
    use serde_json::json;

    fn sample() -> WorkerStats {
        WorkerStats {
            invocations: 7,
            errors_4xx: 2,
            errors_5xx: 1,
            errors_by_status: BTreeMap::from([("404".into(), 2), ("500".into(), 1)]),
            lambda_layer: ol_lambda::Stats {
                lambdas: vec![LambdaStats {
                    name: "hello".into(),
                    idle: 1,
                }],
                lambda_count: 1,
                sandboxes: vec![SandboxInfo {
                    id: "sb-1".into(),
                    lambda: "hello".into(),
                    pid: 42,
                    cgroup: None,
                }],
                sandboxes_by_state: SandboxesByState {
                    busy: 0,
                    idle: 1,
                    paused: 0,
                },
                sandboxes_created: 1,
                sandboxes_destroyed: 0,
                pauses: 3,
                evictions: 0,
                mem_pool_used_mb: 128,
                mem_pool_total_mb: 4096,
                packages: None,
                forked_from: BTreeMap::from([("root".into(), 1)]),
                zygotes: Vec::new(),
            },
            triggers: vec![ol_triggers::TriggerStats {
                lambda: "orders".into(),
                trigger: "nats[0]".into(),
                broker: "nats://127.0.0.1:4222".into(),
                stream: "ORDERS".into(),
                subject: "orders.>".into(),
                consumer: "ol-orders".into(),
                state: "running".into(),
                lag: Some(12),
                in_flight: 2,
                delivered: 100,
                failed: 3,
                retried: 2,
                dead_lettered: 1,
                last_error: Some("attempt 3: ValueError: bad".into()),
            }],
            registry: Some(RegistryStats {
                kind: "s3".into(),
                location: "s3://code/ at http://127.0.0.1:9000".into(),
                ok: false,
                last_error: Some("HEAD: connection refused".into()),
                last_ok_ms_ago: Some(1500),
                last_error_ms_ago: Some(20),
            }),
            recorded: RecordedStats {
                phases: BTreeMap::from([(
                    "call".into(),
                    PhaseLatency {
                        count: 5,
                        mean_ms: 0.25,
                        p50_ms: 0.2,
                        p99_ms: 0.9,
                        max_ms: 1.5,
                    },
                )]),
                counters: BTreeMap::from([("zygote_hits".into(), 4)]),
            },
        }
    }

    #[test]
    fn stats_are_one_flat_object_with_openlambdas_keys() {
        let v = serde_json::to_value(sample()).expect("serialize");
        assert_eq!(v["call.cnt"], json!(5));
        assert_eq!(v["call.ms-avg"], json!(0.25));
        assert_eq!(v["call.ms-max"], json!(1.5));
        assert_eq!(v["zygote_hits"], json!(4));
        assert_eq!(v["lambda_count"], json!(1));
        assert_eq!(
            v["sandboxes_by_state"],
            json!({"busy": 0, "idle": 1, "paused": 0})
        );
        assert_eq!(v["errors_by_status"], json!({"404": 2, "500": 1}));
        assert_eq!(v["sandboxes"][0]["pid"], json!(42));
        assert_eq!(v["packages"], json!(null));
        assert_eq!(v["registry"]["kind"], json!("s3"));
        assert_eq!(v["registry"]["ok"], json!(false));
        assert_eq!(v["registry"]["last_ok_ms_ago"], json!(1500));
        assert_eq!(v["triggers"][0]["lag"], json!(12));
        assert_eq!(v["triggers"][0]["dead_lettered"], json!(1));
        assert!(v.get("lambda_layer").is_none() && v.get("recorded").is_none());
    }

    #[test]
    fn stats_read_back_as_they_were_written() {
        let written = serde_json::to_value(sample()).expect("serialize");
        let read: WorkerStats = serde_json::from_value(written.clone()).expect("deserialize");
        assert_eq!(read.recorded, sample().recorded);
        assert_eq!(read.registry, sample().registry);
        assert_eq!(read.triggers, sample().triggers);
        assert_eq!(read.lambda_layer.sandboxes, sample().lambda_layer.sandboxes);
        assert_eq!(serde_json::to_value(read).expect("serialize"), written);
    }

    #[test]
    fn keys_of_a_newer_worker_are_left_unread() {
        let mut v = serde_json::to_value(sample()).expect("serialize");
        v["sandboxes_by_cpu"] = json!({"0": 1});
        v["ratio"] = json!(0.5);
        let read: WorkerStats = serde_json::from_value(v).expect("deserialize");
        assert_eq!(read.recorded, sample().recorded);
    }
}
