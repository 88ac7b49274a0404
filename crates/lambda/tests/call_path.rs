//! The lambda layer's call path against the fake sandbox backend: no root,
//! no Python, milliseconds per test. Queueing, the wait-or-create rule,
//! 429 (queue full), 503 (no memory), eviction, code changes, the retry of
//! a call that never reached its sandbox, and what each way a sandbox can
//! fail becomes.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ol_lambda::{InvokeError, LambdaManager, LambdaSettings, PackageLayer};
use ol_registry::DirRegistry;
use ol_sandbox::fake::{Call, FakePool, Start};
use ol_sandbox::{Invocation, Limits, SandboxPool};

/// A lambda layer over `fake`, with code for `lambdas` in a registry dir.
struct Layer {
    manager: Arc<LambdaManager>,
    fake: FakePool,
    registry: tempfile::TempDir,
}

impl Layer {
    fn new(lambdas: &[&str], settings: LambdaSettings) -> Self {
        let registry = tempfile::tempdir().expect("tempdir");
        for name in lambdas {
            write_code(registry.path(), name, "def f(event):\n    return event\n");
        }
        let fake = FakePool::new();
        let pool: Arc<dyn SandboxPool> = Arc::new(fake.clone());
        let manager = LambdaManager::new(
            pool,
            Arc::new(DirRegistry::new(registry.path())),
            settings,
            PackageLayer::default(),
        );
        Self {
            manager,
            fake,
            registry,
        }
    }

    async fn call(&self, name: &str, body: &'static str) -> Result<(u16, Bytes), InvokeError> {
        call(&self.manager, name, body).await
    }

    /// `n` calls of `name` at once; their results in the order they ended.
    async fn calls_at_once(&self, name: &str, n: usize) -> Vec<Result<(u16, Bytes), InvokeError>> {
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (manager, name) = (Arc::clone(&self.manager), name.to_string());
            calls.spawn(async move { call(&manager, &name, "{}").await });
        }
        calls.join_all().await
    }
}

async fn call(
    manager: &Arc<LambdaManager>,
    name: &str,
    body: &'static str,
) -> Result<(u16, Bytes), InvokeError> {
    let inv = Invocation {
        method: "POST".into(),
        path: "/".into(),
        body: Bytes::from_static(body.as_bytes()),
        ..Invocation::default()
    };
    manager.invoke(name, inv).await.map(|r| (r.status, r.body))
}

fn write_code(registry: &Path, name: &str, code: &str) {
    let dir = registry.join(name);
    fs::create_dir_all(&dir).expect("mkdir");
    fs::write(dir.join("f.py"), code).expect("write");
}

/// Settings with nothing in the background and short bounds.
fn settings() -> LambdaSettings {
    LambdaSettings {
        max_instances: 4,
        max_queue: 16,
        idle_timeout: None,
        pause_after_idle: None,
        ready_timeout: Duration::from_secs(5),
        admission_timeout: Duration::from_millis(200),
        registry_cache: Duration::ZERO,
        busy_before_waiting: 4,
        mem_pool_mb: 1024,
        ..LambdaSettings::default()
    }
}

#[tokio::test]
async fn a_warm_sandbox_serves_calls_one_after_another() {
    let layer = Layer::new(&["echo"], settings());
    for _ in 0..5 {
        let (status, body) = layer.call("echo", r#"{"a": 1}"#).await.expect("call");
        assert_eq!((status, &body[..]), (200, &br#"{"a": 1}"#[..]));
    }
    let counts = layer.fake.counts_of("echo");
    assert_eq!((counts.created, counts.calls), (1, 5));
}

#[tokio::test]
async fn calls_at_once_get_sandboxes_up_to_max_instances() {
    let layer = Layer::new(
        &["slow"],
        LambdaSettings {
            max_instances: 3,
            ..settings()
        },
    );
    layer.fake.by_default(
        "slow",
        Call::reply(200, "done").after(Duration::from_millis(50)),
    );
    let results = layer.calls_at_once("slow", 9).await;
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_ok_and(|(s, _)| *s == 200))
    );
    let counts = layer.fake.counts_of("slow");
    assert_eq!(counts.created, 3, "{counts:?}");
    assert_eq!(counts.calls, 9);
}

#[tokio::test]
async fn short_calls_wait_for_a_busy_sandbox_when_starting_one_costs_more() {
    // Starting a sandbox costs 400 ms; a call 10 ms. With one sandbox busy
    // and busy_before_waiting = 1, a new call waits for it instead.
    let waiting = Layer::new(
        &["quick"],
        LambdaSettings {
            busy_before_waiting: 1,
            ..settings()
        },
    );
    // With room below busy_before_waiting, the same call starts another.
    let creating = Layer::new(
        &["quick"],
        LambdaSettings {
            busy_before_waiting: 4,
            ..settings()
        },
    );
    for layer in [&waiting, &creating] {
        layer
            .fake
            .on_start("quick", Start::ready().after(Duration::from_millis(400)));
        layer.fake.by_default(
            "quick",
            Call::reply(200, "ok").after(Duration::from_millis(10)),
        );
        // The first call measures the start and the call.
        layer.call("quick", "{}").await.expect("first call");
        let results = layer.calls_at_once("quick", 2).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
    assert_eq!(waiting.fake.counts_of("quick").created, 1);
    assert_eq!(creating.fake.counts_of("quick").created, 2);
}

#[tokio::test]
async fn a_full_queue_turns_calls_away() {
    let layer = Layer::new(
        &["busy"],
        LambdaSettings {
            max_instances: 1,
            max_queue: 2,
            ..settings()
        },
    );
    layer.fake.by_default(
        "busy",
        Call::reply(200, "ok").after(Duration::from_millis(200)),
    );
    let results = layer.calls_at_once("busy", 5).await;
    let full = results
        .iter()
        .filter(|r| matches!(r, Err(InvokeError::QueueFull(_))))
        .count();
    let served = results.iter().filter(|r| r.is_ok()).count();
    // One running, two queued; the rest find the queue full.
    assert_eq!((served, full), (3, 2), "{results:?}");
}

#[tokio::test]
async fn a_pool_full_of_busy_sandboxes_is_no_memory() {
    // 50 MiB a sandbox, 60 MiB in all: room for one.
    let layer = Layer::new(
        &["busy", "other"],
        LambdaSettings {
            mem_pool_mb: 60,
            limits: Limits {
                mem_mb: 50,
                ..Limits::default()
            },
            ..settings()
        },
    );
    layer.fake.on_call(
        "busy",
        Call::reply(200, "ok").after(Duration::from_millis(600)),
    );
    let busy = layer.call("busy", "{}");
    let other = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        layer.call("other", "{}").await
    };
    let (busy, other) = tokio::join!(busy, other);
    assert!(busy.is_ok(), "{busy:?}");
    assert!(matches!(other, Err(InvokeError::NoMemory(_))), "{other:?}");
    assert_eq!(layer.fake.counts_of("other").created, 0);
}

#[tokio::test]
async fn an_idle_sandbox_is_evicted_for_another_lambda() {
    let layer = Layer::new(
        &["first", "second"],
        LambdaSettings {
            mem_pool_mb: 60,
            limits: Limits {
                mem_mb: 50,
                ..Limits::default()
            },
            ..settings()
        },
    );
    layer.call("first", "{}").await.expect("first");
    layer.call("second", "{}").await.expect("second");
    assert_eq!(layer.fake.counts_of("first").destroyed, 1);
    assert_eq!(layer.manager.stats().evictions, 1);
    assert_eq!(layer.fake.counts().live(), 1);
}

#[tokio::test]
async fn changed_code_gets_a_new_sandbox() {
    let layer = Layer::new(&["code"], settings());
    layer.call("code", "{}").await.expect("v1");
    // A new version: another size, so the directory's version changes
    // whatever the file system's time resolution.
    write_code(
        layer.registry.path(),
        "code",
        "def f(event):\n    return 'version two'\n",
    );
    layer.call("code", "{}").await.expect("v2");
    let counts = layer.fake.counts_of("code");
    assert_eq!((counts.created, counts.destroyed), (2, 1), "{counts:?}");
}

#[tokio::test]
async fn a_call_that_never_reached_its_dead_sandbox_is_retried_on_a_new_one() {
    let layer = Layer::new(&["flaky"], settings());
    layer.call("flaky", "{}").await.expect("warm");
    assert_eq!(layer.fake.kill("flaky"), 1);
    let (status, _) = layer.call("flaky", "{}").await.expect("retried");
    assert_eq!(status, 200);
    let counts = layer.fake.counts_of("flaky");
    assert_eq!((counts.created, counts.calls), (2, 2), "{counts:?}");
}

#[tokio::test]
async fn each_way_a_sandbox_fails_is_its_own_error() {
    let layer = Layer::new(
        &["raises", "dies", "oom", "broken", "hangs"],
        LambdaSettings {
            limits: Limits {
                runtime_sec: 1,
                ..Limits::default()
            },
            ..settings()
        },
    );
    layer.fake.on_call("raises", Call::raise("ValueError: no"));
    layer.fake.on_call("dies", Call::die());
    layer.fake.on_call("oom", Call::out_of_memory());
    layer
        .fake
        .on_start("broken", Start::load_error("SyntaxError: invalid syntax"));
    layer.fake.on_call("hangs", Call::hang());

    let raised = layer.call("raises", "{}").await;
    assert!(
        matches!(&raised, Err(InvokeError::Raised { error, .. }) if error == "ValueError: no"),
        "{raised:?}"
    );
    // The sandbox of a lambda that raised lives on.
    layer.call("raises", "{}").await.expect("after raising");
    assert_eq!(layer.fake.counts_of("raises").created, 1);

    let died = layer.call("dies", "{}").await;
    assert!(matches!(died, Err(InvokeError::Died(_))), "{died:?}");
    // The next call gets a fresh sandbox.
    layer.call("dies", "{}").await.expect("after dying");
    assert_eq!(layer.fake.counts_of("dies").created, 2);

    let oom = layer.call("oom", "{}").await;
    assert!(matches!(oom, Err(InvokeError::OutOfMemory(_))), "{oom:?}");

    let broken = layer.call("broken", "{}").await;
    assert!(
        matches!(&broken, Err(InvokeError::LoadFailed { error, .. }) if error.starts_with("SyntaxError")),
        "{broken:?}"
    );

    let hung = layer.call("hangs", "{}").await;
    assert!(matches!(hung, Err(InvokeError::Timeout(_))), "{hung:?}");
    // Killed at its limit (destroyed off the call's path).
    let mut destroyed = 0;
    for _ in 0..200 {
        destroyed = layer.fake.counts_of("hangs").destroyed;
        if destroyed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(destroyed, 1, "the hung sandbox is destroyed");

    let missing = layer.call("nobody", "{}").await;
    assert!(
        matches!(missing, Err(InvokeError::NotFound(_))),
        "{missing:?}"
    );
    let bad = layer.call("../etc", "{}").await;
    assert!(matches!(bad, Err(InvokeError::BadName(_))), "{bad:?}");
}

#[tokio::test]
async fn a_call_short_of_memory_evicts_one_sandbox_not_every_idle_one() {
    // Room for two. Two busy sandboxes end one after the other while a
    // third lambda waits for memory: it evicts the first to end, and not
    // the second too while the first is still being destroyed.
    let layer = Layer::new(
        &["a", "b", "late"],
        LambdaSettings {
            mem_pool_mb: 100,
            limits: Limits {
                mem_mb: 50,
                ..Limits::default()
            },
            admission_timeout: Duration::from_secs(5),
            ..settings()
        },
    );
    for (name, ms) in [("a", 300), ("b", 400)] {
        layer.fake.on_call(
            name,
            Call::reply(200, "ok").after(Duration::from_millis(ms)),
        );
        layer.fake.destroy_takes(name, Duration::from_millis(300));
    }
    let late = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        layer.call("late", "{}").await
    };
    let (a, b, late) = tokio::join!(layer.call("a", "{}"), layer.call("b", "{}"), late);
    assert!(
        a.is_ok() && b.is_ok() && late.is_ok(),
        "{a:?} {b:?} {late:?}"
    );
    assert_eq!(layer.manager.stats().evictions, 1);
    assert_eq!(layer.manager.stats().mem_pool_used_mb, 100);
}
