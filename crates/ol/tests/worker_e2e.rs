//! End-to-end tests: a real worker started by the real `ol` binary, real
//! Python lambdas, exact answers, and nothing left behind afterwards. Each
//! runs on both backends (`NAME::sock`, which needs root, and
//! `NAME::process`) unless it is about one of them.

mod common;

use std::fs;
use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use common::{
    Backend, TestWorker, add_lambda, assert_no_processes, eventually, ol, on_both_backends, stderr,
};

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

on_both_backends!(hello_lambdas_answer_exactly);
fn hello_lambdas_answer_exactly(backend: Backend) {
    let w = TestWorker::start(backend, &[], &[]);
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

on_both_backends!(wsgi_app_passes_status_headers_and_body);
fn wsgi_app_passes_status_headers_and_body(backend: Backend) {
    let w = TestWorker::start(backend, &[("teapot", WSGI)], &[]);
    let a = w.call("GET", "/run/teapot/some/path?x=1", "");
    assert_eq!((a.status, a.body.as_str()), (418, "hi\n"));
    assert!(
        a.headers.iter().any(|(k, v)| k == "a" && v == "B"),
        "{:?}",
        a.headers
    );
}

on_both_backends!(unknown_lambda_and_route_are_404_json);
fn unknown_lambda_and_route_are_404_json(backend: Backend) {
    let w = TestWorker::start(backend, &[], &[]);
    let a = w.run("nope", "{}");
    assert_eq!(a.status, 404);
    let j = a.json();
    assert_eq!(j["lambda"], "nope");
    assert_eq!(j["error"], "no lambda named \"nope\" in the registry");
    assert_eq!(w.call("GET", "/elsewhere", "").status, 404);
    let a = w.run("bad.name", "{}");
    assert_eq!(a.status, 400, "{}", a.body);
}

on_both_backends!(raising_lambda_is_500_with_message_and_others_unharmed);
fn raising_lambda_is_500_with_message_and_others_unharmed(backend: Backend) {
    let w = TestWorker::start(backend, &[("boom", BOOM)], &[]);
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

on_both_backends!(lambda_that_fails_to_load_is_500_naming_the_error);
fn lambda_that_fails_to_load_is_500_naming_the_error(backend: Backend) {
    let w = TestWorker::start(backend, &[("broken", BROKEN)], &[]);
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

on_both_backends!(runtime_killed_mid_call_is_502_then_replaced);
fn runtime_killed_mid_call_is_502_then_replaced(backend: Backend) {
    let w = TestWorker::start(backend, &[("sleepy", SLEEPY)], &[]);
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

on_both_backends!(runtime_killed_while_idle_is_replaced_without_an_error);
fn runtime_killed_while_idle_is_replaced_without_an_error(backend: Backend) {
    let w = TestWorker::start(backend, &[], &[]);
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

on_both_backends!(runtime_dying_mid_call_is_502_with_exit_status);
fn runtime_dying_mid_call_is_502_with_exit_status(backend: Backend) {
    let w = TestWorker::start(backend, &[("crash", CRASH)], &[]);
    assert_eq!(w.run("crash", "\"ok\"").body, "\"alive\"");
    let a = w.run("crash", "\"crash\"");
    assert_eq!(a.status, 502);
    let err = a.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("exited with status 3"), "{err}");
    assert_eq!(w.run("crash", "\"ok\"").body, "\"alive\"");
}

on_both_backends!(runtime_limit_is_504_and_the_sandbox_is_replaced);
fn runtime_limit_is_504_and_the_sandbox_is_replaced(backend: Backend) {
    let w = TestWorker::start(backend, &[("sleepy", SLEEPY)], &["limits.runtime_sec=1"]);
    assert_eq!(w.run("sleepy", "0").body, "\"woke\"");
    let before = w.sandbox_pids("sleepy");
    let a = w.run("sleepy", "5");
    assert_eq!(a.status, 504, "{}", a.body);
    assert_eq!(a.json()["error"], "lambda exceeded its runtime limit of 1s");
    let a = w.run("sleepy", "0");
    assert_eq!((a.status, a.body.as_str()), (200, "\"woke\""));
    assert_ne!(w.sandbox_pids("sleepy"), before);
}

on_both_backends!(body_over_limit_is_413);
fn body_over_limit_is_413(backend: Backend) {
    let w = TestWorker::start(backend, &[], &["limits.max_body_mb=1"]);
    let big = "x".repeat((1 << 20) + 1);
    let a = w.run("echo", &big);
    assert_eq!(a.status, 413, "{}", a.body);
    let fits = format!("\"{}\"", "y".repeat((1 << 20) - 2));
    let a = w.run("echo", &fits);
    assert_eq!(a.status, 200);
    assert_eq!(a.body, fits);
}

on_both_backends!(fifty_concurrent_calls_all_succeed);
fn fifty_concurrent_calls_all_succeed(backend: Backend) {
    let w = TestWorker::start(backend, &[], &[]);
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
    // The worker's descriptor table was made large at start, while it had
    // one thread (growing it later stalls every thread: `presize_fd_table`).
    let table = common::proc_status(w.worker_pid(), "FDSize");
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).expect("limit");
    assert!(table >= hard.min(16 * 1024), "table of {table} descriptors");
}

on_both_backends!(down_stops_everything);
fn down_stops_everything(backend: Backend) {
    let mut w = TestWorker::start(backend, &[], &[]);
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

on_both_backends!(force_cleanup_after_kill_9_leaves_nothing);
fn force_cleanup_after_kill_9_leaves_nothing(backend: Backend) {
    let mut w = TestWorker::start(backend, &[("sleepy", SLEEPY)], &[]);
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
    // Both backends' cleanup waits for the sandboxes it killed to be gone
    // (sock: each cgroup empties; process: each process group exits).
    assert_no_processes(w.path());
    assert!(!w.path().join("worker/worker.pid").exists());
    let scratch: Vec<_> = fs::read_dir(w.path().join("worker/scratch"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(scratch.is_empty(), "{scratch:?}");
    inflight.join().expect("in-flight thread");
    // The directory is usable again.
    w.up(&[]);
    assert_eq!(w.run("hello", r#"{"name": "y"}"#).body, "\"Hello, y!\"");
    w.down();
}

on_both_backends!(up_refuses_second_worker_and_taken_port);
fn up_refuses_second_worker_and_taken_port(backend: Backend) {
    let w = TestWorker::start(backend, &[], &[]);
    let out = ol(w.path(), &["worker", "up", "-d", "-o", backend.option()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already runs"), "{}", stderr(&out));

    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let other = tempfile::tempdir().expect("tempdir");
    let out = ol(other.path(), &["worker", "init"]);
    assert!(out.status.success());
    let port_opt = format!("worker_port={port}");
    let out = ol(
        other.path(),
        &[
            "worker",
            "up",
            "-d",
            "-o",
            &port_opt,
            "-o",
            backend.option(),
        ],
    );
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
    fs::write(dir.path().join("config.json"), r#"{"surprise": true}"#).expect("write");
    let out = ol(dir.path(), &["worker", "up"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("surprise"), "{}", stderr(&out));
    assert_no_processes(dir.path());
}

on_both_backends!(status_shows_pid_port_lambdas_and_sandboxes);
fn status_shows_pid_port_lambdas_and_sandboxes(backend: Backend) {
    let w = TestWorker::start(backend, &[], &[]);
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

    // A worker dir with no worker, and a dir that is none.
    let idle = tempfile::tempdir().expect("tempdir");
    let out = ol(idle.path(), &["worker", "init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ol(idle.path(), &["worker", "status"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no worker is running"),
        "{}",
        stderr(&out)
    );
    let empty = tempfile::tempdir().expect("tempdir");
    let out = ol(empty.path(), &["worker", "status"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no worker directory at"),
        "{}",
        stderr(&out)
    );
}

on_both_backends!(up_initializes_a_missing_dir_and_lambda_added_later_is_found);
fn up_initializes_a_missing_dir_and_lambda_added_later_is_found(backend: Backend) {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("fresh");
    let out = common::up_detached(&dir, backend, &[], &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut w = TestWorker::adopt_at(backend, parent, dir);
    add_lambda(
        w.path(),
        "late",
        &[("f.py", "def f(e):\n    return 'late'\n")],
    );
    let a = w.run("late", "");
    assert_eq!((a.status, a.body.as_str()), (200, "\"late\""));
    w.down();
}

/// The state letter of a process (`R`, `S`, `T` stopped...) from
/// /proc/PID/stat.
fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// Process sandboxes pause by SIGSTOP; sock_e2e.rs has the sock backend's
/// cgroup freezer.
#[test]
fn idle_process_sandbox_is_stopped_and_continued_on_the_next_call() {
    let w = TestWorker::start(Backend::Process, &[], &["pause_after_idle_ms=100"]);
    assert_eq!(w.run("hello", r#"{"name": "a"}"#).status, 200);
    let pid = w.sandbox_pids("hello")[0];
    assert!(
        eventually(Duration::from_secs(5), || w.stats()["pauses"] == 1),
        "{}",
        w.stats()
    );
    // SIGSTOP is delivered asynchronously: the count can come first.
    assert!(
        eventually(Duration::from_secs(5), || process_state(pid) == Some('T')),
        "SIGSTOPped while idle: {:?}",
        process_state(pid)
    );
    let a = w.run("hello", r#"{"name": "b"}"#);
    assert_eq!((a.status, a.body.as_str()), (200, "\"Hello, b!\""));
    assert_eq!(
        w.sandbox_pids("hello"),
        vec![pid],
        "the same sandbox, thawed"
    );
}

on_both_backends!(back_to_back_calls_never_pause);
fn back_to_back_calls_never_pause(backend: Backend) {
    let w = TestWorker::start(backend, &[], &["pause_after_idle_ms=300"]);
    let deadline = std::time::Instant::now() + Duration::from_millis(900);
    while std::time::Instant::now() < deadline {
        assert_eq!(w.run("hello", r#"{"name": "a"}"#).status, 200);
    }
    assert_eq!(w.stats()["pauses"], 0);
}

on_both_backends!(full_memory_pool_evicts_idle_sandboxes_and_waits_for_busy_ones);
fn full_memory_pool_evicts_idle_sandboxes_and_waits_for_busy_ones(backend: Backend) {
    let w = TestWorker::start(
        backend,
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

const ENV_LAMBDA: &str =
    "import os\n\ndef f(event):\n    return [os.environ.get('GREETING'), os.environ.get('PORT')]\n";

on_both_backends!(ol_yaml_methods_environment_and_limits);
fn ol_yaml_methods_environment_and_limits(backend: Backend) {
    let yaml = "triggers:\n  http: [{method: get}, {method: POST}]\nenvironment: {GREETING: hi, PORT: 8080}\nlimits: {runtime_sec: 1}\n";
    let w = TestWorker::start(
        backend,
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

on_both_backends!(bad_ol_yaml_is_500_naming_the_key_and_a_fix_is_picked_up);
fn bad_ol_yaml_is_500_naming_the_key_and_a_fix_is_picked_up(backend: Backend) {
    let w = TestWorker::start(
        backend,
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

on_both_backends!(cron_lambda_fires_within_a_second_of_its_minute);
fn cron_lambda_fires_within_a_second_of_its_minute(backend: Backend) {
    let tick = "import json, time\n\ndef f(event):\n    print(json.dumps({'at': time.time(), 'event': event}))\n    return 'ticked'\n";
    let w = TestWorker::start(
        backend,
        &[(
            "tick",
            &[
                ("f.py", tick),
                // Cron calls are not HTTP calls: the method list does not
                // stop them.
                (
                    "ol.yaml",
                    "triggers:\n  http: [{method: GET}]\n  cron: [{schedule: '* * * * *'}]\n",
                ),
            ],
        )],
        &[],
    );
    let fired = || -> Option<String> {
        fs::read_dir(w.path().join("worker/scratch"))
            .ok()?
            .flatten()
            // Blanks made ahead have scratch dirs with empty logs too.
            .find_map(|e| {
                fs::read_to_string(e.path().join("stdout"))
                    .ok()
                    .filter(|out| !out.is_empty())
            })
    };
    assert!(
        eventually(Duration::from_secs(75), || fired().is_some()),
        "the cron lambda never ran"
    );
    let line = fired().expect("fired");
    let first: serde_json::Value =
        serde_json::from_str(line.lines().next().expect("a line")).expect("json");
    let at = first["at"].as_f64().expect("time");
    let minute = first["event"]["time"].as_f64().expect("event time");
    assert_eq!(minute % 60.0, 0.0, "{first}");
    assert_eq!(first["event"]["trigger"], "cron");
    assert!(
        (0.0..1.0).contains(&(at - minute)),
        "fired {:.3} s after its minute",
        at - minute
    );
}
