//! What the worker reports about itself: `GET /metrics` (Prometheus text,
//! via `prometheus-client`) and the latency and error parts of `GET
//! /stats` (OpenLambda's `<phase>.cnt` / `<phase>.ms-avg` keys and ours).
//! Per-request series are labelled by lambda and status; the lambda label
//! is bounded ([`LambdaLabels`]) so a worker with many lambdas (or many
//! calls of names that do not exist) cannot grow `/metrics` without end.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use ol_lambda::LambdaManager;
use ol_obs::{HistogramSnapshot, LatencyHistogram, Phase, counters};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder,
    NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::stats::{PhaseLatency, RecordedStats};

/// Lambdas that get their own `lambda` label; later ones share
/// [`OTHER_LAMBDAS`].
pub const MAX_LAMBDA_LABELS: usize = 100;
/// The `lambda` label of every lambda past the first [`MAX_LAMBDA_LABELS`]
/// and of calls that named no existing lambda.
pub const OTHER_LAMBDAS: &str = "other";

/// Gives each lambda its `lambda` label value: its name for the first
/// `max` lambdas seen, [`OTHER_LAMBDAS`] after that.
#[derive(Debug)]
pub struct LambdaLabels {
    max: usize,
    known: RwLock<HashMap<String, Arc<str>>>,
    other: Arc<str>,
}

impl LambdaLabels {
    /// Labels for at most `max` distinct lambdas.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            known: RwLock::new(HashMap::new()),
            other: Arc::from(OTHER_LAMBDAS),
        }
    }

    /// The label of lambda `name`. Only a lambda that exists (`admit`) may
    /// take a free label, so calls of made-up names never use them up.
    pub fn label(&self, name: &str, admit: bool) -> Arc<str> {
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(label) = known.get(name) {
            return Arc::clone(label);
        }
        let full = known.len() >= self.max;
        drop(known);
        if !admit || full {
            return Arc::clone(&self.other);
        }
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        if known.len() >= self.max {
            return Arc::clone(&self.other);
        }
        let label = known
            .entry(name.to_string())
            .or_insert_with(|| Arc::from(name));
        Arc::clone(label)
    }

    /// Lambdas with a label of their own.
    pub fn len(&self) -> usize {
        self.known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no lambda has a label yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Labels of the per-request series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RequestLabels {
    lambda: Arc<str>,
    status: u16,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        ("lambda", &*self.lambda).encode(encoder.encode_label())?;
        ("status", self.status).encode(encoder.encode_label())
    }
}

/// Prometheus histogram bounds: `2^k` µs for these `k` (32 µs to 16.8 s),
/// exact bucket bounds of [`LatencyHistogram`].
const BOUND_EXPONENTS: std::ops::RangeInclusive<u32> = 5..=24;

/// Writes `s` as a Prometheus histogram in seconds.
fn encode_seconds(s: &HistogramSnapshot, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
    let mut buckets = Vec::with_capacity(BOUND_EXPONENTS.count() + 1);
    let mut below = 0;
    for k in BOUND_EXPONENTS {
        let now = s.count_below_pow2(k);
        buckets.push(((1u64 << k) as f64 / 1e6, now - below));
        below = now;
    }
    buckets.push((f64::MAX, s.count.saturating_sub(below)));
    encoder.encode_histogram::<NoLabelSet>(s.sum_us as f64 / 1e6, s.count, &buckets, None)
}

/// A [`LatencyHistogram`] as a Prometheus metric.
#[derive(Debug, Default)]
struct SecondsHistogram(LatencyHistogram);

impl TypedMetric for SecondsHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for SecondsHistogram {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), fmt::Error> {
        encode_seconds(&self.0.snapshot(), encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Calls answered with each HTTP status (100–599), for `/stats`.
#[derive(Debug)]
struct StatusCounts([AtomicU64; 500]);

impl StatusCounts {
    fn new() -> Self {
        Self([const { AtomicU64::new(0) }; 500])
    }

    fn inc(&self, status: u16) {
        if let Some(n) = status
            .checked_sub(100)
            .and_then(|i| self.0.get(usize::from(i)))
        {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Count by status (as text, the way `/stats` keys it) for statuses
    /// from `from` on that occurred.
    fn counts_from(&self, from: u16) -> BTreeMap<String, u64> {
        self.0
            .iter()
            .enumerate()
            .skip(usize::from(from.saturating_sub(100)))
            .filter_map(|(i, n)| {
                let n = n.load(Ordering::Relaxed);
                (n > 0).then(|| ((i + 100).to_string(), n))
            })
            .collect()
    }
}

/// The worker's metrics registry and the series the HTTP layer records.
pub struct WorkerMetrics {
    registry: Registry,
    labels: LambdaLabels,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, SecondsHistogram>,
    statuses: StatusCounts,
}

impl fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerMetrics")
            .field("lambda_labels", &self.labels.len())
            .finish_non_exhaustive()
    }
}

impl WorkerMetrics {
    /// Metrics of a worker whose lambda layer is `lambdas` and whose queue
    /// triggers are `triggers`.
    pub fn new(lambdas: Arc<LambdaManager>, triggers: Arc<Triggers>) -> Self {
        Self::with_label_bound(lambdas, triggers, MAX_LAMBDA_LABELS)
    }

    fn with_label_bound(
        lambdas: Arc<LambdaManager>,
        triggers: Arc<Triggers>,
        max_labels: usize,
    ) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RequestLabels, SecondsHistogram>::default();
        registry.register(
            "ol_requests",
            "Calls of lambdas (/run, /runLambda) by lambda and HTTP status",
            requests.clone(),
        );
        registry.register(
            "ol_request_duration_seconds",
            "Time from a call's arrival to its response, by lambda and HTTP status",
            latency.clone(),
        );
        registry.register_collector(Box::new(PhaseCollector));
        registry.register_collector(Box::new(StateCollector { lambdas }));
        registry.register_collector(Box::new(CounterCollector));
        registry.register_collector(Box::new(TriggerCollector { triggers }));
        Self {
            registry,
            labels: LambdaLabels::new(max_labels),
            requests,
            latency,
            statuses: StatusCounts::new(),
        }
    }

    /// Records one call of `lambda` answered with `status` after `took`.
    /// `by_lambda`: the lambda itself answered with `status` (a WSGI app's
    /// 404), which is no error of the worker's and stays out of
    /// [`Self::errors_by_status`].
    pub fn record_request(&self, lambda: &str, status: u16, took: Duration, by_lambda: bool) {
        // 404 (no such lambda) and 400 (not a lambda name) must not take
        // one of the bounded labels.
        let exists = !matches!(status, 400 | 404);
        let labels = RequestLabels {
            lambda: self.labels.label(lambda, exists),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).0.record(took);
        if !by_lambda {
            self.statuses.inc(status);
        }
    }

    /// The Prometheus (OpenMetrics) text of every metric.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Calls answered with each error status (400 and up) so far.
    pub fn errors_by_status(&self) -> BTreeMap<String, u64> {
        self.statuses.counts_from(400)
    }
}

/// The `/stats` keys named at run time, read from the process-wide phase
/// histograms and named counters now.
pub fn recorded_stats() -> RecordedStats {
    // Milliseconds to the microsecond.
    let ms = |us: f64| us.round() / 1e3;
    let phases = Phase::ALL
        .iter()
        .map(|phase| {
            let s = phase.histogram().snapshot();
            let latency = PhaseLatency {
                count: s.count,
                mean_ms: ms(s.mean_us()),
                p50_ms: ms(s.quantile_us(0.5)),
                p99_ms: ms(s.quantile_us(0.99)),
                max_ms: ms(s.max_us as f64),
            };
            (phase.name().to_string(), latency)
        })
        .collect();
    let counters = counters::ALL
        .iter()
        .map(|c| (c.name().to_string(), c.get()))
        .collect();
    RecordedStats { phases, counters }
}

/// `ol_phase_duration_seconds{phase}` from the process-wide phase
/// histograms.
#[derive(Debug)]
struct PhaseCollector;

impl Collector for PhaseCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "ol_phase_duration_seconds",
            "Time spent in each phase of serving calls (see docs/observability.md)",
            None,
            MetricType::Histogram,
        )?;
        for phase in Phase::ALL {
            let labels = [("phase", phase.name())];
            encode_seconds(
                &phase.histogram().snapshot(),
                family.encode_family(&labels)?,
            )?;
        }
        Ok(())
    }
}

/// Named counters as `ol_<name>_total`.
#[derive(Debug)]
struct CounterCollector;

impl Collector for CounterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for c in counters::ALL {
            let name = format!("ol_{}", c.name());
            let value = ConstCounter::new(c.get());
            value.encode(encoder.encode_descriptor(
                &name,
                c.help(),
                None,
                value.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Gauges and counters read from the lambda layer at scrape time.
struct StateCollector {
    lambdas: Arc<LambdaManager>,
}

impl fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateCollector")
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s = self.lambdas.stats();
        let mut sandboxes = encoder.encode_descriptor(
            "ol_sandboxes",
            "Live sandboxes by state",
            None,
            MetricType::Gauge,
        )?;
        let by_state = s.sandboxes_by_state;
        for (state, n) in [
            ("busy", by_state.busy),
            ("idle", by_state.idle),
            ("paused", by_state.paused),
        ] {
            ConstGauge::new(n as i64).encode(sandboxes.encode_family(&[("state", state)])?)?;
        }
        let gauges = [
            (
                "ol_lambdas",
                "Lambdas called so far and still known",
                s.lambda_count as u64,
            ),
            (
                "ol_mem_pool_used_bytes",
                "Memory reserved by sandboxes from the pool (mem_pool_mb)",
                s.mem_pool_used_mb << 20,
            ),
            (
                "ol_mem_pool_size_bytes",
                "Size of the memory pool (mem_pool_mb)",
                s.mem_pool_total_mb << 20,
            ),
        ];
        for (name, help, v) in gauges {
            let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let totals = [
            (
                "ol_sandboxes_created",
                "Sandboxes created",
                s.sandboxes_created,
            ),
            (
                "ol_sandboxes_destroyed",
                "Sandboxes destroyed",
                s.sandboxes_destroyed,
            ),
            ("ol_pauses", "Idle sandboxes paused", s.pauses),
            (
                "ol_evictions",
                "Idle sandboxes destroyed to free memory",
                s.evictions,
            ),
        ];
        for (name, help, v) in totals {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}

/// The worker's queue triggers.
pub type Triggers = ol_triggers::TriggerManager<LambdaManager>;

/// Each queue trigger's numbers, read at scrape time, labelled by lambda
/// and trigger entry (`nats[0]`); bounded by the triggers ol.yaml files
/// declare, not by traffic.
struct TriggerCollector {
    triggers: Arc<Triggers>,
}

impl fmt::Debug for TriggerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TriggerCollector")
    }
}

impl Collector for TriggerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = self.triggers.stats();
        type Field = fn(&ol_triggers::TriggerStats) -> u64;
        let counters: [(&str, &str, Field); 4] = [
            (
                "ol_trigger_delivered",
                "Queue messages whose call succeeded and that were acknowledged",
                |s| s.delivered,
            ),
            (
                "ol_trigger_failed",
                "Failed calls of queue messages, each attempt counted",
                |s| s.failed,
            ),
            (
                "ol_trigger_retried",
                "Calls of queue messages after a failed one",
                |s| s.retried,
            ),
            (
                "ol_trigger_dead_lettered",
                "Queue messages stored on their trigger's dead-letter target",
                |s| s.dead_lettered,
            ),
        ];
        for (name, help, field) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for s in &stats {
                let labels = [
                    ("lambda", s.lambda.as_str()),
                    ("trigger", s.trigger.as_str()),
                ];
                ConstCounter::new(field(s)).encode(family.encode_family(&labels)?)?;
            }
        }
        let gauges: [(&str, &str, Field); 3] = [
            (
                "ol_trigger_lag",
                "Queue messages not yet settled at the broker (pending and unacknowledged)",
                |s| s.lag.unwrap_or(0),
            ),
            (
                "ol_trigger_in_flight",
                "Calls of queue messages running now",
                |s| s.in_flight,
            ),
            (
                "ol_trigger_up",
                "1 when the trigger's consumer is running, 0 when it is not (see /stats last_error)",
                |s| u64::from(s.state == "running"),
            ),
        ];
        for (name, help, field) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for s in &stats {
                let labels = [
                    ("lambda", s.lambda.as_str()),
                    ("trigger", s.trigger.as_str()),
                ];
                let v = i64::try_from(field(s)).unwrap_or(i64::MAX);
                ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metrics of a worker that never runs anything.
    fn idle_metrics(dir: &std::path::Path, max_labels: usize) -> WorkerMetrics {
        let lambdas = crate::state::idle_lambda_layer(dir);
        let triggers = ol_triggers::TriggerManager::new(
            Arc::clone(&lambdas),
            Arc::new(ol_registry::DirRegistry::new(dir.join("registry"))),
            ol_triggers::TriggerSettings::default(),
        );
        WorkerMetrics::with_label_bound(lambdas, triggers, max_labels)
    }

    fn scrape(m: &WorkerMetrics) -> prometheus_parse::Scrape {
        let text = m.encode().expect("encode");
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("parse /metrics")
    }

    fn value(v: &prometheus_parse::Value) -> f64 {
        match v {
            prometheus_parse::Value::Counter(x)
            | prometheus_parse::Value::Gauge(x)
            | prometheus_parse::Value::Untyped(x) => *x,
            other => panic!("not a scalar: {other:?}"),
        }
    }

    /// `metric{labels} value` for one metric, labels as `k=v` sorted.
    fn series(s: &prometheus_parse::Scrape, metric: &str) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = s
            .samples
            .iter()
            .filter(|x| x.metric == metric)
            .map(|x| {
                let mut labels: Vec<String> =
                    x.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                labels.sort();
                (labels.join(","), value(&x.value))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn the_first_lambdas_get_labels_the_rest_share_other() {
        let labels = LambdaLabels::new(2);
        assert_eq!(&*labels.label("a", true), "a");
        assert_eq!(&*labels.label("ghost", false), OTHER_LAMBDAS);
        assert_eq!(&*labels.label("b", true), "b");
        assert_eq!(&*labels.label("c", true), OTHER_LAMBDAS);
        // Known lambdas keep their label, also on error statuses.
        assert_eq!(&*labels.label("a", false), "a");
        assert_eq!(labels.len(), 2);
    }

    #[test]
    fn the_label_bound_holds_under_concurrent_first_calls() {
        let labels = Arc::new(LambdaLabels::new(MAX_LAMBDA_LABELS));
        std::thread::scope(|scope| {
            for t in 0..4 {
                let labels = Arc::clone(&labels);
                scope.spawn(move || {
                    for i in 0..100 {
                        labels.label(&format!("l{t}-{i}"), true);
                    }
                });
            }
        });
        assert_eq!(labels.len(), MAX_LAMBDA_LABELS);
    }

    #[test]
    fn requests_are_counted_per_bounded_lambda_label_and_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = idle_metrics(dir.path(), 3);
        for l in ["l0", "l1", "l2", "l3", "l4"] {
            m.record_request(l, 200, Duration::from_micros(300), true);
        }
        m.record_request("l0", 200, Duration::from_millis(3), true);
        m.record_request("l1", 500, Duration::from_millis(1), false);
        m.record_request("nope", 404, Duration::from_micros(50), false);
        // The lambda's own 418 is no worker error.
        m.record_request("l1", 418, Duration::from_millis(1), true);
        let s = scrape(&m);
        assert_eq!(
            series(&s, "ol_requests_total"),
            [
                ("lambda=l0,status=200".to_string(), 2.0),
                ("lambda=l1,status=200".to_string(), 1.0),
                // Counted per lambda and status, though not as an error.
                ("lambda=l1,status=418".to_string(), 1.0),
                ("lambda=l1,status=500".to_string(), 1.0),
                ("lambda=l2,status=200".to_string(), 1.0),
                ("lambda=other,status=200".to_string(), 2.0),
                ("lambda=other,status=404".to_string(), 1.0),
            ]
        );
        let lambdas: std::collections::BTreeSet<String> = s
            .samples
            .iter()
            .filter_map(|x| x.labels.get("lambda").map(str::to_string))
            .collect();
        assert_eq!(lambdas.len(), 4, "{lambdas:?}"); // l0 l1 l2 other
        assert_eq!(
            series(&s, "ol_request_duration_seconds_count"),
            series(&s, "ol_requests_total")
        );
        let l0 = s
            .samples
            .iter()
            .find(|x| {
                x.metric == "ol_request_duration_seconds" && x.labels.get("lambda") == Some("l0")
            })
            .expect("l0 histogram");
        let prometheus_parse::Value::Histogram(buckets) = &l0.value else {
            panic!("not a histogram: {:?}", l0.value);
        };
        // 300 µs falls below 512 µs; 3 ms below 4.096 ms.
        let at = |le: f64| {
            buckets
                .iter()
                .find(|b| b.less_than == le || (b.less_than - le).abs() < 1e-12)
                .map(|b| b.count)
        };
        assert_eq!(at(0.000256), Some(0.0));
        assert_eq!(at(0.000512), Some(1.0));
        assert_eq!(at(0.004096), Some(2.0));
        assert_eq!(at(f64::INFINITY), Some(2.0));
        assert_eq!(
            m.errors_by_status(),
            BTreeMap::from([("404".to_string(), 1), ("500".to_string(), 1)])
        );
    }

    #[test]
    fn state_phases_and_counters_are_exported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = scrape(&idle_metrics(dir.path(), 3));
        assert_eq!(
            series(&s, "ol_sandboxes"),
            [
                ("state=busy".to_string(), 0.0),
                ("state=idle".to_string(), 0.0),
                ("state=paused".to_string(), 0.0),
            ]
        );
        assert_eq!(series(&s, "ol_evictions_total"), [(String::new(), 0.0)]);
        assert_eq!(series(&s, "ol_lambdas"), [(String::new(), 0.0)]);
        assert_eq!(series(&s, "ol_mem_pool_used_bytes"), [(String::new(), 0.0)]);
        assert_eq!(
            series(&s, "ol_mem_pool_size_bytes"),
            [(String::new(), (4096u64 << 20) as f64)]
        );
        let phases: Vec<String> = series(&s, "ol_phase_duration_seconds_count")
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        assert_eq!(phases.len(), Phase::ALL.len());
        for p in Phase::ALL {
            assert!(phases.contains(&format!("phase={}", p.name())), "{p:?}");
        }
        for c in counters::ALL {
            assert_eq!(
                series(&s, &format!("ol_{}_total", c.name())).len(),
                1,
                "{}",
                c.name()
            );
        }
    }
}
