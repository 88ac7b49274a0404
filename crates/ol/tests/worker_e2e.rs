//! End-to-end tests: a real worker started by the real `ol` binary, real
//! Python lambdas, exact answers, and nothing left behind afterwards.

mod common;

use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use common::{TestWorker, add_lambda, assert_no_processes, eventually, ol, stderr};

const BOOM: &[(&str, &str)] = &[("f.py", "def f(event):\n    return 1 / 0\n")];
const CRASH: &[(&str, &str)] = &[(
    "f.py",
    "import os\n\ndef f(event):\n    if event == 'crash':\n        os._exit(3)\n    return 'alive'\n",
)];
const SLEEPY: &[(&str, &str)] = &[(
    "f.py",
    "import time\n\ndef f(event):\n    time.sleep(event)\n    return 'woke'\n",
)];
const BROKEN: &[(&str, &str)] = &[("f.py", "def f(event)\n    return 1\n")];
const WSGI: &[(&str, &str)] = &[(
    "app.py",
    "def app(environ, start_response):\n    start_response('418 I am a teapot', [('A', 'B')])\n    return [b'hi\\n']\n",
)];

#[test]
fn hello_lambdas_answer_exactly() {
    let w = TestWorker::start(&[], &[]);
    let a = w.run("hello", r#"{"name": "Alice"}"#);
    assert_eq!((a.status, a.body.as_str()), (200, "\"Hello, Alice!\""));
    assert!(
        a.headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/json"),
        "{:?}",
        a.headers
    );
    let a = w.run("hello-legacy", r#"{"name": "Bob"}"#);
    assert_eq!((a.status, a.body.as_str()), (200, "\"Hello, Bob!\""));
    let a = w.call("POST", "/runLambda/hello", r#"{"name": "Carol"}"#);
    assert_eq!((a.status, a.body.as_str()), (200, "\"Hello, Carol!\""));
    let a = w.run("echo", "not json");
    assert_eq!((a.status, a.body.as_str()), (200, "\"not json\""));
    let a = w.call("GET", "/status", "");
    assert_eq!((a.status, a.body.as_str()), (200, "ready"));
    // The warm sandbox is reused: hello was called twice, one sandbox.
    assert_eq!(w.sandbox_pids("hello").len(), 1);
}

#[test]
fn wsgi_app_passes_status_headers_and_body() {
    let w = TestWorker::start(&[("teapot", WSGI)], &[]);
    let a = w.call("GET", "/run/teapot/some/path?x=1", "");
    assert_eq!((a.status, a.body.as_str()), (418, "hi\n"));
    assert!(
        a.headers.iter().any(|(k, v)| k == "a" && v == "B"),
        "{:?}",
        a.headers
    );
}

#[test]
fn unknown_lambda_and_route_are_404_json() {
    let w = TestWorker::start(&[], &[]);
    let a = w.run("nope", "{}");
    assert_eq!(a.status, 404);
    let j = a.json();
    assert_eq!(j["lambda"], "nope");
    assert_eq!(j["error"], "no lambda named \"nope\" in the registry");
    assert_eq!(w.call("GET", "/elsewhere", "").status, 404);
    let a = w.run("bad.name", "{}");
    assert_eq!(a.status, 400, "{}", a.body);
}

#[test]
fn raising_lambda_is_500_with_message_and_others_unharmed() {
    let w = TestWorker::start(&[("boom", BOOM)], &[]);
    let a = w.run("boom", "{}");
    assert_eq!(a.status, 500);
    let j = a.json();
    assert_eq!(j["error"], "ZeroDivisionError: division by zero");
    assert_eq!(j["lambda"], "boom");
    assert!(
        j["traceback"].as_str().is_some_and(|t| t.contains("f.py")),
        "{j}"
    );
    let first = w.sandbox_pids("boom");
    // Raising does not kill the sandbox: the next call reuses it.
    assert_eq!(w.run("boom", "{}").status, 500);
    assert_eq!(w.sandbox_pids("boom"), first);
    assert_eq!(w.run("hello", r#"{"name": "A"}"#).status, 200);
}

#[test]
fn lambda_that_fails_to_load_is_500_naming_the_error() {
    let w = TestWorker::start(&[("broken", BROKEN)], &[]);
    let a = w.run("broken", "{}");
    assert_eq!(a.status, 500);
    let err = a.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(
        err.starts_with("lambda failed to load: SyntaxError"),
        "{err}"
    );
    assert!(w.sandbox_pids("broken").is_empty());
}

fn kill(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
}

#[test]
fn runtime_killed_mid_call_is_502_then_replaced() {
    let w = TestWorker::start(&[("sleepy", SLEEPY)], &[]);
    assert_eq!(w.run("sleepy", "0").status, 200);
    let pid = w.sandbox_pids("sleepy")[0];
    let url = w.url("/run/sleepy");
    let call = thread::spawn(move || common::request("POST", &url, b"5"));
    // Let the call reach user code (it sleeps 5 s), then kill the runtime.
    thread::sleep(Duration::from_millis(300));
    kill(pid);
    let a = call.join().expect("call thread");
    assert_eq!(a.status, 502, "{}", a.body);
    let j = a.json();
    assert_eq!(j["lambda"], "sleepy");
    assert!(
        j["error"]
            .as_str()
            .is_some_and(|e| e.contains("died mid-call") && e.contains("SIGKILL")),
        "{j}"
    );
    let a = w.run("sleepy", "0");
    assert_eq!((a.status, a.body.as_str()), (200, "\"woke\""));
    let now = w.sandbox_pids("sleepy");
    assert_eq!(now.len(), 1);
    assert_ne!(now[0], pid);
}

#[test]
fn runtime_killed_while_idle_is_replaced_without_an_error() {
    let w = TestWorker::start(&[], &[]);
    assert_eq!(w.run("hello", r#"{"name": "A"}"#).status, 200);
    let pid = w.sandbox_pids("hello")[0];
    kill(pid);
    // Wait until it is really gone (its socket closes as it exits).
    assert!(eventually(Duration::from_secs(5), || {
        matches!(process_state(pid), None | Some('Z'))
    }));
    // The request never reached the dead runtime, so it is retried on a
    // fresh sandbox instead of failing.
    let a = w.run("hello", r#"{"name": "A"}"#);
    assert_eq!((a.status, a.body.as_str()), (200, "\"Hello, A!\""));
    let now = w.sandbox_pids("hello");
    assert_eq!(now.len(), 1);
    assert_ne!(now[0], pid);
}

#[test]
fn runtime_dying_mid_call_is_502_with_exit_status() {
    let w = TestWorker::start(&[("crash", CRASH)], &[]);
    assert_eq!(w.run("crash", "\"ok\"").body, "\"alive\"");
    let a = w.run("crash", "\"crash\"");
    assert_eq!(a.status, 502);
    let err = a.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("exited with status 3"), "{err}");
    assert_eq!(w.run("crash", "\"ok\"").body, "\"alive\"");
}

#[test]
fn runtime_limit_is_504_and_the_sandbox_is_replaced() {
    let w = TestWorker::start(&[("sleepy", SLEEPY)], &["limits.runtime_sec=1"]);
    assert_eq!(w.run("sleepy", "0").body, "\"woke\"");
    let before = w.sandbox_pids("sleepy");
    let a = w.run("sleepy", "5");
    assert_eq!(a.status, 504, "{}", a.body);
    assert_eq!(a.json()["error"], "lambda exceeded its runtime limit of 1s");
    let a = w.run("sleepy", "0");
    assert_eq!((a.status, a.body.as_str()), (200, "\"woke\""));
    assert_ne!(w.sandbox_pids("sleepy"), before);
}

#[test]
fn body_over_limit_is_413() {
    let w = TestWorker::start(&[], &["limits.max_body_mb=1"]);
    let big = "x".repeat((1 << 20) + 1);
    let a = w.run("echo", &big);
    assert_eq!(a.status, 413, "{}", a.body);
    let fits = format!("\"{}\"", "y".repeat((1 << 20) - 2));
    let a = w.run("echo", &fits);
    assert_eq!(a.status, 200);
    assert_eq!(a.body, fits);
}

#[test]
fn fifty_concurrent_calls_all_succeed() {
    let w = TestWorker::start(&[], &[]);
    let answers: Vec<(usize, u16, String)> = thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let w = &w;
                s.spawn(move || {
                    let a = w.run("echo", &format!(r#"{{"i": {i}}}"#));
                    (i, a.status, a.body)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    for (i, status, body) in answers {
        assert_eq!(status, 200, "call {i}: {body}");
        assert_eq!(body, format!(r#"{{"i": {i}}}"#));
    }
    let sandboxes = w.sandbox_pids("echo").len();
    assert!((1..=8).contains(&sandboxes), "{sandboxes} sandboxes");
}

#[test]
fn down_stops_everything() {
    let mut w = TestWorker::start(&[], &[]);
    for lambda in ["hello", "hello-legacy"] {
        assert_eq!(w.run(lambda, r#"{"name": "x"}"#).status, 200);
    }
    assert!(common::processes_mentioning(w.path()).len() >= 3);
    w.down();
    // `down` on a stopped worker is harmless.
    let out = ol(w.path(), &["worker", "down"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no worker was running"));
}

#[test]
fn force_cleanup_after_kill_9_leaves_nothing() {
    let mut w = TestWorker::start(&[("sleepy", SLEEPY)], &[]);
    assert_eq!(w.run("hello", r#"{"name": "x"}"#).status, 200);
    // A call in flight when the worker dies.
    let url = w.url("/run/sleepy");
    let inflight = thread::spawn(move || {
        let _ = std::panic::catch_unwind(|| common::request("POST", &url, b"30"));
    });
    assert!(eventually(Duration::from_secs(10), || w
        .sandbox_pids("sleepy")
        .len()
        == 1));
    let worker = w.worker_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill worker");
    let out = ol(w.path(), &["worker", "force-cleanup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_no_processes(w.path());
    assert!(!w.path().join("worker/worker.pid").exists());
    let scratch: Vec<_> = std::fs::read_dir(w.path().join("worker/scratch"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(scratch.is_empty(), "{scratch:?}");
    inflight.join().expect("in-flight thread");
    // The directory is usable again.
    let out = ol(w.path(), &["worker", "up", "-d", "-o", "worker_port=0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    w.port = std::fs::read_to_string(w.path().join("worker/worker.port"))
        .expect("port")
        .trim()
        .parse()
        .expect("port number");
    assert_eq!(w.run("hello", r#"{"name": "y"}"#).body, "\"Hello, y!\"");
    w.down();
}

#[test]
fn up_refuses_second_worker_and_taken_port() {
    let w = TestWorker::start(&[], &[]);
    let out = ol(w.path(), &["worker", "up", "-d"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already runs"), "{}", stderr(&out));

    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let other = tempfile::tempdir().expect("tempdir");
    let out = ol(other.path(), &["worker", "init"]);
    assert!(out.status.success());
    let port_opt = format!("worker_port={port}");
    let out = ol(other.path(), &["worker", "up", "-d", "-o", &port_opt]);
    assert!(!out.status.success());
    let msg = stderr(&out);
    assert!(msg.contains("port is taken"), "{msg}");
    assert_no_processes(other.path());
}

#[test]
fn bad_config_and_overrides_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(ol(dir.path(), &["worker", "init"]).status.success());
    let out = ol(dir.path(), &["worker", "up", "-o", "limits.mem_gb=1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("mem_gb"), "{}", stderr(&out));
    let out = ol(dir.path(), &["worker", "up", "-o", "worker_port=http"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("worker_port"), "{}", stderr(&out));
    let out = ol(dir.path(), &["worker", "up", "-o", "noequals"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("key=value"), "{}", stderr(&out));
    std::fs::write(dir.path().join("config.json"), r#"{"surprise": true}"#).expect("write");
    let out = ol(dir.path(), &["worker", "up"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("surprise"), "{}", stderr(&out));
    assert_no_processes(dir.path());
}

#[test]
fn status_shows_pid_port_lambdas_and_sandboxes() {
    let w = TestWorker::start(&[], &[]);
    assert_eq!(w.run("hello", r#"{"name": "x"}"#).status, 200);
    let out = ol(w.path(), &["worker", "status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("pid:         {}", w.worker_pid())),
        "{text}"
    );
    assert!(
        text.contains(&format!("http://127.0.0.1:{}", w.port)),
        "{text}"
    );
    assert!(text.contains("hello (1 idle)"), "{text}");
    let sandbox = w.sandbox_pids("hello")[0];
    assert!(text.contains(&format!("pid {sandbox}")), "{text}");

    let idle = tempfile::tempdir().expect("tempdir");
    let out = ol(idle.path(), &["worker", "status"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no worker is running"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn up_initializes_a_missing_dir_and_lambda_added_later_is_found() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("fresh");
    let out = ol(&dir, &["worker", "up", "-d", "-o", "worker_port=0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let port: u16 = std::fs::read_to_string(dir.join("worker/worker.port"))
        .expect("port")
        .trim()
        .parse()
        .expect("port number");
    add_lambda(&dir, "late", &[("f.py", "def f(e):\n    return 'late'\n")]);
    let a = common::request("POST", &format!("http://127.0.0.1:{port}/run/late"), b"");
    assert_eq!((a.status, a.body.as_str()), (200, "\"late\""));
    assert!(ol(&dir, &["worker", "down"]).status.success());
    assert_no_processes(&dir);
}

/// The state letter of a process (`R`, `S`, `T` stopped...) from
/// /proc/PID/stat.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

#[test]
fn idle_sandbox_is_paused_and_thawed_on_the_next_call() {
    let w = TestWorker::start(&[], &["sandbox=process", "pause_after_idle_ms=100"]);
    assert_eq!(w.run("hello", r#"{"name": "a"}"#).status, 200);
    let pid = w.sandbox_pids("hello")[0];
    assert!(
        eventually(Duration::from_secs(5), || w.stats()["pauses"] == 1),
        "{}",
        w.stats()
    );
    assert_eq!(process_state(pid), Some('T'), "SIGSTOPped while idle");
    let a = w.run("hello", r#"{"name": "b"}"#);
    assert_eq!((a.status, a.body.as_str()), (200, "\"Hello, b!\""));
    assert_eq!(
        w.sandbox_pids("hello"),
        vec![pid],
        "the same sandbox, thawed"
    );
}

#[test]
fn back_to_back_calls_never_pause() {
    let w = TestWorker::start(&[], &["sandbox=process", "pause_after_idle_ms=300"]);
    let deadline = std::time::Instant::now() + Duration::from_millis(900);
    while std::time::Instant::now() < deadline {
        assert_eq!(w.run("hello", r#"{"name": "a"}"#).status, 200);
    }
    assert_eq!(w.stats()["pauses"], 0);
}

#[test]
fn full_memory_pool_evicts_idle_sandboxes_and_waits_for_busy_ones() {
    let w = TestWorker::start(
        &[("sleepy", SLEEPY)],
        &[
            "mem_pool_mb=100",
            "limits.mem_mb=50",
            "pause_after_idle_ms=0",
        ],
    );
    // Two sandboxes fill the pool; a third lambda evicts the longest idle.
    assert_eq!(w.run("hello", r#"{"name": "a"}"#).status, 200);
    assert_eq!(w.run("hello-legacy", r#"{"name": "a"}"#).status, 200);
    assert_eq!(w.run("echo", "1").body, "1");
    let stats = w.stats();
    assert_eq!(stats["evictions"], 1, "{stats}");
    assert_eq!(stats["mem_pool_used_mb"], 100);
    assert!(w.sandbox_pids("hello").is_empty(), "hello was idle longest");

    // With both sandboxes busy, a new one waits for one to finish.
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let url = w.url("/run/sleepy");
            thread::spawn(move || common::request("POST", &url, b"1").status)
        })
        .collect();
    assert!(eventually(Duration::from_secs(10), || w
        .sandbox_pids("sleepy")
        .len()
        == 2));
    let a = w.run("hello", r#"{"name": "late"}"#);
    assert_eq!((a.status, a.body.as_str()), (200, "\"Hello, late!\""));
    for b in busy {
        assert_eq!(b.join().expect("thread"), 200);
    }
    assert_eq!(w.stats()["mem_pool_used_mb"], 100);
}

#[test]
fn process_backend_serves_raises_dies_and_recovers() {
    let mut w = TestWorker::start(&[("boom", BOOM), ("crash", CRASH)], &["sandbox=process"]);
    let a = w.run("hello", r#"{"name": "P"}"#);
    assert_eq!((a.status, a.body.as_str()), (200, "\"Hello, P!\""));
    let a = w.run("boom", "{}");
    assert_eq!(a.status, 500);
    assert_eq!(a.json()["error"], "ZeroDivisionError: division by zero");
    let a = w.run("crash", "\"crash\"");
    assert_eq!(a.status, 502);
    assert!(
        a.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("exited with status 3")),
        "{}",
        a.body
    );
    assert_eq!(w.run("crash", "\"ok\"").body, "\"alive\"");
    w.down();
}

const ENV_LAMBDA: &str =
    "import os\n\ndef f(event):\n    return [os.environ.get('GREETING'), os.environ.get('PORT')]\n";

#[test]
fn ol_yaml_methods_environment_and_limits() {
    let yaml = "triggers:\n  http: [{method: get}, {method: POST}]\nenvironment: {GREETING: hi, PORT: 8080}\nlimits: {runtime_sec: 1}\n";
    let w = TestWorker::start(
        &[
            ("env", &[("f.py", ENV_LAMBDA), ("ol.yaml", yaml)]),
            ("sleepy", SLEEPY),
        ],
        &[],
    );
    let a = w.call("GET", "/run/env", "");
    assert_eq!((a.status, a.body.as_str()), (200, r#"["hi", "8080"]"#));
    let a = w.call("DELETE", "/run/env", "");
    assert_eq!(a.status, 405, "{}", a.body);
    assert_eq!(
        a.json()["error"],
        "method DELETE is not allowed for lambda env (ol.yaml allows: GET, POST)"
    );
    // The lambda's own runtime limit (1 s) applies, below the worker's 30 s.
    add_lambda(
        w.path(),
        "sleepy",
        &[("ol.yaml", "limits: {runtime_sec: 1}\n")],
    );
    let a = w.run("sleepy", "3");
    assert_eq!(a.status, 504, "{}", a.body);
    assert_eq!(a.json()["error"], "lambda exceeded its runtime limit of 1s");
}

#[test]
fn bad_ol_yaml_is_500_naming_the_key_and_a_fix_is_picked_up() {
    let w = TestWorker::start(
        &[(
            "conf",
            &[
                ("f.py", "def f(e):\n    return 'ok'\n"),
                ("ol.yaml", "limit: {mem_mb: 10}\n"),
            ],
        )],
        &[],
    );
    let a = w.run("conf", "{}");
    assert_eq!(a.status, 500, "{}", a.body);
    let err = a.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("ol.yaml") && err.contains("limit"), "{err}");
    let a = w.run("conf", "{}");
    assert_eq!(a.status, 500, "still broken");
    add_lambda(
        w.path(),
        "conf",
        &[("ol.yaml", "limits: {mem_mb: 100000}\n")],
    );
    let a = w.run("conf", "{}");
    assert_eq!(a.status, 500);
    assert!(
        a.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("limits.mem_mb")),
        "{}",
        a.body
    );
    add_lambda(w.path(), "conf", &[("ol.yaml", "limits: {mem_mb: 40}\n")]);
    let a = w.run("conf", "{}");
    assert_eq!((a.status, a.body.as_str()), (200, "\"ok\""));
}
