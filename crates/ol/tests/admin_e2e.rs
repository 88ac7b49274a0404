//! End-to-end: a worker listening beyond loopback (on 0.0.0.0) guards its
//! admin routes (docs/security.md, "Admin routes beyond loopback"): uploads,
//! removals, registry reads, `/stats` and `/metrics` need its admin key,
//! `ol admin` and `ol worker status` send the key its config.json names,
//! routes can be turned off or opened, the key shows up in no answer and no
//! log, and a worker that would serve them with no key refuses to start.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{
    Answer, Backend, TestWorker, init_dir, ol, on_both_backends, request_with, set_config, stderr,
    up_detached,
};

/// The test workers' admin key (only ever on this machine).
const KEY: &str = "3f1c9a7be2d04c5f8a61b07e9d2c4a58";

/// A lambda directory (for `ol admin install`) and its packed archive (for
/// the registry API), answering `fresh`.
fn fresh_lambda() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("fresh");
    fs::create_dir(&src).expect("mkdir");
    fs::write(src.join("f.py"), "def f(event):\n    return 'fresh'\n").expect("f.py");
    let archive = ol_registry::pack_lambda(&src).expect("pack");
    (dir, archive)
}

/// A worker on `backend` listening on every address (0.0.0.0), whose
/// config.json names its admin key in a private file, with `settings`.
fn worker_beyond_loopback(backend: Backend, settings: &[&str]) -> TestWorker {
    let dir = init_dir(&[], &[]);
    let key_file = dir.path().join("admin-key");
    fs::write(&key_file, format!("{KEY}\n")).expect("key file");
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).expect("chmod");
    set_config(
        dir.path(),
        &["worker_host=0.0.0.0", "admin.key_file=admin-key"],
    );
    set_config(dir.path(), settings);
    TestWorker::start_in(backend, dir, &[])
}

/// Whether a socket listens on 0.0.0.0:`port` (/proc/net/tcp: local
/// address in hex, state 0A = LISTEN).
fn listens_on_every_address(port: u16) -> bool {
    let table = fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!("00000000:{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A")
    })
}

/// `method` `path` on `w` with an `Authorization` header when given.
fn call(
    w: &TestWorker,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> Answer {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    request_with(method, &w.url(path), &headers, body)
}

/// The answer's `error`, asserting it is a JSON error body.
fn error_of(a: &Answer) -> String {
    a.json()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {}", a.body))
        .to_string()
}

/// Runs `ol args... -p dir`, asserting it succeeds and never prints the
/// key; its stdout.
fn ol_ok(dir: &Path, args: &[&str]) -> String {
    let out = ol(dir, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    assert!(
        !stdout.contains(KEY) && !stderr(&out).contains(KEY),
        "{args:?} printed the key"
    );
    stdout
}

on_both_backends!(beyond_loopback_admin_routes_need_the_key_and_ol_admin_sends_it);
fn beyond_loopback_admin_routes_need_the_key_and_ol_admin_sends_it(backend: Backend) {
    let w = worker_beyond_loopback(backend, &[]);
    assert!(listens_on_every_address(w.port), "not bound to 0.0.0.0");
    let (src, archive) = fresh_lambda();
    let bearer = format!("Bearer {KEY}");
    let wrong = format!("Bearer {}", KEY.replace('3', "4"));
    for authorization in [None, Some(wrong.as_str()), Some(KEY)] {
        for (method, path) in [
            ("POST", "/registry/fresh"),
            ("DELETE", "/registry/hello"),
            ("GET", "/registry/"),
            ("GET", "/registry/hello.tar.gz"),
            ("GET", "/registry/hello/config"),
            ("GET", "/stats"),
            ("GET", "/metrics"),
        ] {
            let a = call(&w, method, path, authorization, &archive);
            assert_eq!(
                a.status, 401,
                "{method} {path} with {authorization:?}: {}",
                a.body
            );
            assert!(error_of(&a).contains("admin key"), "{}", a.body);
            let challenge = a.headers.iter().find(|(k, _)| k == "www-authenticate");
            assert!(
                challenge.is_some_and(|(_, v)| v.starts_with("Bearer")),
                "{:?}",
                a.headers
            );
        }
    }
    assert!(
        !w.path().join("registry/fresh").exists(),
        "an upload was stored"
    );
    assert!(
        w.path().join("registry/hello").exists(),
        "a lambda was removed"
    );
    // Calls and the health check never need the key.
    assert_eq!(w.run("hello", r#"{"name": "A"}"#).status, 200);
    assert_eq!(w.call("GET", "/status", "").body, "ready");

    let a = call(&w, "POST", "/registry/fresh", Some(&bearer), &archive);
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(w.run("fresh", "{}").body, r#""fresh""#);
    let stats = call(&w, "GET", "/stats", Some(&bearer), b"");
    assert_eq!(stats.status, 200, "{}", stats.body);
    assert!(!stats.body.contains(KEY), "/stats shows the key");
    let metrics = call(&w, "GET", "/metrics", Some(&bearer), b"");
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    assert_eq!(
        call(&w, "DELETE", "/registry/fresh", Some(&bearer), b"").status,
        204
    );

    // `ol admin` and `ol worker status` send the key config.json names.
    ol_ok(
        w.path(),
        &[
            "admin",
            "install",
            &src.path().join("fresh").to_string_lossy(),
        ],
    );
    assert!(
        ol_ok(w.path(), &["admin", "ls"])
            .lines()
            .any(|l| l == "fresh")
    );
    ol_ok(w.path(), &["admin", "rm", "fresh"]);
    assert!(!w.path().join("registry/fresh").exists());
    assert!(ol_ok(w.path(), &["worker", "status"]).contains("invocations"));

    let log = fs::read_to_string(w.path().join("logs/worker.log")).expect("worker log");
    assert!(!log.contains(KEY), "the worker logged its key");
}

on_both_backends!(admin_routes_can_be_turned_off_or_opened);
fn admin_routes_can_be_turned_off_or_opened(backend: Backend) {
    let w = worker_beyond_loopback(
        backend,
        &[
            "admin.metrics=off",
            "admin.stats=open",
            "admin.registry_write=off",
        ],
    );
    let bearer = format!("Bearer {KEY}");
    let (_src, archive) = fresh_lambda();
    let a = call(&w, "GET", "/metrics", Some(&bearer), b"");
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(error_of(&a).contains("admin.metrics"), "{}", a.body);
    let a = call(&w, "POST", "/registry/fresh", Some(&bearer), &archive);
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(
        !w.path().join("registry/fresh").exists(),
        "an upload was stored"
    );
    assert_eq!(call(&w, "GET", "/stats", None, b"").status, 200);
    // Registry reads keep their default: the key.
    assert_eq!(call(&w, "GET", "/registry/", None, b"").status, 401);
    assert_eq!(
        call(&w, "GET", "/registry/", Some(&bearer), b"").status,
        200
    );
}

on_both_backends!(the_workers_environment_never_reaches_a_lambda);
fn the_workers_environment_never_reaches_a_lambda(backend: Backend) {
    // On Kubernetes the S3 store's credentials are in the worker's
    // environment (deploy/20-worker.yaml): no lambda may read them.
    const SECRET: &str = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY";
    let dir = init_dir(
        &[],
        &[(
            "env",
            &[(
                "f.py",
                "import os\n\ndef f(event):\n    return dict(os.environ)\n",
            )],
        )],
    );
    let out = up_detached(
        dir.path(),
        backend,
        &[],
        &[],
        &[
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
        ],
    );
    assert!(out.status.success(), "up: {}", stderr(&out));
    let w = TestWorker::adopt(backend, dir);
    let a = w.run("env", "{}");
    assert_eq!(a.status, 200, "{}", a.body);
    let env = a.json();
    for name in ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"] {
        assert!(env.get(name).is_none(), "a lambda sees {name}: {env}");
    }
    assert!(!a.body.contains(SECRET), "{}", a.body);
}

#[test]
fn on_ipv6_loopback_nothing_needs_a_key_and_ol_reaches_the_worker_there() {
    // ::1 is loopback: no key needed. The worker answers only there, so
    // `ol worker up -d`, `ol admin` and `ol worker status` must call it
    // there, not on 127.0.0.1 (they read the address from config.json).
    let dir = init_dir(&[], &[]);
    set_config(dir.path(), &["worker_host=::1"]);
    let w = TestWorker::start_in(Backend::Process, dir, &[]);
    let a = request_with("GET", &format!("http://[::1]:{}/stats", w.port), &[], b"");
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        ol_ok(w.path(), &["admin", "ls"])
            .lines()
            .any(|l| l == "hello")
    );
    assert!(ol_ok(w.path(), &["worker", "status"]).contains("http://[::1]:"));
}

/// Stops whatever worker runs in a dir when dropped: a worker that should
/// have refused to start but did is not left running by a failed test.
struct DownOnDrop<'a>(&'a Path);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        let _ = ol(self.0, &["worker", "down"]);
    }
}

#[test]
fn beyond_loopback_a_worker_without_a_key_refuses_to_start_naming_it() {
    let dir = init_dir(&[], &[]);
    let _down = DownOnDrop(dir.path());
    for (settings, key, says) in [
        (&["worker_host=0.0.0.0"][..], "admin.key", "admin.key_file"),
        (
            &["worker_host=0.0.0.0", "admin.key_file=no-such-file"],
            "admin.key_file",
            "cannot read",
        ),
        (
            &[
                "worker_host=0.0.0.0",
                &format!("admin.key={KEY}"),
                "admin.registry_write=open",
            ],
            "admin.registry_write",
            "beyond loopback",
        ),
        (&["admin.key=s3cr3t"], "admin.key", "too short"),
    ] {
        let out = up_detached(dir.path(), Backend::Process, settings, &[], &[]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{settings:?}: started");
        let lines: Vec<&str> = err.trim().lines().collect();
        assert_eq!(lines.len(), 1, "{settings:?}: {err}");
        assert!(
            lines[0].contains(&format!("config key `{key}`")) && lines[0].contains(says),
            "{settings:?}: {err}"
        );
        assert!(
            !err.contains(KEY) && !err.contains("s3cr3t"),
            "quotes the key: {err}"
        );
        assert!(
            !dir.path().join("worker/worker.pid").exists(),
            "{settings:?}"
        );
    }
}
