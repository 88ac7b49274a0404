//! End-to-end tests of what a worker reports about itself: `/stats` and
//! `/metrics` count every call exactly, and a trace file of a cold start
//! holds every phase span in order, which `ol trace summarize` reads.

mod common;

use std::process::Command;

use common::{Backend, TestWorker, ol_bin, on_both_backends, stderr};
use prometheus_parse::{Scrape, Value as Sample};
use serde_json::Value;

const BOOM: &[(&str, &str)] = &[("f.py", "def f(event):\n    return 1 / 0\n")];

/// The value of `metric` with exactly `labels` (0 if absent).
fn sample(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = s
        .samples
        .iter()
        .filter(|x| {
            x.metric == metric
                && x.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
        })
        .map(|x| match &x.value {
            Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => *v,
            other => panic!("{metric} is not a scalar: {other:?}"),
        })
        .collect();
    assert!(found.len() <= 1, "{metric}{labels:?} appears twice");
    found.first().copied().unwrap_or(0.0)
}

fn count(stats: &Value, key: &str) -> u64 {
    stats[key]
        .as_u64()
        .unwrap_or_else(|| panic!("/stats has no count {key}: {stats}"))
}

on_both_backends!(stats_and_metrics_count_every_call_exactly);
fn stats_and_metrics_count_every_call_exactly(backend: Backend) {
    // No pauses and no periodic code checks: every count below is exact.
    let w = TestWorker::start(
        backend,
        &[("boom", BOOM)],
        &["pause_after_idle_ms=0", "registry_cache_ms=600000"],
    );
    let before = w.stats();
    let metrics_before = w.metrics();
    for i in 0..5 {
        let a = w.run("hello", &format!(r#"{{"name": "n{i}"}}"#));
        assert_eq!(a.status, 200, "{}", a.body);
    }
    for _ in 0..2 {
        assert_eq!(w.run("no-such-lambda", "{}").status, 404);
    }
    assert_eq!(w.run("boom", "{}").status, 500);
    let after = w.stats();
    let delta = |key: &str| count(&after, key) - count(&before, key);

    // OpenLambda's keys and ours, moved by exactly the calls made.
    assert_eq!(delta("invocations"), 8);
    assert_eq!(delta("web-request.cnt"), 8);
    // hello and boom were fetched once each, the missing name twice.
    assert_eq!(delta("pull-lambda.cnt"), 4);
    assert_eq!(delta("queue-wait.cnt"), 6);
    assert_eq!(delta("mem-reserve.cnt"), 2);
    assert_eq!(delta("create-sandbox.cnt"), 2);
    assert_eq!(delta("sandbox-ready.cnt"), 2);
    assert_eq!(delta("first-call.cnt"), 2);
    assert_eq!(delta("call.cnt"), 4);
    assert_eq!(delta("unpause.cnt"), 0);
    // Each sandbox is a sock blank assigned or a sock spawn; the process
    // backend has neither.
    let sock_starts = match backend {
        Backend::Sock => 2,
        Backend::Process => 0,
    };
    assert_eq!(
        delta("sock-assign.cnt") + delta("sock-spawn.cnt"),
        sock_starts
    );
    assert_eq!(
        delta("blank_hits") + delta("blank_misses") + delta("fresh_starts"),
        sock_starts
    );
    for key in ["web-request", "create-sandbox", "first-call", "call"] {
        let avg = after[format!("{key}.ms-avg")].as_f64().expect("ms-avg");
        let p50 = after[format!("{key}.ms-p50")].as_f64().expect("ms-p50");
        let p99 = after[format!("{key}.ms-p99")].as_f64().expect("ms-p99");
        let max = after[format!("{key}.ms-max")].as_f64().expect("ms-max");
        assert!(
            avg > 0.0 && p50 > 0.0 && p50 <= p99 && p99 <= max,
            "{key}: {after}"
        );
    }
    assert_eq!(
        after["errors_by_status"],
        serde_json::json!({"404": 2, "500": 1})
    );
    assert_eq!(after["errors_4xx"], 2);
    assert_eq!(after["errors_5xx"], 1);
    assert_eq!(after["lambda_count"], 2);
    assert_eq!(
        after["sandboxes_by_state"],
        serde_json::json!({"busy": 0, "idle": 2, "paused": 0})
    );
    assert_eq!(after["sandboxes"].as_array().map(Vec::len), Some(2));

    let m = w.metrics();
    let hello = [("lambda", "hello"), ("status", "200")];
    let missing = [("lambda", "other"), ("status", "404")];
    let boom = [("lambda", "boom"), ("status", "500")];
    for (labels, n) in [(&hello, 5.0), (&missing, 2.0), (&boom, 1.0)] {
        assert_eq!(sample(&m, "ol_requests_total", labels), n, "{labels:?}");
        assert_eq!(
            sample(&m, "ol_request_duration_seconds_count", labels),
            n,
            "{labels:?}"
        );
        assert_eq!(sample(&metrics_before, "ol_requests_total", labels), 0.0);
    }
    let requests: f64 = m
        .samples
        .iter()
        .filter(|x| x.metric == "ol_requests_total")
        .map(|x| match x.value {
            Sample::Counter(v) | Sample::Untyped(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(requests, 8.0);
    let phase_delta = |phase: &str| {
        let labels = [("phase", phase)];
        sample(&m, "ol_phase_duration_seconds_count", &labels)
            - sample(&metrics_before, "ol_phase_duration_seconds_count", &labels)
    };
    assert_eq!(phase_delta("web-request"), 8.0);
    assert_eq!(phase_delta("first-call"), 2.0);
    assert_eq!(phase_delta("call"), 4.0);
    assert_eq!(phase_delta("create-sandbox"), 2.0);
    assert_eq!(sample(&m, "ol_sandboxes", &[("state", "idle")]), 2.0);
    assert_eq!(sample(&m, "ol_sandboxes", &[("state", "busy")]), 0.0);
    assert_eq!(sample(&m, "ol_lambdas", &[]), 2.0);
    assert_eq!(sample(&m, "ol_sandboxes_created_total", &[]), 2.0);
    assert_eq!(sample(&m, "ol_evictions_total", &[]), 0.0);
    let reserved = sample(&m, "ol_mem_pool_used_bytes", &[]);
    assert_eq!(
        reserved,
        (after["mem_pool_used_mb"].as_u64().expect("mb") << 20) as f64
    );
    assert!(reserved > 0.0);
}

/// The phases of a cold start on `backend`, in the order they start.
fn cold_start(backend: Backend) -> Vec<&'static str> {
    let backend_phases: &[&str] = match backend {
        Backend::Sock => &["zygote-lookup", "sock-blank", "sock-cgroup", "sock-assign"],
        Backend::Process => &[],
    };
    let mut phases = vec![
        "web-request",
        "pull-lambda",
        "queue-wait",
        "mem-reserve",
        "create-sandbox",
    ];
    phases.extend(backend_phases);
    phases.extend(["sandbox-ready", "first-call"]);
    phases
}

on_both_backends!(trace_of_a_cold_start_holds_every_phase_in_order);
fn trace_of_a_cold_start_holds_every_phase_in_order(backend: Backend) {
    let cold_start = cold_start(backend);
    let out_dir = tempfile::tempdir().expect("tempdir");
    let trace = out_dir.path().join("cold.json");
    let trace_arg = trace.to_str().expect("utf-8 path");
    let mut w = TestWorker::start_with(backend, &[], &[], &["--trace", trace_arg]);
    let a = w.run("hello", r#"{"name": "Trace"}"#);
    assert_eq!(a.status, 200, "{}", a.body);
    w.down();

    let text = std::fs::read_to_string(&trace).expect("trace file written on down");
    let events: Vec<Value> = serde_json::from_str(&text).expect("trace is a finished JSON array");
    let mut spans: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X").collect();
    spans.sort_by(|a, b| {
        let ts = |e: &Value| e["ts"].as_f64().expect("ts");
        ts(a).total_cmp(&ts(b))
    });
    let request = spans
        .iter()
        .find(|e| e["name"] == "web-request" && e["args"]["lambda"] == "hello")
        .expect("a web-request span for hello");
    let track = &request["tid"];
    let call: Vec<&str> = spans
        .iter()
        .filter(|e| &e["tid"] == track)
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(call, cold_start, "{text}");
    // Each phase lies within the request; sock phases within the create.
    let bounds = |name: &str| {
        let e = spans
            .iter()
            .find(|e| &e["tid"] == track && e["name"] == name)
            .expect(name);
        let ts = e["ts"].as_f64().expect("ts");
        (ts, ts + e["dur"].as_f64().expect("dur"))
    };
    let (start, end) = bounds("web-request");
    let (create_start, create_end) = bounds("create-sandbox");
    for name in &cold_start[1..] {
        let (s, e) = bounds(name);
        assert!(s >= start && e <= end, "{name} outside web-request");
        if name.starts_with("sock-") || *name == "sandbox-ready" {
            assert!(
                s >= create_start && e <= create_end,
                "{name} outside create-sandbox"
            );
        }
    }
    let create = spans
        .iter()
        .find(|e| &e["tid"] == track && e["name"] == "create-sandbox")
        .expect("create-sandbox");
    assert!(
        create["args"]["sandbox"]
            .as_str()
            .is_some_and(|id| id.starts_with("hello-")),
        "{create}"
    );

    let out = Command::new(ol_bin())
        .args(["trace", "summarize"])
        .arg(&trace)
        .output()
        .expect("run ol trace summarize");
    assert!(out.status.success(), "summarize: {}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    let mut lines = table.lines();
    let header = lines.next().expect("header");
    assert!(
        header.split_whitespace().eq([
            "phase", "count", "mean", "ms", "p50", "ms", "p99", "ms", "max", "ms"
        ]),
        "{table}"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    for phase in &cold_start {
        let row = rows
            .iter()
            .find(|r| r.first() == Some(phase))
            .unwrap_or_else(|| panic!("{phase} missing from:\n{table}"));
        assert_eq!(row.len(), 6, "{table}");
        assert_eq!(row[1], "1", "{phase} count in:\n{table}");
        let ms: Vec<f64> = row[2..].iter().map(|v| v.parse().expect("ms")).collect();
        assert!(ms.iter().all(|v| *v >= 0.0), "{table}");
    }
    // Rows follow the order the phases first started.
    let order: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.first().copied())
        .filter(|n| cold_start.contains(n))
        .collect();
    assert_eq!(order, cold_start, "{table}");
}
