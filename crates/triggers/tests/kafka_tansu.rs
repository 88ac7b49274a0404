//! The trigger manager against a real Kafka broker, `tansu` 0.6.0 (in
//! memory), started per test on a free port and killed when the test
//! ends, even on failure. Without the binary (`OL_TANSU`, or the path
//! `.ci/run` builds it at) the tests say so and pass, unless
//! `OL_REQUIRE_TANSU` is set, as in CI. The lambda side is a recording
//! target; crates/ol/tests/triggers_e2e.rs runs real lambdas.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ol_lambda::InvokeError;
use ol_registry::DirRegistry;
use ol_sandbox::{Invocation, Reply};
use ol_triggers::testing::TansuBroker;
use ol_triggers::{CallTarget, TriggerManager, TriggerSettings, TriggerStats};

/// A lambda recording each record's body, after `delay`; it fails
/// (raises) on bodies that are multiples of `fail_every` (0: never).
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
    fail_every: u64,
    delay: Duration,
}

impl Recorder {
    fn counts(&self) -> BTreeMap<u64, usize> {
        let mut counts = BTreeMap::new();
        for body in self.calls.lock().expect("lock").iter() {
            *counts.entry(body.parse().expect("number")).or_default() += 1;
        }
        counts
    }
}

impl CallTarget for Recorder {
    async fn call(self: Arc<Self>, name: String, inv: Invocation) -> Result<Reply, InvokeError> {
        assert_eq!(name, "rec");
        let body = String::from_utf8(inv.body.to_vec()).expect("utf-8");
        let t = inv.trigger.expect("a queue call carries its record");
        assert_eq!(
            (t.kind.as_str(), t.name.as_str(), t.topic.as_deref()),
            ("kafka", "kafka[0]", Some("t"))
        );
        assert_eq!(t.key.as_deref(), Some(body.as_str()));
        assert_eq!(t.offset, Some(t.sequence));
        assert!(t.partition.is_some_and(|p| (0..3).contains(&p)));
        assert!(
            t.headers.iter().any(|(k, v)| k == "id" && *v == body),
            "{:?}",
            t.headers
        );
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.calls.lock().expect("lock").push(body.clone());
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

/// Writes lambda `rec` consuming topic `t` of `broker` in group `g`.
fn write_lambda(root: &Path, broker: &TansuBroker, extra: &str) {
    let dir = root.join("rec");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("f.py"), "def f(e):\n    return e\n").expect("write f.py");
    let yaml = format!(
        "triggers:\n  kafka:\n    - {{brokers: ['{}'], topic: t, group: g{extra}}}\n",
        broker.address()
    );
    std::fs::write(dir.join("ol.yaml"), yaml).expect("write ol.yaml");
}

fn manager(
    registry: &Path,
    broker: &TansuBroker,
    recorder: &Arc<Recorder>,
) -> Arc<TriggerManager<Recorder>> {
    TriggerManager::new(
        Arc::clone(recorder),
        Arc::new(DirRegistry::new(registry)),
        TriggerSettings {
            allowed_brokers: vec![broker.address()],
            rescan: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(5),
            // Static membership, as a worker has: a second manager is the
            // same worker restarted.
            worker_id: Some("0123456789abcdef0123456789abcdef".into()),
            ..TriggerSettings::default()
        },
    )
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
async fn a_thousand_records_are_a_thousand_calls_none_twice() {
    let Some(broker) = TansuBroker::start_or_skip("a_thousand_records") else {
        return;
    };
    broker.create_topic("t", 3).await;
    let registry = tempfile::tempdir().expect("registry");
    write_lambda(registry.path(), &broker, ", concurrency: 4");
    broker.produce("t", 1, 1000).await;

    let recorder = Arc::new(Recorder::default());
    let manager = manager(registry.path(), &broker, &recorder);
    let started = Instant::now();
    manager.start();
    wait_until(Duration::from_secs(90), "1000 deliveries", || {
        manager.stats().first().is_some_and(|s| s.delivered == 1000)
    })
    .await;
    let took = started.elapsed();
    println!(
        "1000 records through a Kafka trigger (tansu, 3 partitions, recording target, concurrency 4) in {took:?}, group join included: {:.0} records/s",
        1000.0 / took.as_secs_f64()
    );
    wait_until(Duration::from_secs(20), "lag 0", || {
        manager.stats().first().is_some_and(|s| s.lag == Some(0))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counts = recorder.counts();
    assert_eq!(counts.len(), 1000, "every record called");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "called more than once: {twice:?}");
    let stats = only(manager.stats());
    assert_eq!(
        (stats.state.as_str(), stats.failed, stats.in_flight),
        ("running", 0, 0)
    );
    assert_eq!(
        (
            stats.trigger.as_str(),
            stats.stream.as_str(),
            stats.consumer.as_str()
        ),
        ("kafka[0]", "t", "g")
    );
    assert_eq!(manager.shutdown(Duration::from_secs(10)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tenth_record_fails_its_retries_and_lands_on_the_dead_letter_topic() {
    let Some(broker) = TansuBroker::start_or_skip("every_tenth_record") else {
        return;
    };
    broker.create_topic("t", 3).await;
    broker.create_topic("dead", 1).await;
    let registry = tempfile::tempdir().expect("registry");
    write_lambda(
        registry.path(),
        &broker,
        ", concurrency: 3, retries: 2, backoff_ms: 5, dead_letter: dead",
    );
    broker.produce("t", 1, 100).await;
    let recorder = Arc::new(Recorder {
        fail_every: 10,
        ..Recorder::default()
    });
    let manager = manager(registry.path(), &broker, &recorder);
    manager.start();
    wait_until(
        Duration::from_secs(90),
        "90 delivered, 10 dead letters",
        || {
            manager
                .stats()
                .first()
                .is_some_and(|s| s.delivered == 90 && s.dead_lettered == 10)
        },
    )
    .await;
    // Everything committed, the failures included.
    wait_until(Duration::from_secs(20), "lag 0", || {
        manager.stats().first().is_some_and(|s| s.lag == Some(0))
    })
    .await;
    let stats = only(manager.stats());
    assert_eq!((stats.failed, stats.retried), (30, 20), "3 attempts each");
    assert!(
        stats
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("is a multiple of 10")),
        "{stats:?}"
    );
    let counts = recorder.counts();
    for (n, calls) in &counts {
        assert_eq!(*calls, if n % 10 == 0 { 3 } else { 1 }, "record {n}");
    }
    assert_eq!(counts.len(), 100);
    assert_eq!(manager.shutdown(Duration::from_secs(10)).await, 0);

    let mut dead = broker.read("dead", 11, Duration::from_secs(5));
    dead.sort_by_key(|(body, _)| body.parse::<u64>().expect("number"));
    let bodies: Vec<&str> = dead.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(
        bodies,
        ["10", "20", "30", "40", "50", "60", "70", "80", "90", "100"]
    );
    for (body, headers) in &dead {
        let get = |k: &str| {
            headers
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("id"), Some(body.as_str()), "original headers kept");
        assert_eq!(get("Ol-Lambda"), Some("rec"));
        assert_eq!(get("Ol-Trigger"), Some("kafka[0]"));
        assert_eq!(get("Ol-Attempts"), Some("3"));
        assert_eq!(get("Ol-Topic"), Some("t"));
        assert!(get("Ol-Offset").is_some() && get("Ol-Partition").is_some());
        assert!(
            get("Ol-Error").is_some_and(|e| e.contains("ValueError")),
            "{headers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_consumer_resumes_at_its_committed_offsets() {
    let Some(broker) = TansuBroker::start_or_skip("a_stopped_consumer_resumes") else {
        return;
    };
    broker.create_topic("t", 3).await;
    let registry = tempfile::tempdir().expect("registry");
    write_lambda(registry.path(), &broker, ", concurrency: 2");
    broker.produce("t", 1, 600).await;
    // 5 ms a call, 2 at a time: 600 records take 1.5 s at least, so the
    // stop lands mid-stream (without it all 600 were called before the
    // stop took effect, once in CI).
    let recorder = Arc::new(Recorder {
        delay: Duration::from_millis(5),
        ..Recorder::default()
    });
    let first = manager(registry.path(), &broker, &recorder);
    first.start();
    wait_until(Duration::from_secs(90), "some calls", || {
        recorder.calls.lock().expect("lock").len() >= 150
    })
    .await;
    assert_eq!(first.shutdown(Duration::from_secs(10)).await, 0);
    let before = recorder.calls.lock().expect("lock").len();
    assert!(before < 600, "stopped mid-stream ({before} calls)");
    drop(first);

    let second = manager(registry.path(), &broker, &recorder);
    second.start();
    wait_until(Duration::from_secs(90), "every record", || {
        recorder.counts().len() == 600
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let twice = recorder.counts().values().filter(|n| **n > 1).count();
    println!("stopped after {before} of 600 calls; {twice} called twice after the restart");
    assert_eq!(twice, 0, "a clean stop commits what it called");
    assert_eq!(second.shutdown(Duration::from_secs(10)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_lambda_stops_its_consumer() {
    let Some(broker) = TansuBroker::start_or_skip("removing_the_lambda") else {
        return;
    };
    broker.create_topic("t", 3).await;
    let registry = tempfile::tempdir().expect("registry");
    write_lambda(registry.path(), &broker, "");
    broker.produce("t", 1, 10).await;
    let recorder = Arc::new(Recorder::default());
    let manager = manager(registry.path(), &broker, &recorder);
    manager.start();
    wait_until(Duration::from_secs(90), "10 calls", || {
        recorder.calls.lock().expect("lock").len() == 10
    })
    .await;
    std::fs::remove_dir_all(registry.path().join("rec")).expect("remove the lambda");
    manager.rescan().await;
    assert!(manager.stats().is_empty(), "{:?}", manager.stats());
    broker.produce("t", 11, 20).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        recorder.calls.lock().expect("lock").len(),
        10,
        "no calls after removal"
    );
    assert_eq!(manager.shutdown(Duration::from_secs(10)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_not_allowed_is_refused() {
    let Some(broker) = TansuBroker::start_or_skip("a_broker_not_allowed") else {
        return;
    };
    let registry = tempfile::tempdir().expect("registry");
    write_lambda(registry.path(), &broker, "");
    let recorder = Arc::new(Recorder::default());
    let manager = TriggerManager::new(
        Arc::clone(&recorder),
        Arc::new(DirRegistry::new(registry.path())),
        TriggerSettings::default(),
    );
    manager.rescan().await;
    wait_until(Duration::from_secs(10), "refused", || {
        manager
            .stats()
            .first()
            .is_some_and(|s| s.state == "refused")
    })
    .await;
    let stats = only(manager.stats());
    assert!(
        stats
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("not in this worker's config.json")),
        "{stats:?}"
    );
    assert_eq!(manager.shutdown(Duration::from_secs(5)).await, 0);
}
