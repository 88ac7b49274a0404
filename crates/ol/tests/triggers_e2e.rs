//! Queue triggers end to end: a real worker started by the real `ol`
//! binary, a real `nats-server -js` or Kafka broker (`tansu`; its tests
//! say so and pass when it is not installed, unless `OL_REQUIRE_TANSU` is
//! set), killed when the test ends, even on failure, and real Python
//! lambdas. Each message's call prints
//! `seen <body> <attempt>` to the lambda's log (`DIR/logs/lambdas/`),
//! which is how the tests count calls. Each test runs on both backends
//! (`NAME::sock` needs root).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{Backend, TestWorker, eventually, ol, on_both_backends, stderr};
use ol_triggers::testing::{NatsServer, TansuBroker, jetstream_with_streams, publish};

/// Prints what it was called with (and waits 2 ms, so the worker has read
/// the line before the message is acknowledged); raises on multiples of
/// `FAIL_EVERY` when set.
const RECORDER: &str = r#"import os, time

FAIL_EVERY = int(os.environ.get("FAIL_EVERY", "0"))
DELAY = float(os.environ.get("DELAY", "0"))

def f(event, ctx):
    t = ctx.trigger
    print("seen", event, t["attempt"], t["subject"], t["sequence"], t["stream"],
          t["partition"], t["key"], t.get("topic"), t.get("offset"), flush=True)
    time.sleep(0.002 + DELAY)
    if FAIL_EVERY and event % FAIL_EVERY == 0:
        raise ValueError(f"{event} is a multiple of {FAIL_EVERY}")
    return "ok"
"#;

/// A runtime for the test's own publishing.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The recorder lambda with its trigger on `server` and `env`.
fn recorder_yaml(server: &NatsServer, trigger: &str, env: &str) -> String {
    format!(
        "triggers:\n  http: []\n  nats:\n    - {{url: '{}', stream: T, subject: 't.>', durable: rec{trigger}}}\nenvironment: {{{env}}}\n",
        server.url()
    )
}

/// A worker with lambda `rec` (`ol_yaml`) allowed to reach `server`,
/// its lambda log large enough for every line of these tests.
fn worker(backend: Backend, broker: &str, ol_yaml: &str, extra: &[&str]) -> TestWorker {
    let allowed = format!("triggers.allowed_brokers=[\"{broker}\"]");
    let mut overrides = vec![
        allowed.as_str(),
        "limits.log_kb=8192",
        "registry_cache_ms=200",
    ];
    overrides.extend(extra);
    TestWorker::start(
        backend,
        &[("rec", &[("f.py", RECORDER), ("ol.yaml", ol_yaml)])],
        &overrides,
    )
}

/// How many times each body was seen, and the attempts seen of each.
fn seen(dir: &Path) -> BTreeMap<u64, Vec<u32>> {
    let logs = dir.join("logs/lambdas");
    let mut seen: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for file in ["rec.log.1", "rec.log"] {
        let Ok(text) = fs::read_to_string(logs.join(file)) else {
            continue;
        };
        for line in text.lines() {
            // The last line of a worker killed while writing it is cut.
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let Some(words) = entry["line"].as_str().and_then(|l| l.strip_prefix("seen ")) else {
                continue;
            };
            let words: Vec<&str> = words.split(' ').collect();
            let body = words[0].parse().expect("body");
            seen.entry(body)
                .or_default()
                .push(words[1].parse().expect("attempt"));
        }
    }
    seen
}

/// The worker's `/stats` entry of trigger `nats[0]` of `rec`.
fn trigger_stats(w: &TestWorker) -> serde_json::Value {
    let stats = w.stats();
    stats["triggers"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["lambda"] == "rec"))
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// A metric's value for lambda `rec`'s trigger `nats[0]`.
fn metric(w: &TestWorker, name: &str) -> f64 {
    metric_of(w, "nats[0]", name)
}

/// A metric's value for lambda `rec`'s `trigger`.
fn metric_of(w: &TestWorker, trigger: &str, name: &str) -> f64 {
    let scrape = w.metrics();
    let sample = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == name
                && s.labels.get("lambda") == Some("rec")
                && s.labels.get("trigger") == Some(trigger)
        })
        .unwrap_or_else(|| panic!("no {name} for rec in /metrics"));
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: {other:?}"),
    }
}

on_both_backends!(a_thousand_messages_are_a_thousand_calls_and_removal_stops_the_consumer);
fn a_thousand_messages_are_a_thousand_calls_and_removal_stops_the_consumer(backend: Backend) {
    let server = NatsServer::start();
    let rt = runtime();
    let js = rt.block_on(jetstream_with_streams(&server));
    let w = worker(
        backend,
        &server.address(),
        &recorder_yaml(&server, ", concurrency: 4", ""),
        &[],
    );
    let started = std::time::Instant::now();
    rt.block_on(publish(&js, "t.a", 1, 1000));
    assert!(
        eventually(Duration::from_secs(120), || trigger_stats(&w)["delivered"]
            == 1000),
        "not all delivered: {}",
        trigger_stats(&w)
    );
    let took = started.elapsed();
    println!(
        "{backend:?}: 1000 messages published and called through a NATS trigger in {took:?} ({:.0} messages/s, 2 ms lambda, concurrency 4)",
        1000.0 / took.as_secs_f64()
    );
    assert!(
        eventually(Duration::from_secs(10), || trigger_stats(&w)["lag"] == 0),
        "{}",
        trigger_stats(&w)
    );
    let seen = seen(w.path());
    assert_eq!(seen.len(), 1000, "every message called");
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (1..=1000).collect::<Vec<_>>()
    );
    let twice: Vec<_> = seen.iter().filter(|(_, a)| a.len() != 1).collect();
    assert!(twice.is_empty(), "called more than once: {twice:?}");
    let stats = trigger_stats(&w);
    assert_eq!(stats["state"], "running", "{stats}");
    assert_eq!(stats["failed"], 0, "{stats}");
    assert_eq!(stats["broker"], server.url());
    assert_eq!(metric(&w, "ol_trigger_delivered_total"), 1000.0);
    assert_eq!(metric(&w, "ol_trigger_up"), 1.0);
    // The log line carried ctx.trigger: subject, sequence and stream.
    let log = fs::read_to_string(w.path().join("logs/lambdas/rec.log")).expect("log");
    assert!(log.contains("seen 1 1 t.a 1 T"), "ctx.trigger in the log");

    // Removed from the registry: its consumer stops, later messages wait.
    let removed = w.call("DELETE", "/registry/rec", "");
    assert_eq!(removed.status, 204, "{}", removed.body);
    assert!(
        eventually(Duration::from_secs(10), || trigger_stats(&w).is_null()),
        "{}",
        trigger_stats(&w)
    );
    rt.block_on(publish(&js, "t.a", 1001, 1010));
    std::thread::sleep(Duration::from_secs(1));
    let after = seen_count(w.path());
    assert_eq!(after, 1000, "no call after removal");
}

/// Waits up to `limit` for 200 of the 1,000 messages to be delivered,
/// kills the worker with SIGKILL mid-stream and cleans up after it with
/// `force-cleanup`; returns what was called before the kill.
fn kill_mid_stream(w: &TestWorker, limit: Duration) -> BTreeMap<u64, Vec<u32>> {
    assert!(
        eventually(limit, || {
            trigger_stats(w)["delivered"].as_u64().unwrap_or(0) >= 200
        }),
        "{}",
        trigger_stats(w)
    );
    let pid = w.worker_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the worker");
    let before = seen(w.path());
    assert!(
        before.len() < 1000,
        "killed mid-stream: {} seen",
        before.len()
    );
    let out = ol(w.path(), &["worker", "force-cleanup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    before
}

fn seen_count(dir: &Path) -> usize {
    seen(dir).values().map(Vec::len).sum()
}

on_both_backends!(every_tenth_message_fails_and_lands_on_the_dead_letter_subject);
fn every_tenth_message_fails_and_lands_on_the_dead_letter_subject(backend: Backend) {
    let server = NatsServer::start();
    let rt = runtime();
    let js = rt.block_on(jetstream_with_streams(&server));
    let w = worker(
        backend,
        &server.address(),
        &recorder_yaml(
            &server,
            ", concurrency: 2, retries: 2, backoff_ms: 10, dead_letter: dead.rec",
            "FAIL_EVERY: '10'",
        ),
        &[],
    );
    rt.block_on(publish(&js, "t.b", 1, 100));
    assert!(
        eventually(Duration::from_secs(60), || {
            let s = trigger_stats(&w);
            s["delivered"] == 90 && s["dead_lettered"] == 10
        }),
        "{}",
        trigger_stats(&w)
    );
    let stats = trigger_stats(&w);
    assert_eq!(
        (stats["failed"].as_u64(), stats["retried"].as_u64()),
        (Some(30), Some(20))
    );
    assert!(
        stats["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("is a multiple of 10"),
        "{stats}"
    );
    let seen = seen(w.path());
    for n in 1..=100u64 {
        let expected: &[u32] = if n % 10 == 0 { &[1, 2, 3] } else { &[1] };
        assert_eq!(
            seen.get(&n).map(Vec::as_slice),
            Some(expected),
            "message {n}"
        );
    }
    let dead = rt.block_on(async {
        let mut stream = js.get_stream("DEAD").await.expect("DEAD");
        stream.info().await.expect("info").state.messages
    });
    assert_eq!(dead, 10, "ten dead letters");
    assert!(
        eventually(Duration::from_secs(10), || trigger_stats(&w)["lag"] == 0),
        "every message settled: {}",
        trigger_stats(&w)
    );
    assert_eq!(metric(&w, "ol_trigger_dead_lettered_total"), 10.0);
}

on_both_backends!(a_worker_killed_mid_stream_and_restarted_loses_nothing);
fn a_worker_killed_mid_stream_and_restarted_loses_nothing(backend: Backend) {
    let server = NatsServer::start();
    let rt = runtime();
    let js = rt.block_on(jetstream_with_streams(&server));
    let ack_wait = "triggers.ack_wait_ms=2000";
    let mut w = worker(
        backend,
        &server.address(),
        &recorder_yaml(&server, ", concurrency: 2", "DELAY: '0.003'"),
        &[ack_wait],
    );
    rt.block_on(publish(&js, "t.c", 1, 1000));
    let before = kill_mid_stream(&w, Duration::from_secs(60));
    let allowed = format!("triggers.allowed_brokers=[\"{}\"]", server.address());
    w.up(&[
        &allowed,
        "limits.log_kb=8192",
        "registry_cache_ms=200",
        ack_wait,
    ]);
    assert!(
        eventually(Duration::from_secs(120), || seen(w.path()).len() == 1000),
        "{} of 1000 called; {}",
        seen(w.path()).len(),
        trigger_stats(&w)
    );
    assert!(
        eventually(Duration::from_secs(20), || trigger_stats(&w)["lag"] == 0),
        "{}",
        trigger_stats(&w)
    );
    let seen = seen(w.path());
    let twice = seen.values().filter(|a| a.len() > 1).count();
    println!(
        "{backend:?}: killed after {} of 1000 calls; after the restart every message was called, {twice} of them twice",
        before.len()
    );
    // Only what was in flight at the kill may run twice (at most the
    // concurrency, and what the broker had handed out with it).
    assert!(twice <= 4, "{twice} called twice");
}

/// The recorder lambda consuming topic `t` of `broker` in group `g`.
fn kafka_yaml(broker: &TansuBroker, trigger: &str, env: &str) -> String {
    format!(
        "triggers:\n  http: []\n  kafka:\n    - {{brokers: ['{}'], topic: t, group: g{trigger}}}\nenvironment: {{{env}}}\n",
        broker.address()
    )
}

on_both_backends!(kafka_a_thousand_records_are_a_thousand_calls_and_removal_stops_the_consumer);
fn kafka_a_thousand_records_are_a_thousand_calls_and_removal_stops_the_consumer(backend: Backend) {
    let Some(broker) = TansuBroker::start_or_skip("kafka_a_thousand_records") else {
        return;
    };
    let rt = runtime();
    rt.block_on(broker.create_topic("t", 3));
    let w = worker(
        backend,
        &broker.address(),
        &kafka_yaml(&broker, ", concurrency: 4", ""),
        &[],
    );
    let started = std::time::Instant::now();
    rt.block_on(broker.produce("t", 1, 1000));
    assert!(
        eventually(Duration::from_secs(120), || trigger_stats(&w)["delivered"]
            == 1000),
        "not all delivered: {}",
        trigger_stats(&w)
    );
    let took = started.elapsed();
    println!(
        "{backend:?}: 1000 records produced and called through a Kafka trigger in {took:?} ({:.0} records/s, 2 ms lambda, concurrency 4, 3 partitions)",
        1000.0 / took.as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(500));
    let seen = seen(w.path());
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (1..=1000).collect::<Vec<_>>(),
        "every record called"
    );
    let twice: Vec<_> = seen.iter().filter(|(_, a)| a.len() != 1).collect();
    assert!(twice.is_empty(), "called more than once: {twice:?}");
    let stats = trigger_stats(&w);
    assert_eq!(stats["state"], "running", "{stats}");
    assert_eq!(stats["trigger"], "kafka[0]", "{stats}");
    assert_eq!(stats["failed"], 0, "{stats}");
    assert_eq!(stats["broker"], broker.address());
    assert_eq!(
        metric_of(&w, "kafka[0]", "ol_trigger_delivered_total"),
        1000.0
    );
    // ctx.trigger: the topic as subject and stream, the offset as
    // sequence, a partition, the key, and topic and offset themselves.
    let log = fs::read_to_string(w.path().join("logs/lambdas/rec.log")).expect("log");
    let line = log
        .lines()
        .find(|l| l.contains("seen 7 1 "))
        .expect("record 7 in the log");
    assert!(
        line.contains(" t ") && line.contains(" 7 t "),
        "ctx.trigger of record 7: {line}"
    );

    let removed = w.call("DELETE", "/registry/rec", "");
    assert_eq!(removed.status, 204, "{}", removed.body);
    assert!(
        eventually(Duration::from_secs(10), || trigger_stats(&w).is_null()),
        "{}",
        trigger_stats(&w)
    );
    rt.block_on(broker.produce("t", 1001, 1010));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(seen_count(w.path()), 1000, "no call after removal");
}

on_both_backends!(kafka_every_tenth_record_fails_and_lands_on_the_dead_letter_topic);
fn kafka_every_tenth_record_fails_and_lands_on_the_dead_letter_topic(backend: Backend) {
    let Some(broker) = TansuBroker::start_or_skip("kafka_every_tenth_record") else {
        return;
    };
    let rt = runtime();
    rt.block_on(broker.create_topic("t", 2));
    rt.block_on(broker.create_topic("dead", 1));
    let w = worker(
        backend,
        &broker.address(),
        &kafka_yaml(
            &broker,
            ", concurrency: 2, retries: 2, backoff_ms: 10, dead_letter: dead",
            "FAIL_EVERY: '10'",
        ),
        &[],
    );
    rt.block_on(broker.produce("t", 1, 100));
    assert!(
        eventually(Duration::from_secs(90), || {
            let s = trigger_stats(&w);
            s["delivered"] == 90 && s["dead_lettered"] == 10
        }),
        "{}",
        trigger_stats(&w)
    );
    let stats = trigger_stats(&w);
    assert_eq!(
        (stats["failed"].as_u64(), stats["retried"].as_u64()),
        (Some(30), Some(20))
    );
    let seen = seen(w.path());
    for n in 1..=100u64 {
        let expected: &[u32] = if n % 10 == 0 { &[1, 2, 3] } else { &[1] };
        assert_eq!(
            seen.get(&n).map(Vec::as_slice),
            Some(expected),
            "record {n}"
        );
    }
    let dead = broker.read("dead", 11, Duration::from_secs(5));
    let mut bodies: Vec<u64> = dead
        .iter()
        .map(|(b, _)| b.parse().expect("number"))
        .collect();
    bodies.sort_unstable();
    assert_eq!(bodies, (1..=10).map(|n| n * 10).collect::<Vec<_>>());
    assert!(
        dead.iter().all(|(_, h)| h
            .iter()
            .any(|(k, v)| k == "Ol-Error" && v.contains("is a multiple of 10"))),
        "{dead:?}"
    );
    assert_eq!(
        metric_of(&w, "kafka[0]", "ol_trigger_dead_lettered_total"),
        10.0
    );
}

on_both_backends!(kafka_a_worker_killed_mid_stream_and_restarted_loses_nothing);
fn kafka_a_worker_killed_mid_stream_and_restarted_loses_nothing(backend: Backend) {
    let Some(broker) = TansuBroker::start_or_skip("kafka_a_worker_killed") else {
        return;
    };
    let rt = runtime();
    rt.block_on(broker.create_topic("t", 2));
    let mut w = worker(
        backend,
        &broker.address(),
        &kafka_yaml(&broker, ", concurrency: 2", "DELAY: '0.01'"),
        &[],
    );
    rt.block_on(broker.produce("t", 1, 1000));
    let before = kill_mid_stream(&w, Duration::from_secs(90));
    let allowed = format!("triggers.allowed_brokers=[\"{}\"]", broker.address());
    let restarted = std::time::Instant::now();
    w.up(&[&allowed, "limits.log_kb=8192", "registry_cache_ms=200"]);
    // The restarted member comes back under the same group.instance.id
    // (static membership), so it gets its partitions at once instead of
    // after the broker dropped the killed member (45 s on tansu).
    let mut resumed = None;
    assert!(
        eventually(Duration::from_secs(120), || {
            if resumed.is_none() && trigger_stats(&w)["delivered"].as_u64().unwrap_or(0) > 0 {
                resumed = Some(restarted.elapsed());
            }
            seen(w.path()).len() == 1000
        }),
        "{} of 1000 called; {}",
        seen(w.path()).len(),
        trigger_stats(&w)
    );
    let seen = seen(w.path());
    let twice = seen.values().filter(|a| a.len() > 1).count();
    println!(
        "{backend:?}: Kafka worker killed after {} of 1000 calls; the first call {resumed:?} and every record called {:?} after the restart, {twice} of them twice",
        before.len(),
        restarted.elapsed()
    );
}
