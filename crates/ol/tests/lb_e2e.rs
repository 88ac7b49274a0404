//! End-to-end tests of `ol lb`, as a user runs it: three workers behind
//! `ol lb up`; calls passing through unchanged and the balancer's own
//! errors as JSON; `name` keeping each lambda on one worker and spilling
//! over under load; a worker killed mid-load (no failed call but those
//! in flight, out within a second) and rejoining when it comes back;
//! `content` keyed on a JSON field; `status`; `ol cluster workers
//! --lb-port`; and no process left after `down` (even after the
//! supervisor was killed); workers found as they start, and a JSON 503
//! while none is up. HAProxy must be installed (`.ci/run` does).
//! All traffic goes to 127.0.0.1; every load loop is bounded in calls
//! and time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::lb::{TestLb, ol_lb, stdout};
use common::{
    Answer, Backend, TestWorker, eventually, free_ports, ol_bin, on_both_backends,
    processes_mentioning, request, request_with, stderr, try_request, up_detached,
};

/// `ol cluster ARGS... --cluster ROOT`, which must succeed; its output.
fn ol_cluster_ok(root: &Path, args: &[&str]) -> String {
    let out = Command::new(ol_bin())
        .arg("cluster")
        .args(args)
        .arg("--cluster")
        .arg(root)
        .output()
        .expect("run ol");
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

/// A lambda that says which worker ran it: worker `n`'s copy of `who`.
fn who(n: usize) -> String {
    format!(
        "import time\ndef f(event):\n    time.sleep(event.get('sleep', 0) if isinstance(event, dict) else 0)\n    return {{'worker': {n}, 'event': event}}\n"
    )
}

/// A WSGI app that sends back what it was sent.
const MIRROR: &str = r#"
import json
def app(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    seen = {
        "method": environ["REQUEST_METHOD"],
        "path": environ.get("PATH_INFO", ""),
        "query": environ.get("QUERY_STRING", ""),
        "header": environ.get("HTTP_X_TEST", ""),
        "body": body.decode(),
    }
    start_response("201 Created", [("Content-Type", "application/json"), ("X-Mirror", "yes")])
    return [json.dumps(seen).encode()]
"#;

/// Three workers on `backend`, worker `n` holding `who` (saying `n`),
/// `mirror` and the lambdas `f0`..`f11` (each saying its worker too).
fn three_workers(backend: Backend) -> Vec<TestWorker> {
    (0..3)
        .map(|n| {
            let code = who(n);
            let names: Vec<String> = (0..12).map(|i| format!("f{i}")).collect();
            let mut lambdas: Vec<(&str, &[(&str, &str)])> = Vec::new();
            let files = [("f.py", code.as_str())];
            lambdas.push(("who", &files));
            let mirror = [("app.py", MIRROR)];
            lambdas.push(("mirror", &mirror));
            for name in &names {
                lambdas.push((name.as_str(), &files));
            }
            TestWorker::start(backend, &lambdas, &[])
        })
        .collect()
}

/// Three workers on the process backend and a balancer with `args` in
/// front of them.
fn behind_lb(args: &[&str]) -> (Vec<TestWorker>, TestLb) {
    let workers = three_workers(Backend::Process);
    let refs: Vec<&TestWorker> = workers.iter().collect();
    let lb = TestLb::up(&refs, args);
    (workers, lb)
}

/// Sends SIGKILL to `pid`.
fn sigkill(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL");
}

/// Which worker answered a call of `who` (or `f<i>`).
fn worker_of(a: &Answer) -> usize {
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["worker"].as_u64().expect("worker") as usize
}

/// The lambdas each worker has sandboxes of.
fn warm(workers: &[TestWorker]) -> Vec<BTreeSet<String>> {
    workers
        .iter()
        .map(|w| {
            w.stats()["sandboxes"]
                .as_array()
                .expect("sandboxes")
                .iter()
                .map(|s| s["lambda"].as_str().expect("lambda").to_string())
                .collect()
        })
        .collect()
}

#[test]
fn calls_pass_through_unchanged_and_the_balancers_errors_are_json() {
    let (workers, mut lb) = behind_lb(&["--policy", "round-robin"]);

    // Method, path, query, headers and body reach the lambda as sent;
    // its status, headers and body come back as it sent them.
    let through = request_with(
        "PUT",
        &lb.url("/run/mirror/a/b?x=1&y=2"),
        &[("X-Test", "hello"), ("Content-Type", "text/plain")],
        b"raw body \x01",
    );
    let direct = request_with(
        "PUT",
        &workers[0].url("/run/mirror/a/b?x=1&y=2"),
        &[("X-Test", "hello"), ("Content-Type", "text/plain")],
        b"raw body \x01",
    );
    assert_eq!(through.status, 201, "{}", through.body);
    assert_eq!(through.json(), direct.json());
    assert_eq!(through.json()["method"], "PUT");
    assert_eq!(through.json()["path"], "/a/b");
    assert_eq!(through.json()["query"], "x=1&y=2");
    assert_eq!(through.json()["header"], "hello");
    assert_eq!(through.json()["body"], "raw body \u{1}");
    assert!(
        through
            .headers
            .iter()
            .any(|(k, v)| k == "x-mirror" && v == "yes")
    );
    // OpenLambda's alias passes too.
    let a = request("POST", &lb.url("/runLambda/who"), br#"{"k": 1}"#);
    assert_eq!(a.json()["event"]["k"], 1);

    // Round-robin: every worker takes calls.
    let seen: BTreeSet<usize> = (0..9).map(|_| worker_of(&lb.run("who", "{}"))).collect();
    assert_eq!(seen, BTreeSet::from([0, 1, 2]));

    // A worker's error passes as it is (JSON naming the lambda) ...
    let a = lb.run("no-such-lambda", "{}");
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(a.json()["lambda"], "no-such-lambda");
    // ... and the balancer's own are JSON too: admin routes are not
    // reachable through it.
    for path in ["/stats", "/registry/", "/metrics", "/"] {
        let a = request("GET", &lb.url(path), b"");
        assert_eq!(a.status, 404, "{path}: {}", a.body);
        assert!(
            a.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("/run/NAME"))
        );
    }
    let a = request("GET", &lb.url("/status"), b"");
    assert_eq!((a.status, a.body.as_str()), (200, "ready"));
    lb.down();
}

#[test]
fn name_keeps_each_lambda_on_one_worker_and_status_shows_where() {
    let (workers, mut lb) = behind_lb(&["--policy", "name"]);
    let mut home = BTreeMap::new();
    for round in 0..4 {
        for i in 0..12 {
            let lambda = format!("f{i}");
            let w = worker_of(&lb.run(&lambda, &format!(r#"{{"round": {round}}}"#)));
            assert_eq!(
                *home.entry(lambda.clone()).or_insert(w),
                w,
                "{lambda} moved"
            );
        }
    }
    let used: BTreeSet<usize> = home.values().copied().collect();
    assert!(used.len() >= 2, "12 lambdas all on one worker: {home:?}");
    // Each lambda's sandboxes are on its worker alone.
    let warm = warm(&workers);
    for (lambda, w) in &home {
        for (n, names) in warm.iter().enumerate() {
            assert_eq!(names.contains(lambda), n == *w, "{lambda}: {warm:?}");
        }
    }
    // `status` names each worker up and the lambdas it holds.
    let (ok, text) = lb.status();
    assert!(ok, "{text}");
    assert!(text.contains("policy name (epsilon 0.25)"), "{text}");
    for (n, w) in workers.iter().enumerate() {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("127.0.0.1:{} UP", w.port)))
            .unwrap_or_else(|| panic!("worker {n} not up in:\n{text}"));
        for lambda in &warm[n] {
            assert!(line.contains(lambda.as_str()), "{lambda} not in {line}");
        }
    }
    lb.down();
}

#[test]
fn name_spills_a_loaded_lambda_over_to_other_workers() {
    let (_workers, mut lb) = behind_lb(&["--policy", "name", "--epsilon", "0.25"]);
    // One at a time, the lambda stays home.
    let home = worker_of(&lb.run("who", "{}"));
    for _ in 0..5 {
        assert_eq!(worker_of(&lb.run("who", "{}")), home);
    }
    // 9 calls of 0.4 s at once: home may carry at most 1.25x the average
    // load in flight, so the rest go to the next workers on the ring.
    let port = lb.port;
    let answers: Vec<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..9)
            .map(|_| {
                s.spawn(move || {
                    let url = format!("http://127.0.0.1:{port}/run/who");
                    worker_of(&request("POST", &url, br#"{"sleep": 0.4}"#))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("caller"))
            .collect()
    });
    let by_worker: BTreeSet<usize> = answers.iter().copied().collect();
    assert!(
        by_worker.len() >= 2,
        "all 9 parallel calls on one worker: {answers:?}"
    );
    let at_home = answers.iter().filter(|w| **w == home).count();
    assert!(at_home >= 2, "home took {at_home} of 9: {answers:?}");
    // Load gone, it is home again.
    assert_eq!(worker_of(&lb.run("who", "{}")), home);
    lb.down();
}

/// One call of the load: when it started and ended, and how it went.
struct Call {
    start: Instant,
    end: Instant,
    /// 0 when the connection closed before a whole response came.
    status: u16,
    worker: Option<usize>,
}

/// Calls `f0`..`f11` through `port` from `callers` threads until `stop`
/// says so, at most `max_calls` each and never past `limit`.
fn load(
    port: u16,
    callers: usize,
    max_calls: usize,
    limit: Duration,
    stop: &Mutex<bool>,
) -> Vec<Call> {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + limit;
    std::thread::scope(|s| {
        for c in 0..callers {
            let calls = Arc::clone(&calls);
            s.spawn(move || {
                for i in 0..max_calls {
                    if *stop.lock().expect("stop") || Instant::now() >= deadline {
                        break;
                    }
                    let url = format!("http://127.0.0.1:{port}/run/f{}", (i + c) % 12);
                    let start = Instant::now();
                    // A call in flight on a worker that dies may get its
                    // connection closed by the balancer: status 0.
                    let (status, worker) = match try_request("POST", &url, b"{}") {
                        Some(a) => (a.status, (a.status == 200).then(|| worker_of(&a))),
                        None => (0, None),
                    };
                    calls.lock().expect("calls").push(Call {
                        start,
                        end: Instant::now(),
                        status,
                        worker,
                    });
                }
            });
        }
    });
    Arc::try_unwrap(calls)
        .ok()
        .expect("callers done")
        .into_inner()
        .expect("calls")
}

#[test]
fn a_killed_worker_is_out_within_a_second_and_rejoins_when_back() {
    let (mut workers, mut lb) = behind_lb(&["--policy", "round-robin"]);
    let victim_port = workers[2].port;
    let victim_pid = workers[2].worker_pid();
    let stop = Mutex::new(false);
    let killed_at = Mutex::new(None);
    let signalled_at = Mutex::new(None);
    let calls = std::thread::scope(|s| {
        let load = s.spawn(|| load(lb.port, 3, 2000, Duration::from_secs(12), &stop));
        std::thread::sleep(Duration::from_millis(1500));
        *signalled_at.lock().expect("signalled_at") = Some(Instant::now());
        sigkill(victim_pid);
        // Dead once its sockets are closed (a call sent before that was in
        // flight on it): its listener refuses connections. A zombie leader
        // is not enough: its other threads may still hold the files.
        let gone = eventually(Duration::from_secs(5), || {
            ol_sandbox::pids::process_start_time(victim_pid).is_none()
                && std::net::TcpStream::connect(("127.0.0.1", victim_port)).is_err()
        });
        *killed_at.lock().expect("killed_at") = Some(Instant::now());
        assert!(gone, "the worker outlived SIGKILL");
        std::thread::sleep(Duration::from_millis(2500));
        *stop.lock().expect("stop") = true;
        load.join().expect("load")
    });
    let killed_at = killed_at.into_inner().expect("killed_at").expect("killed");
    assert!(calls.len() > 50, "only {} calls in 4 s", calls.len());
    let before = calls
        .iter()
        .filter(|c| c.end < killed_at)
        .collect::<Vec<_>>();
    assert!(
        before.iter().any(|c| c.worker == Some(2)),
        "worker 2 took no call before"
    );
    // Failures: only calls in flight when it died.
    for c in calls.iter().filter(|c| c.status != 200) {
        assert!(
            c.start <= killed_at,
            "a call started {:?} after the kill failed with {}",
            c.start - killed_at,
            c.status
        );
    }
    // Calls sent between SIGKILL and the process's death went to a dying
    // worker (under load it can take a few hundred ms to exit while its
    // socket still accepts): they were in flight on it too. Before the
    // signal, at most one call per caller was.
    let signalled_at = signalled_at
        .into_inner()
        .expect("signalled_at")
        .expect("signalled");
    let failed = calls
        .iter()
        .filter(|c| c.status != 200 && c.start < signalled_at)
        .count();
    let last_to_dead = calls
        .iter()
        .filter(|c| c.worker == Some(2))
        .map(|c| c.start)
        .max()
        .map(|t| t.saturating_duration_since(killed_at));
    eprintln!(
        "{} calls, {failed} sent before the kill failed; the last call the dead worker answered started {last_to_dead:?} after the kill",
        calls.len()
    );
    assert!(
        failed <= 3,
        "{failed} calls sent before the kill failed, with 3 callers"
    );
    // A second after, it gets nothing.
    let late = killed_at + Duration::from_secs(1);
    assert!(
        calls
            .iter()
            .filter(|c| c.start >= late)
            .all(|c| c.status == 200 && c.worker != Some(2)),
        "calls reached the dead worker after a second"
    );
    assert!(calls.iter().filter(|c| c.start >= late).count() > 10);
    let (ok, text) = lb.status();
    assert!(!ok, "status succeeded with a worker down:\n{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{victim_port} DOWN")),
        "{text}"
    );

    // It comes back on its port: it takes calls again.
    let dead = &mut workers[2];
    let out = common::ol(dead.path(), &["worker", "force-cleanup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let port = format!("worker_port={victim_port}");
    let out = up_detached(dead.path(), Backend::Process, &[&port], &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let restarted = Instant::now();
    let back = eventually(Duration::from_secs(5), || {
        (0..6).any(|_| worker_of(&lb.run("who", "{}")) == 2)
    });
    assert!(back, "the worker that came back got no call");
    eprintln!(
        "back on its port, it took a call {:?} after it served",
        restarted.elapsed()
    );
    let (ok, text) = lb.status();
    assert!(ok, "{text}");
    lb.down();
}

#[test]
fn content_keeps_each_user_on_one_worker_by_a_json_field() {
    let (_workers, mut lb) = behind_lb(&["--policy", "content", "--key", "json:user"]);
    let mut home = BTreeMap::new();
    for round in 0..3 {
        for user in 0..12 {
            // Other fields, and the lambda, change; the user does not.
            let lambda = format!("f{}", (user + round) % 12);
            let body =
                format!(r#"{{"round": {round}, "user": "u{user}", "data": [1, {{"user": "x"}}]}}"#);
            let a = lb.run(&lambda, &body);
            let w = worker_of(&a);
            assert_eq!(a.json()["event"]["user"], format!("u{user}"));
            assert_eq!(*home.entry(user).or_insert(w), w, "user {user} moved");
        }
    }
    let used: BTreeSet<usize> = home.values().copied().collect();
    assert!(used.len() >= 2, "12 users all on one worker: {home:?}");
    // A body without the field still gets an answer.
    assert_eq!(lb.run("who", r#"{"other": 1}"#).status, 200);
    assert_eq!(lb.run("who", "not json").status, 200);
    lb.down();
}

#[test]
fn bad_arguments_fail_saying_what_to_do() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("lb");
    let d = dir.to_string_lossy().into_owned();
    let cases: &[(&[&str], &str)] = &[
        (
            &["up", "-p", &d, "--workers", "127.0.0.1:1"],
            "http://HOST:PORT",
        ),
        (
            &[
                "up",
                "-p",
                &d,
                "--workers",
                "http://127.0.0.1:1",
                "--policy",
                "content",
            ],
            "--key",
        ),
        (
            &[
                "up",
                "-p",
                &d,
                "--workers",
                "http://127.0.0.1:1",
                "--epsilon",
                "20",
            ],
            "--epsilon",
        ),
        (&["status", "-p", &d], "ol lb up"),
    ];
    for (args, says) in cases {
        let out = ol_lb(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    let out = ol_lb(&["down", "-p", &d]);
    assert!(out.status.success() && stdout(&out).contains("no balancer runs"));
    // A port already taken: the start fails, quoting HAProxy, and
    // nothing is left running.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let out = ol_lb(&[
        "up",
        "-d",
        "-p",
        &d,
        "--port",
        &port,
        "--workers",
        "http://127.0.0.1:1",
    ]);
    assert!(!out.status.success(), "started on a taken port");
    let said = stderr(&out);
    assert!(
        said.contains("cannot bind") && said.contains(&format!("port {port} taken")),
        "{said}"
    );
    assert!(
        processes_mentioning(&dir).is_empty(),
        "{:?}",
        processes_mentioning(&dir)
    );
    assert!(!dir.join("lb.json").exists());
}

#[test]
fn down_stops_the_engine_even_after_the_supervisor_was_killed() {
    let workers = three_workers(Backend::Process);
    let mut lb = TestLb::up(&[&workers[0]], &[]);
    assert_eq!(worker_of(&lb.run("who", "{}")), 0);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lb.dir.join("lb.json")).expect("lb.json"))
            .expect("state");
    let engine = lb.engine_pid();
    sigkill(state["pid"].as_u64().expect("pid") as u32);
    assert!(Path::new(&format!("/proc/{engine}")).exists());
    lb.down();
    assert!(processes_mentioning(&lb.dir).is_empty());
}

#[test]
fn a_dead_engine_is_started_again() {
    let (workers, mut lb) = behind_lb(&[]);
    assert_eq!(
        worker_of(&lb.run("who", "{}")),
        worker_of(&lb.run("who", "{}"))
    );
    let first = lb.engine_pid();
    sigkill(first);
    let again = eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(lb.dir.join("haproxy.pid"))
            .is_ok_and(|p| p.trim() != first.to_string())
            && std::net::TcpStream::connect(("127.0.0.1", lb.port)).is_ok()
            && request("GET", &lb.url("/status"), b"").status == 200
    });
    assert!(again, "HAProxy was not started again");
    let a = lb.run("who", "{}");
    assert!(worker_of(&a) < workers.len());
    lb.down();
}

on_both_backends!(cluster_workers_start_a_balancer_and_kill_stops_it);
fn cluster_workers_start_a_balancer_and_kill_stops_it(backend: Backend) {
    let tmp = tempfile::Builder::new()
        .prefix("ol-lb-cluster-e2e-")
        .tempdir()
        .expect("tempdir");
    let root = tmp.path().join("cluster");
    let cluster = |args: &[&str]| ol_cluster_ok(&root, args);
    cluster(&["new"]);
    let sandbox = match backend {
        Backend::Sock => "sock",
        Backend::Process => "process",
    };
    cluster(&["setconf", &format!(r#"{{"sandbox": "{sandbox}"}}"#)]);
    let first = free_ports(4);
    let lb_port = (first + 3).to_string();
    let said = cluster(&[
        "workers",
        "--num-workers",
        "3",
        "--port",
        &first.to_string(),
        "--lb-port",
        &lb_port,
    ]);
    assert!(said.contains("lb started"), "{said}");
    let lb_dir = root.join("workers/lb");
    let killed = std::panic::catch_unwind(|| {
        let url = format!("http://127.0.0.1:{lb_port}/run/hello");
        for _ in 0..6 {
            let a = request("POST", &url, br#"{"name": "Ada"}"#);
            assert_eq!((a.status, a.body.as_str()), (200, "\"Hello, Ada!\""));
        }
        let out = ol_lb(&["status", "-p", &lb_dir.to_string_lossy()]);
        let text = stdout(&out);
        assert!(out.status.success(), "{text}{}", stderr(&out));
        assert_eq!(text.matches(" UP ").count(), 3, "{text}");
        assert!(text.contains("holds hello"), "{text}");
        let status = Command::new(ol_bin())
            .args(["cluster", "status", "--cluster"])
            .arg(&root)
            .output()
            .expect("run ol");
        assert!(
            stdout(&status).contains(&format!(
                "Balancer:\n  http://127.0.0.1:{lb_port} => running"
            )),
            "{}",
            stdout(&status)
        );
    });
    let said = cluster(&["kill"]);
    assert!(said.starts_with("lb: balancer stopped"), "{said}");
    if let Err(panic) = killed {
        std::panic::resume_unwind(panic);
    }
    assert!(
        eventually(Duration::from_secs(5), || processes_mentioning(&root)
            .is_empty()),
        "left: {:?}",
        processes_mentioning(&root)
    );
    assert!(!lb_dir.join("lb.json").exists());
}

#[test]
fn workers_that_come_later_are_found_and_none_up_is_a_json_503() {
    let tmp = tempfile::Builder::new()
        .prefix("ol-lb-later-e2e-")
        .tempdir()
        .expect("tempdir");
    let root = tmp.path().join("cluster");
    let cluster = |args: &[&str]| {
        ol_cluster_ok(&root, args);
    };
    cluster(&["new"]);
    cluster(&["setconf", r#"{"sandbox": "process"}"#]);
    // A balancer on a cluster with no worker yet: it starts and says 503.
    let root_arg = root.to_string_lossy().into_owned();
    let mut lb = TestLb::up_with(&["--cluster", &root_arg, "--policy", "least-loaded"]);
    let a = request("GET", &lb.url("/status"), b"");
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(
        a.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("no worker"))
    );
    let a = lb.run("hello", "{}");
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.json()["error"].is_string(), "{}", a.body);
    let (ok, text) = lb.status();
    assert!(!ok && text.contains("no worker yet"), "{text}");

    // Workers started: found within the second, then their checks pass.
    let first = free_ports(2);
    cluster(&[
        "workers",
        "--num-workers",
        "2",
        "--port",
        &first.to_string(),
    ]);
    let found = eventually(Duration::from_secs(5), || {
        request("GET", &lb.url("/status"), b"").status == 200
    });
    let text = lb.status().1;
    assert!(
        found,
        "the balancer never found the cluster's workers:\n{text}"
    );
    let a = lb.run("hello", r#"{"name": "Ada"}"#);
    assert_eq!((a.status, a.body.as_str()), (200, "\"Hello, Ada!\""));
    assert!(
        eventually(Duration::from_secs(5), || lb.status().0),
        "{}",
        lb.status().1
    );
    assert_eq!(
        lb.status().1.matches(" UP ").count(),
        2,
        "{}",
        lb.status().1
    );

    // Killed: no worker is up, and the balancer says so as JSON.
    cluster(&["kill"]);
    assert!(eventually(Duration::from_secs(3), || {
        request("GET", &lb.url("/status"), b"").status == 503
    }));
    let a = lb.run("hello", "{}");
    assert_eq!(a.status, 503, "{}", a.body);
    lb.down();
}
