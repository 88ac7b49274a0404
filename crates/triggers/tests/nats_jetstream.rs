//! The trigger manager against a real `nats-server -js` (Debian's 2.9,
//! `.ci/run` installs it), started per test on a free port with its own
//! store and killed when the test ends, even on failure. The lambda side
//! is a recording target: these tests are about the broker side; the
//! worker's own e2e tests (crates/ol/tests/triggers_e2e.rs) run real
//! lambdas.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use ol_lambda::InvokeError;
use ol_registry::DirRegistry;
use ol_sandbox::{Invocation, Reply};
use ol_triggers::testing::{NatsServer, jetstream_with_streams, publish};
use ol_triggers::{CallTarget, TriggerManager, TriggerSettings, TriggerStats};

/// A lambda recording each message's body; it fails (raises) on bodies
/// that are multiples of `fail_every` (0: never).
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(String, u32)>>,
    fail_every: u64,
}

impl Recorder {
    fn bodies(&self) -> Vec<String> {
        self.calls
            .lock()
            .expect("lock")
            .iter()
            .map(|(b, _)| b.clone())
            .collect()
    }
}

impl CallTarget for Recorder {
    async fn call(self: Arc<Self>, name: String, inv: Invocation) -> Result<Reply, InvokeError> {
        assert_eq!(name, "rec");
        let body = String::from_utf8(inv.body.to_vec()).expect("utf-8");
        let trigger = inv.trigger.expect("a queue call carries its message");
        assert_eq!(trigger.kind, "nats");
        assert_eq!(trigger.stream, "T");
        assert!(trigger.sequence > 0);
        assert!(
            trigger.headers.iter().any(|(k, v)| k == "id" && *v == body),
            "{:?}",
            trigger.headers
        );
        self.calls
            .lock()
            .expect("lock")
            .push((body.clone(), trigger.attempt));
        let n: u64 = body.parse().expect("number");
        if self.fail_every > 0 && n.is_multiple_of(self.fail_every) {
            return Err(InvokeError::Raised {
                error: format!("ValueError: {n} is a multiple of {}", self.fail_every),
                traceback: String::new(),
            });
        }
        Ok(Reply {
            status: 200,
            headers: vec![],
            body: Bytes::new(),
        })
    }
}

/// Writes lambda `rec` with `ol_yaml` into registry `root`.
fn write_lambda(root: &Path, ol_yaml: &str) {
    let dir = root.join("rec");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("f.py"), "def f(e):\n    return e\n").expect("write f.py");
    std::fs::write(dir.join("ol.yaml"), ol_yaml).expect("write ol.yaml");
}

fn trigger_yaml(url: &str, subject: &str, extra: &str) -> String {
    format!(
        "triggers:\n  nats:\n    - {{url: '{url}', stream: T, subject: '{subject}', durable: rec{extra}}}\n"
    )
}

fn settings(server: &NatsServer) -> TriggerSettings {
    TriggerSettings {
        allowed_brokers: vec![format!("127.0.0.1:{}", server.port())],
        rescan: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        ..TriggerSettings::default()
    }
}

/// Polls `cond` every 20 ms for up to `limit`.
async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn only(stats: Vec<TriggerStats>) -> TriggerStats {
    assert_eq!(stats.len(), 1, "{stats:?}");
    stats.into_iter().next().expect("one")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_are_a_thousand_calls_none_twice() {
    let server = NatsServer::start();
    let js = jetstream_with_streams(&server).await;
    let registry = tempfile::tempdir().expect("registry");
    write_lambda(
        registry.path(),
        &trigger_yaml(&server.url(), "t.>", ", concurrency: 4"),
    );
    publish(&js, "t.a", 1, 1000).await;

    let recorder = Arc::new(Recorder::default());
    let manager = TriggerManager::new(
        Arc::clone(&recorder),
        Arc::new(DirRegistry::new(registry.path())),
        settings(&server),
    );
    let started = Instant::now();
    manager.start();
    wait_until(Duration::from_secs(60), "1000 deliveries", || {
        manager.stats().first().is_some_and(|s| s.delivered == 1000)
    })
    .await;
    let took = started.elapsed();
    println!(
        "1000 messages through a NATS trigger (recording target, concurrency 4) in {took:?}: {:.0} messages/s",
        1000.0 / took.as_secs_f64()
    );
    // Settle: nothing more arrives, and the broker has nothing pending.
    wait_until(Duration::from_secs(10), "lag 0", || {
        manager.stats().first().is_some_and(|s| s.lag == Some(0))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for body in recorder.bodies() {
        *counts.entry(body.parse().expect("number")).or_default() += 1;
    }
    assert_eq!(counts.len(), 1000, "every message called");
    assert_eq!(counts.keys().next(), Some(&1));
    assert_eq!(counts.keys().last(), Some(&1000));
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "called more than once: {twice:?}");
    let stats = only(manager.stats());
    assert_eq!(
        (stats.state.as_str(), stats.failed, stats.in_flight),
        ("running", 0, 0)
    );
    assert_eq!(stats.trigger, "nats[0]");
    assert_eq!(manager.shutdown(Duration::from_secs(5)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tenth_message_fails_its_retries_and_lands_on_the_dead_letter_subject() {
    let server = NatsServer::start();
    let js = jetstream_with_streams(&server).await;
    let registry = tempfile::tempdir().expect("registry");
    write_lambda(
        registry.path(),
        &trigger_yaml(
            &server.url(),
            "t.>",
            ", concurrency: 3, retries: 2, backoff_ms: 5, dead_letter: dead.rec",
        ),
    );
    publish(&js, "t.b", 1, 100).await;
    let recorder = Arc::new(Recorder {
        fail_every: 10,
        ..Recorder::default()
    });
    let manager = TriggerManager::new(
        Arc::clone(&recorder),
        Arc::new(DirRegistry::new(registry.path())),
        settings(&server),
    );
    manager.start();
    wait_until(
        Duration::from_secs(60),
        "90 delivered and 10 dead letters",
        || {
            manager
                .stats()
                .first()
                .is_some_and(|s| s.delivered == 90 && s.dead_lettered == 10)
        },
    )
    .await;
    let stats = only(manager.stats());
    assert_eq!(
        (stats.failed, stats.retried),
        (30, 20),
        "3 attempts of each tenth"
    );
    assert!(
        stats
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("is a multiple of 10")),
        "{stats:?}"
    );
    let calls = recorder.calls.lock().expect("lock").clone();
    let attempts_of_10: Vec<u32> = calls
        .iter()
        .filter(|(b, _)| b == "10")
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(attempts_of_10, [1, 2, 3]);

    // The dead letters: the original bodies with the error and where they came from.
    let dead = js.get_stream("DEAD").await.expect("DEAD");
    let consumer = dead
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("check".into()),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(20)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .expect("fetch");
    let mut bodies = Vec::new();
    while let Some(m) = batch.next().await {
        let m = m.expect("message");
        let headers = m.headers.clone().expect("headers");
        let header = |name: &str| headers.get(name).map(|v| v.to_string()).unwrap_or_default();
        assert!(
            header("Ol-Error").contains("is a multiple of 10"),
            "{headers:?}"
        );
        assert_eq!(header("Ol-Lambda"), "rec");
        assert_eq!(header("Ol-Trigger"), "nats[0]");
        assert_eq!(header("Ol-Attempts"), "3");
        assert_eq!(header("Ol-Stream"), "T");
        assert_eq!(header("Ol-Subject"), "t.b");
        assert_eq!(header("id"), String::from_utf8_lossy(&m.payload));
        bodies.push(
            String::from_utf8_lossy(&m.payload)
                .parse::<u64>()
                .expect("n"),
        );
    }
    bodies.sort_unstable();
    assert_eq!(bodies, (1..=10).map(|n| n * 10).collect::<Vec<_>>());
    // Every message is settled: nothing left for the consumer.
    wait_until(Duration::from_secs(10), "lag 0", || {
        manager.stats().first().is_some_and(|s| s.lag == Some(0))
    })
    .await;
    manager.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_lambda_stops_its_consumer_and_a_changed_trigger_restarts_it() {
    let server = NatsServer::start();
    let js = jetstream_with_streams(&server).await;
    let registry = tempfile::tempdir().expect("registry");
    write_lambda(registry.path(), &trigger_yaml(&server.url(), "t.one", ""));
    let recorder = Arc::new(Recorder::default());
    let manager = TriggerManager::new(
        Arc::clone(&recorder),
        Arc::new(DirRegistry::new(registry.path())),
        settings(&server),
    );
    manager.start();
    publish(&js, "t.one", 1, 5).await;
    wait_until(Duration::from_secs(20), "5 calls", || {
        recorder.bodies().len() == 5
    })
    .await;

    // Changed subject: the consumer is updated to the new filter and goes
    // on from its position in the stream.
    write_lambda(registry.path(), &trigger_yaml(&server.url(), "t.two", ""));
    manager.rescan_soon();
    wait_until(Duration::from_secs(20), "the new filter", || {
        manager
            .stats()
            .first()
            .is_some_and(|s| s.subject == "t.two" && s.state == "running")
    })
    .await;
    publish(&js, "t.one", 100, 100).await;
    publish(&js, "t.two", 6, 6).await;
    wait_until(Duration::from_secs(20), "message 6", || {
        recorder.bodies().len() == 6
    })
    .await;
    let stats = only(manager.stats());
    assert_eq!(stats.last_error, None, "{stats:?}");

    std::fs::remove_dir_all(registry.path().join("rec")).expect("remove lambda");
    manager.rescan().await;
    assert!(manager.stats().is_empty(), "{:?}", manager.stats());
    publish(&js, "t.two", 7, 9).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        recorder.bodies(),
        ["1", "2", "3", "4", "5", "6"],
        "nothing after removal"
    );
    manager.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_not_allowed_or_not_answering_is_an_error_in_stats_never_a_hang() {
    let server = NatsServer::start();
    let registry = tempfile::tempdir().expect("registry");
    // Allowed but nothing listens there; then one on a port not allowed.
    let dead_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let ol_yaml = format!(
        "triggers:\n  nats:\n    - {{url: 'nats://127.0.0.1:{dead_port}', stream: T, subject: t, durable: a}}\n    - {{url: '{}', stream: T, subject: t, durable: b}}\n",
        server.url()
    );
    write_lambda(registry.path(), &ol_yaml);
    let manager = TriggerManager::new(
        Arc::new(Recorder::default()),
        Arc::new(DirRegistry::new(registry.path())),
        TriggerSettings {
            allowed_brokers: vec![format!("127.0.0.1:{dead_port}")],
            connect_timeout: Duration::from_millis(500),
            ..TriggerSettings::default()
        },
    );
    manager.rescan().await;
    wait_until(Duration::from_secs(10), "both errors", || {
        let stats = manager.stats();
        stats.len() == 2 && stats.iter().all(|s| s.last_error.is_some())
    })
    .await;
    let stats = manager.stats();
    assert_eq!(stats[0].state, "reconnecting");
    let e = stats[0].last_error.clone().unwrap_or_default();
    assert!(e.contains(&format!("127.0.0.1:{dead_port}")), "{e}");
    assert_eq!(stats[1].state, "refused");
    assert_eq!(
        stats[1].last_error.as_deref(),
        Some(
            format!(
                "broker 127.0.0.1:{} is not in this worker's config.json triggers.allowed_brokers",
                server.port()
            )
            .as_str()
        )
    );
    let started = Instant::now();
    assert_eq!(manager.shutdown(Duration::from_secs(5)).await, 0);
    assert!(started.elapsed() < Duration::from_secs(2), "stops at once");
}
