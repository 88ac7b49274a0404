//! End-to-end tests of `ol cluster`, as a user runs it: a cluster made
//! with `new` and `setconf`, three workers started with `workers`, a
//! handler written into the cluster's registry and called on every
//! worker, a code change seen by all, packages installed once for all,
//! `status`, `kill` leaving no process, cgroup or mount, the code store
//! (`registry`, `upload`: keys checked, bundles checked, every worker
//! served), and the errors of bad input.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{
    Backend, assert_no_processes, eventually, free_ports, mounts_mentioning, ol_bin,
    on_both_backends, processes_mentioning, request, stderr, worker_cgroups, write_wheel,
};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A cluster directory in a temp dir; its workers are killed when it is
/// dropped, even when the test failed.
struct TestCluster {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    ports: Vec<u16>,
}

impl TestCluster {
    /// `ol cluster new`, then `setconf` with the backend and `settings`
    /// (a JSON object's members, may be empty).
    fn new(backend: Backend, settings: &str) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("ol-cluster-e2e-")
            .tempdir()
            .expect("tempdir");
        let root = tmp.path().join("cluster");
        let c = Self {
            _tmp: tmp,
            root,
            ports: Vec::new(),
        };
        c.ok(&["new"]);
        let sandbox = match backend {
            Backend::Sock => "sock",
            Backend::Process => "process",
        };
        let sep = if settings.is_empty() { "" } else { ", " };
        c.ok(&[
            "setconf",
            &format!(r#"{{"sandbox": "{sandbox}"{sep}{settings}}}"#),
        ]);
        c
    }

    /// `ol cluster ARGS... --cluster ROOT`.
    fn ol(&self, args: &[&str]) -> Output {
        Command::new(ol_bin())
            .arg("cluster")
            .args(args)
            .arg("--cluster")
            .arg(&self.root)
            .output()
            .expect("run ol")
    }

    /// Like [`Self::ol`], and it must succeed.
    fn ok(&self, args: &[&str]) -> Output {
        let out = self.ol(args);
        assert!(
            out.status.success(),
            "ol cluster {args:?}: {}\n{}",
            stderr(&out),
            stdout(&out)
        );
        out
    }

    /// `ol cluster workers` with `count` workers on free ports.
    fn start(&mut self, count: u16) {
        let first = free_ports(count);
        let out = self.ok(&[
            "workers",
            &format!("--num-workers={count}"),
            "--port",
            &first.to_string(),
        ]);
        self.ports = (first..first + count).collect();
        for (i, port) in self.ports.iter().enumerate() {
            assert!(
                stdout(&out).contains(&format!("worker-{i} started")),
                "{}",
                stdout(&out)
            );
            assert_eq!(
                request("GET", &format!("http://127.0.0.1:{port}/status"), b"").body,
                "ready"
            );
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Writes handler `name` into the cluster's registry.
    fn add_handler(&self, name: &str, files: &[(&str, &str)]) {
        let dir = self.path("registry").join(name);
        fs::create_dir_all(&dir).expect("mkdir");
        for (file, text) in files {
            fs::write(dir.join(file), text).expect("write handler");
        }
    }

    /// POSTs `body` to `/run/<lambda>` on each worker: (status, body) each.
    fn run_everywhere(&self, lambda: &str, body: &str) -> Vec<(u16, String)> {
        self.ports
            .iter()
            .map(|port| {
                let a = request(
                    "POST",
                    &format!("http://127.0.0.1:{port}/run/{lambda}"),
                    body.as_bytes(),
                );
                (a.status, a.body)
            })
            .collect()
    }

    /// Asserts that every worker answers `body` to `lambda` called with
    /// `event` within 30 s (a code change reaches each within its
    /// `registry_cache_ms`).
    fn assert_every_worker_soon_answers(&self, lambda: &str, event: &str, body: &str) {
        for port in &self.ports {
            assert!(
                eventually(Duration::from_secs(30), || {
                    let a = request(
                        "POST",
                        &format!("http://127.0.0.1:{port}/run/{lambda}"),
                        event.as_bytes(),
                    );
                    a.status == 200 && a.body == body
                }),
                "the worker on {port} never answered {body} to {lambda}"
            );
        }
    }

    /// Asserts the cluster left nothing: no process, pid file, cgroup or
    /// mount of any of its workers.
    fn assert_nothing_left(&self) {
        // `kill` returns once every process it killed is gone.
        assert_no_processes(&self.root);
        for i in 0..self.ports.len() {
            assert!(!self.path(&format!("logs/worker-{i}.pid")).exists());
            assert!(
                !self
                    .path(&format!("workers/worker-{i}/worker.pid"))
                    .exists()
            );
            let cgroups = worker_cgroups(&self.path(&format!("workers/worker-{i}")));
            assert!(cgroups.is_empty(), "{cgroups:?}");
        }
        let mounts = mounts_mentioning(&self.root);
        assert!(mounts.is_empty(), "{mounts:?}");
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self.ol(&["kill"]);
    }
}

/// A child process, killed if the test ends before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

on_both_backends!(three_workers_share_the_registry_and_see_code_changes);
fn three_workers_share_the_registry_and_see_code_changes(backend: Backend) {
    let mut c = TestCluster::new(backend, r#""registry_cache_ms": 300"#);
    c.start(3);
    // Each worker has its own id, hence cgroups and scratch dirs.
    let ids: std::collections::BTreeSet<String> = (0..3)
        .map(|i| ol_sandbox::sock::worker_id(&c.path(&format!("workers/worker-{i}"))))
        .collect();
    assert_eq!(ids.len(), 3);

    c.add_handler(
        "greet",
        &[(
            "lambda_func.py",
            "def handler(conn, event):\n    return 'v1 ' + event['name']\n",
        )],
    );
    for (status, body) in c.run_everywhere("greet", r#"{"name": "Ada"}"#) {
        assert_eq!((status, body.as_str()), (200, "\"v1 Ada\""));
    }
    // The same size, within the second: no stale bytecode may hide it.
    c.add_handler(
        "greet",
        &[(
            "lambda_func.py",
            "def handler(conn, event):\n    return 'v2 ' + event['name']\n",
        )],
    );
    c.assert_every_worker_soon_answers("greet", r#"{"name": "Ada"}"#, "\"v2 Ada\"");

    // Single-dash flags, as OpenLambda's Go flags.
    let out = Command::new(ol_bin())
        .args(["cluster", "status", "-cluster"])
        .arg(&c.root)
        .output()
        .expect("status");
    assert!(out.status.success(), "{}", stderr(&out));
    let report = stdout(&out);
    let (pings, containers) = report
        .split_once("\nCluster containers:\n")
        .expect("two sections");
    assert!(pings.starts_with("Worker Pings:\n"), "{report}");
    for (i, port) in c.ports.iter().enumerate() {
        assert!(
            pings.contains(&format!(
                "  http://localhost:{port}/status => ready [200 OK]"
            )),
            "{report}"
        );
        // Its line, then one per sandbox.
        let mut lines = containers
            .lines()
            .skip_while(|l| !l.starts_with(&format!("  worker-{i} (http://localhost:{port})")));
        assert!(lines.next().is_some(), "no worker-{i} in {report}");
        assert!(
            lines
                .take_while(|l| l.starts_with("    "))
                .any(|l| l.contains(" greet pid ")),
            "{report}"
        );
    }

    let out = c.ok(&["kill"]);
    for i in 0..3 {
        assert!(
            stdout(&out).contains(&format!("worker-{i}: stopped")),
            "{}",
            stdout(&out)
        );
    }
    c.assert_nothing_left();
    let out = c.ol(&["status"]);
    assert!(!out.status.success(), "nothing is ready after kill");
    assert!(stdout(&out).contains("=> not running"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("3 of 3 worker(s) not ready"),
        "{}",
        stderr(&out)
    );
}

/// A handler bundle (`NAME.tar.gz`) holding `files`, in `dir`.
fn bundle(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let src = dir.join(format!("{name}-src"));
    let _ = fs::remove_dir_all(&src);
    fs::create_dir_all(&src).expect("mkdir");
    for (file, text) in files {
        fs::write(src.join(file), text).expect("write");
    }
    let tar = dir.join(format!("{name}.tar.gz"));
    fs::write(&tar, ol_registry::pack_lambda(&src).expect("pack")).expect("write bundle");
    tar
}

const ACCESS_KEY: &str = "ol-e2e-access";
const SECRET_KEY: &str = "e2e-secret-0123456789abcdef";

on_both_backends!(a_registry_with_keys_serves_uploaded_handlers_to_every_worker);
fn a_registry_with_keys_serves_uploaded_handlers_to_every_worker(backend: Backend) {
    let mut c = TestCluster::new(backend, r#""registry_cache_ms": 300"#);
    let files = tempfile::tempdir().expect("tempdir");
    let store_port = free_ports(1);
    // As seed 002 writes it: Go flags, keys on the command line.
    let out = c.ok(&[
        "registry",
        &format!("-port={store_port}"),
        "-access-key",
        ACCESS_KEY,
        "-secret-key",
        SECRET_KEY,
    ]);
    let said = stdout(&out);
    assert!(said.contains("registry started"), "{said}");
    assert!(
        said.contains("copied from registry/ into it: echo, hello, hello-legacy"),
        "{said}"
    );
    let endpoint = format!("http://127.0.0.1:{store_port}");
    let template: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(c.path("config/template.json")).expect("read"))
            .expect("json");
    assert_eq!(template["registry"], "s3://lambdas");
    assert_eq!(template["registry_s3"]["endpoint"], endpoint.as_str());
    let mode = fs::metadata(c.path("config/template.json"))
        .expect("stat")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077,
        0,
        "the template holds the secret: its owner alone reads it"
    );
    // The secret is in no command line and no log.
    let registry_pid = fs::read_to_string(c.path("logs/registry.pid")).expect("pid file");
    let cmdline = fs::read(format!("/proc/{}/cmdline", registry_pid.trim())).expect("cmdline");
    assert!(!String::from_utf8_lossy(&cmdline).contains(SECRET_KEY));
    c.start(3);

    // The examples were copied into the store: every worker serves them.
    for (status, body) in c.run_everywhere("hello", r#"{"name": "Ada"}"#) {
        assert_eq!((status, body.as_str()), (200, "\"Hello, Ada!\""));
    }

    let v1 = bundle(
        files.path(),
        "greet",
        &[
            (
                "lambda_func.py",
                "def handler(conn, event):\n    return 'v1 ' + event['name']\n",
            ),
            ("packages.txt", "# no packages\n"),
        ],
    );
    let upload = |file: &Path, secret: &str| {
        c.ol(&[
            "upload",
            "--handler",
            "greet",
            "--file",
            file.to_str().expect("utf-8 path"),
            "--access-key",
            ACCESS_KEY,
            "--secret-key",
            secret,
        ])
    };
    // A wrong secret: refused, nothing stored.
    let out = upload(&v1, "not-the-secret-0123456789");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("not-the-secret"), "{}", stderr(&out));
    assert!(
        !c.path("workers/registry/store/lambdas/greet.tar.gz")
            .exists()
    );
    for (status, _) in c.run_everywhere("greet", r#"{"name": "Ada"}"#) {
        assert_eq!(status, 404);
    }

    let out = upload(&v1, SECRET_KEY);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("uploaded greet")
            && stdout(&out).contains("s3://lambdas/greet.tar.gz"),
        "{}",
        stdout(&out)
    );
    for (status, body) in c.run_everywhere("greet", r#"{"name": "Ada"}"#) {
        assert_eq!((status, body.as_str()), (200, "\"v1 Ada\""));
    }

    // A new version, with f.py and requirements.txt: every worker sees it.
    let v2 = bundle(
        files.path(),
        "greet-v2",
        &[
            (
                "f.py",
                "def f(event):\n    return 'version 2 ' + event['name']\n",
            ),
            ("requirements.txt", ""),
        ],
    );
    let out = upload(&v2, SECRET_KEY);
    assert!(out.status.success(), "{}", stderr(&out));
    c.assert_every_worker_soon_answers("greet", r#"{"name": "Ada"}"#, "\"version 2 Ada\"");

    // A bundle the worker would refuse is refused before it is sent.
    let no_code = bundle(files.path(), "no-code", &[("README", "no python here")]);
    let out = upload(&no_code, SECRET_KEY);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(".py"), "{}", stderr(&out));
    // So is one whose ol.yaml asks for more than the workers give.
    let greedy = bundle(
        files.path(),
        "greet",
        &[
            ("f.py", "def f(event):\n    return 'greedy'\n"),
            ("ol.yaml", "limits:\n  mem_mb: 1000000\n"),
        ],
    );
    let out = upload(&greedy, SECRET_KEY);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("limits.mem_mb: 1000000 is above this worker's limit"),
        "{}",
        stderr(&out)
    );
    for (status, body) in c.run_everywhere("greet", r#"{"name": "Ada"}"#) {
        assert_eq!((status, body.as_str()), (200, "\"version 2 Ada\""));
    }

    let out = c.ok(&["status"]);
    assert!(
        stdout(&out).starts_with(&format!(
            "Registry:\n  {endpoint} => running (pid {}; the template reads lambdas from it)",
            registry_pid.trim()
        )),
        "{}",
        stdout(&out)
    );
    for log in ["logs/registry.out", "logs/worker-0.out"] {
        let text = fs::read_to_string(c.path(log)).expect("log");
        assert!(!text.contains(SECRET_KEY), "{log} shows the secret");
    }

    let out = c.ok(&["kill"]);
    assert!(
        stdout(&out).contains(&format!("registry: stopped (pid {})", registry_pid.trim())),
        "{}",
        stdout(&out)
    );
    c.assert_nothing_left();
    assert!(!c.path("logs/registry.pid").exists());
    // Workers would find no code: they are refused until it runs again.
    let out = c.ol(&["workers", "--port", &free_ports(1).to_string()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("which is not running: start it with `ol cluster registry"),
        "{}",
        stderr(&out)
    );
    let out = c.ol(&["status"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the registry the template names is not running"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn registry_refuses_weak_keys_and_a_port_in_use_and_upload_without_a_store_fills_registry_dir() {
    let c = TestCluster::new(Backend::Process, "");
    let out = c.ol(&[
        "registry",
        "--port",
        &free_ports(1).to_string(),
        "--access-key",
        ACCESS_KEY,
        "--secret-key",
        "short",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--secret-key must be at least 16"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("short"), "{}", stderr(&out));

    let taken = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let out = c.ol(&[
        "registry",
        "--port",
        &port.to_string(),
        "--access-key",
        ACCESS_KEY,
        "--secret-key",
        SECRET_KEY,
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("the registry exited") && err.contains("logs/registry.out"),
        "{err}"
    );
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    // The template still names the registry/ dir.
    let template = fs::read_to_string(c.path("config/template.json")).expect("read");
    assert!(!template.contains("s3://"), "{template}");

    // With no store, upload checks the bundle and writes registry/.
    let files = tempfile::tempdir().expect("tempdir");
    let tar = bundle(
        files.path(),
        "local",
        &[("f.py", "def f(event):\n    return 1\n")],
    );
    let out = c.ok(&[
        "upload",
        "--handler",
        "local",
        "--file",
        tar.to_str().expect("utf-8"),
    ]);
    assert!(stdout(&out).contains("uploaded local"), "{}", stdout(&out));
    assert!(c.path("registry/local/f.py").exists());
    let bad = bundle(
        files.path(),
        "bad",
        &[("f.py", "x"), ("ol.yaml", "limits: [")],
    );
    let out = c.ol(&[
        "upload",
        "--handler",
        "bad",
        "--file",
        bad.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    assert!(!c.path("registry/bad").exists());
    let greedy = bundle(
        files.path(),
        "greedy",
        &[("f.py", "x"), ("ol.yaml", "limits:\n  procs: 100000\n")],
    );
    let out = c.ol(&[
        "upload",
        "--handler",
        "greedy",
        "--file",
        greedy.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("limits.procs: 100000 is above this worker's limit"),
        "{}",
        stderr(&out)
    );
    assert!(!c.path("registry/greedy").exists());
}

on_both_backends!(workers_install_a_package_once_for_all);
fn workers_install_a_package_once_for_all(backend: Backend) {
    let wheels = tempfile::tempdir().expect("tempdir");
    write_wheel(
        wheels.path(),
        "ol_cluster_pkg",
        "1.0.0",
        "olcluster",
        "shared",
    );
    // The tests' download caches (uv is installed there once), one for the
    // sock installer's user and one per user for the process backend's.
    let cache = match backend {
        Backend::Sock => "/var/tmp/ol-test-uv-cache".to_string(),
        Backend::Process => format!(
            "/var/tmp/ol-test-uv-cache-process-{}",
            nix::unistd::geteuid()
        ),
    };
    let mut c = TestCluster::new(
        backend,
        &format!(
            r#""pip_index_url": "{}", "package_cache_dir": "{cache}""#,
            wheels.path().display()
        ),
    );
    c.start(3);
    c.add_handler(
        "pkg",
        &[
            (
                "f.py",
                "import olcluster\ndef f(event):\n    return olcluster.VALUE\n",
            ),
            ("requirements.txt", "ol-cluster-pkg==1.0.0\n"),
        ],
    );
    // All three at once: each resolves and installs into the one packages dir.
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let calls: Vec<_> = c
            .ports
            .iter()
            .map(|port| {
                s.spawn(move || {
                    let a = request("POST", &format!("http://127.0.0.1:{port}/run/pkg"), b"{}");
                    (a.status, a.body)
                })
            })
            .collect();
        calls.into_iter().map(|t| t.join().expect("call")).collect()
    });
    for (status, body) in answers {
        assert_eq!((status, body.as_str()), (200, "\"shared\""));
    }
    let installed: Vec<String> = fs::read_dir(c.path("packages"))
        .expect("packages")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(installed, ["ol-cluster-pkg==1.0.0"]);
    let meta: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(c.path("packages/ol-cluster-pkg==1.0.0/.ol-package.json"))
            .expect("metadata"),
    )
    .expect("json");
    assert_eq!(meta["top_level"], serde_json::json!(["olcluster"]));
    // (Each worker byte-compiles it in the background after the install,
    // in a staging dir of its own, gone once the marker is written.)
    common::wait_for_bytecode(&c.path("packages/ol-cluster-pkg==1.0.0"));
    let staging = c.path("packages/.staging");
    let left = fs::read_dir(&staging).map_or(0, |d| d.count());
    assert_eq!(left, 0, "staging dirs left in {}", staging.display());
    // Later calls reuse it: a new sandbox on each worker imports it.
    for (status, body) in c.run_everywhere("pkg", "{}") {
        assert_eq!((status, body.as_str()), (200, "\"shared\""));
    }
    c.ok(&["kill"]);
    c.assert_nothing_left();
}

#[test]
fn new_refuses_an_existing_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join("mine"), "keep").expect("write");
    let out = Command::new(ol_bin())
        .args(["cluster", "new", "--cluster"])
        .arg(tmp.path())
        .output()
        .expect("ol");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let left: Vec<_> = fs::read_dir(tmp.path()).expect("ls").flatten().collect();
    assert_eq!(left.len(), 1, "untouched: {left:?}");
}

#[test]
fn setconf_refuses_a_bad_key_naming_it_and_keeps_the_template() {
    let c = TestCluster::new(Backend::Process, "");
    let before = fs::read(c.path("config/template.json")).expect("template");
    for (settings, says) in [
        (r#"{"wroker_port": 8080}"#, "wroker_port"),
        (r#"{"limits": {"mem_mb": "lots"}}"#, "limits.mem_mb"),
    ] {
        let out = c.ol(&["setconf", settings]);
        assert!(!out.status.success(), "{settings}");
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }
    assert_eq!(
        fs::read(c.path("config/template.json")).expect("template"),
        before
    );
}

#[test]
fn workers_on_a_port_in_use_fail_naming_it_and_leave_nothing_running() {
    let mut c = TestCluster::new(Backend::Process, "");
    let first = free_ports(3);
    let taken = TcpListener::bind(("127.0.0.1", first + 1)).expect("take a port");
    let out = c.ol(&[
        "workers",
        "--num-workers",
        "3",
        "--port",
        &first.to_string(),
    ]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("worker-1 (port {}) did not start", first + 1)),
        "{err}"
    );
    assert!(
        err.contains(&c.path("logs/worker-1.out").display().to_string()),
        "{err}"
    );
    assert!(err.contains("Address already in use"), "{err}");
    assert!(err.contains("stopped again"), "{err}");
    c.ports = (first..first + 3).collect();
    c.assert_nothing_left();
    drop(taken);
    // The cluster is fine: with the port free, it starts.
    c.start(3);
}

#[test]
fn worker_exec_runs_one_worker_in_the_foreground_logging_to_stdout() {
    let c = TestCluster::new(Backend::Process, "");
    let port = free_ports(1);
    let config = c.path("config/solo.json");
    let mut settings: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(c.path("config/template.json")).expect("template"),
    )
    .expect("json");
    settings["worker_port"] = port.into();
    settings["worker_dir"] = c.path("workers/solo").display().to_string().into();
    fs::write(&config, settings.to_string()).expect("config");
    let mut worker = KillOnDrop(
        Command::new(ol_bin())
            .args(["cluster", "worker-exec", "-config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("worker-exec"),
    );
    let mut log = BufReader::new(worker.0.stdout.take().expect("stdout"));
    let mut line = String::new();
    while !line.contains("worker ready") {
        line.clear();
        let read = log.read_line(&mut line).expect("read log");
        assert!(read > 0, "worker-exec ended before it was ready");
    }
    let a = request(
        "POST",
        &format!("http://127.0.0.1:{port}/run/hello"),
        br#"{"name": "Bo"}"#,
    );
    assert_eq!((a.status, a.body.as_str()), (200, "\"Hello, Bo!\""));
    assert!(c.path("workers/solo/worker.pid").is_file());
    // Ctrl-C.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let status = worker.0.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(!c.path("workers/solo/worker.pid").exists());
    assert_no_processes(&c.path("workers/solo"));
}

#[test]
fn registry_in_the_foreground_points_the_template_at_itself_and_stops_on_ctrl_c() {
    let c = TestCluster::new(Backend::Process, "");
    let port = free_ports(1);
    let mut store = KillOnDrop(
        Command::new(ol_bin())
            .args(["cluster", "registry", "--foreground", "--port"])
            .arg(port.to_string())
            .arg("--cluster")
            .arg(&c.root)
            // The keys from the environment, as the seed's flags allow too.
            .env("OL_REGISTRY_ACCESS_KEY", ACCESS_KEY)
            .env("OL_REGISTRY_SECRET_KEY", SECRET_KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("registry"),
    );
    let mut log = BufReader::new(store.0.stdout.take().expect("stdout"));
    let mut said = String::new();
    while !said.contains("serving the S3 API") {
        let read = log.read_line(&mut said).expect("read log");
        assert!(read > 0, "the registry ended before it served: {said}");
    }
    assert!(
        said.contains("copied from registry/: echo, hello, hello-legacy"),
        "{said}"
    );
    let template = fs::read_to_string(c.path("config/template.json")).expect("read");
    assert!(
        template.contains(&format!("\"endpoint\": \"http://127.0.0.1:{port}\"")),
        "{template}"
    );
    // A second one is refused while it runs.
    let out = c.ol(&[
        "registry",
        "--port",
        &free_ports(1).to_string(),
        "--access-key",
        ACCESS_KEY,
        "--secret-key",
        SECRET_KEY,
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already runs"), "{}", stderr(&out));
    // Ctrl-C.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(store.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let status = store.0.wait().expect("wait");
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut log, &mut rest).expect("read log");
    assert!(rest.contains("registry: stopped"), "{rest}");
    assert!(!c.path("workers/registry/registry.pid").exists());
    assert!(processes_mentioning(&c.root).is_empty());
}

/// The cluster's files are where the seed's README says.
#[test]
fn new_lays_out_the_six_directories_and_a_template_with_every_setting() {
    let c = TestCluster::new(Backend::Process, "");
    let mut subdirs: Vec<String> = fs::read_dir(&c.root)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    subdirs.sort();
    assert_eq!(
        subdirs,
        ["base", "config", "logs", "packages", "registry", "workers"]
    );
    let template: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(c.path("config/template.json")).expect("template"),
    )
    .expect("json");
    let at = |rel: &str| c.path(rel).display().to_string();
    assert_eq!(template["registry"], at("registry"));
    assert_eq!(template["base_dir"], at("base"));
    assert_eq!(template["packages_dir"], at("packages"));
    assert_eq!(template["package_cache_dir"], at("workers/package-cache"));
    assert_eq!(template["sandbox"], "process");
    for key in ["limits", "features", "http", "scaling", "trace", "python"] {
        assert!(template.get(key).is_some(), "{key} in {template}");
    }
    assert!(Path::new(&at("registry/hello/f.py")).is_file());
    assert!(c.path("base/etc/passwd").is_file(), "the base is built");
}
