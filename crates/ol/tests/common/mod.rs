//! Shared harness of the end-to-end tests: a real worker started with the
//! real `ol` binary in a temporary directory, stopped (and checked for
//! leftovers) when dropped, even when the test fails.

#![allow(dead_code)]

pub mod lb;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

/// The `ol` binary under test.
pub fn ol_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ol")
}

/// Runs `ol args... -p dir` and returns its output.
pub fn ol(dir: &Path, args: &[&str]) -> Output {
    Command::new(ol_bin())
        .args(args)
        .arg("-p")
        .arg(dir)
        .output()
        .expect("run ol")
}

/// The sandbox backend a [`TestWorker`] runs (its `-o sandbox=...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Namespaces, cgroups, seccomp and zygotes; needs root.
    Sock,
    /// Plain processes; runs without root.
    Process,
}

impl Backend {
    /// The `ol worker up -o` setting that picks it.
    pub fn option(self) -> &'static str {
        match self {
            Backend::Sock => "sandbox=sock",
            Backend::Process => "sandbox=process",
        }
    }
}

/// Makes each named function `fn NAME(backend: Backend)` a module `NAME`
/// of two tests that call it: `NAME::sock` (ignored unless run with
/// `--include-ignored`: the sock backend needs root) and `NAME::process`.
///
/// ```ignore
/// on_both_backends!(calls_answer);
/// fn calls_answer(backend: Backend) {
///     let w = TestWorker::start(backend, &[], &[]);
///     // ...
/// }
/// ```
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            #[test]
            #[ignore = "needs root"]
            fn sock() {
                super::$test($crate::common::Backend::Sock);
            }

            #[test]
            fn process() {
                super::$test($crate::common::Backend::Process);
            }
        }
    )+};
}
#[allow(unused_imports)]
pub(crate) use on_both_backends;

/// A worker in a temp dir.
pub struct TestWorker {
    /// Removed when the worker is dropped (after it is stopped).
    _root: tempfile::TempDir,
    path: PathBuf,
    pub port: u16,
    backend: Backend,
    stopped: bool,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

impl Answer {
    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

impl TestWorker {
    /// Inits a worker dir, adds `lambdas` (name → [(file, source)]) to its
    /// registry and starts it detached on a free port on `backend` with
    /// `overrides`.
    pub fn start(
        backend: Backend,
        lambdas: &[(&str, &[(&str, &str)])],
        overrides: &[&str],
    ) -> Self {
        Self::start_full(backend, &[], lambdas, overrides, &[])
    }

    /// Like [`Self::start`], with extra arguments to `ol worker up`.
    pub fn start_with(
        backend: Backend,
        lambdas: &[(&str, &[(&str, &str)])],
        overrides: &[&str],
        up_args: &[&str],
    ) -> Self {
        Self::start_full(backend, &[], lambdas, overrides, up_args)
    }

    /// Like [`Self::start`], with extra `ol worker init` arguments.
    pub fn start_init(
        backend: Backend,
        init_args: &[&str],
        lambdas: &[(&str, &[(&str, &str)])],
        overrides: &[&str],
    ) -> Self {
        Self::start_full(backend, init_args, lambdas, overrides, &[])
    }

    /// Inits (with `init_args`), adds `lambdas`, starts on `backend` with
    /// `overrides` and `up_args`.
    pub fn start_full(
        backend: Backend,
        init_args: &[&str],
        lambdas: &[(&str, &[(&str, &str)])],
        overrides: &[&str],
        up_args: &[&str],
    ) -> Self {
        let dir = init_dir(init_args, lambdas);
        Self::start_in_with(backend, dir, overrides, up_args)
    }

    /// Starts a worker on `backend` with `overrides` in `dir`, a worker
    /// dir the test made with [`init_dir`] (and changed, e.g. with
    /// [`set_config`]); `dir` is removed when the worker is dropped.
    pub fn start_in(backend: Backend, dir: tempfile::TempDir, overrides: &[&str]) -> Self {
        Self::start_in_with(backend, dir, overrides, &[])
    }

    fn start_in_with(
        backend: Backend,
        dir: tempfile::TempDir,
        overrides: &[&str],
        up_args: &[&str],
    ) -> Self {
        let path = dir.path().to_path_buf();
        let mut w = Self {
            _root: dir,
            path,
            port: 0,
            backend,
            stopped: true,
        };
        w.up_with(overrides, up_args);
        w
    }

    /// The worker a test started itself in `dir` on `backend` (with
    /// [`Backend::option`]), found by its port file (waited for); stopped
    /// and checked like any other when dropped.
    pub fn adopt(backend: Backend, dir: tempfile::TempDir) -> Self {
        let path = dir.path().to_path_buf();
        Self::adopt_at(backend, dir, path)
    }

    /// Like [`Self::adopt`], for a worker dir `path` inside the temp dir
    /// `root` (removed when the worker is dropped).
    pub fn adopt_at(backend: Backend, root: tempfile::TempDir, path: PathBuf) -> Self {
        Self {
            _root: root,
            port: wait_for_port(&path),
            path,
            backend,
            stopped: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its state dir (`DIR/worker`), whose hash is its worker id.
    pub fn state_dir(&self) -> PathBuf {
        self.path.join("worker")
    }

    /// The backend it runs.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Sends one request and returns status, body and headers.
    pub fn call(&self, method: &str, path: &str, body: &str) -> Answer {
        request(method, &self.url(path), body.as_bytes())
    }

    /// POSTs `body` to `/run/<lambda>`.
    pub fn run(&self, lambda: &str, body: &str) -> Answer {
        self.call("POST", &format!("/run/{lambda}"), body)
    }

    /// `GET /stats` as JSON.
    pub fn stats(&self) -> serde_json::Value {
        let a = self.call("GET", "/stats", "");
        assert_eq!(a.status, 200, "{}", a.body);
        a.json()
    }

    /// `GET /metrics`, parsed by a Prometheus text parser.
    pub fn metrics(&self) -> prometheus_parse::Scrape {
        let a = self.call("GET", "/metrics", "");
        assert_eq!(a.status, 200, "{}", a.body);
        prometheus_parse::Scrape::parse(a.body.lines().map(|l| Ok(l.to_string())))
            .unwrap_or_else(|e| panic!("/metrics does not parse ({e}):\n{}", a.body))
    }

    /// Pids of the live sandboxes of `lambda`.
    pub fn sandbox_pids(&self, lambda: &str) -> Vec<u32> {
        self.stats()["sandboxes"]
            .as_array()
            .expect("sandboxes")
            .iter()
            .filter(|s| s["lambda"] == lambda)
            .map(|s| s["pid"].as_u64().expect("pid") as u32)
            .collect()
    }

    /// The worker's pid from its pid file.
    pub fn worker_pid(&self) -> u32 {
        fs::read_to_string(self.path().join("worker/worker.pid"))
            .expect("pid file")
            .split_whitespace()
            .next()
            .expect("pid")
            .parse()
            .expect("pid number")
    }

    /// Starts the (stopped) worker again in its dir, on its backend and a
    /// new free port, with `overrides`.
    pub fn up(&mut self, overrides: &[&str]) {
        self.up_with(overrides, &[]);
    }

    fn up_with(&mut self, overrides: &[&str], up_args: &[&str]) {
        assert!(
            !overrides.iter().any(|o| o.starts_with("sandbox=")),
            "the backend is TestWorker's own argument: {overrides:?}"
        );
        let out = up_detached(self.path(), self.backend, overrides, up_args, &[]);
        assert!(
            out.status.success(),
            "up: {}\n{}",
            stderr(&out),
            String::from_utf8_lossy(&out.stdout)
        );
        self.stopped = false;
        self.port = wait_for_port(self.path());
    }

    /// Stops the worker and starts it again in the same dir (on a new
    /// free port) with `overrides`.
    pub fn restart(&mut self, overrides: &[&str]) {
        self.down();
        self.up(overrides);
    }

    /// `ol worker down`, then asserts nothing of the worker is left.
    pub fn down(&mut self) {
        self.stopped = true;
        let out = ol(self.path(), &["worker", "down"]);
        assert!(out.status.success(), "down: {}", stderr(&out));
        assert_no_processes(self.path());
        assert!(!self.path().join("worker/worker.pid").exists());
    }
}

/// Runs `ol worker up -d` in `dir` on `backend` and a free port with
/// `overrides` (`-o`), `up_args` and the environment variables `env` added
/// to the test's; its output (the worker runs on if it started).
pub fn up_detached(
    dir: &Path,
    backend: Backend,
    overrides: &[&str],
    up_args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let mut args = vec!["worker", "up", "-d", "-o", "worker_port=0"];
    args.extend(["-o", backend.option()]);
    for o in overrides {
        args.extend(["-o", o]);
    }
    args.extend(up_args);
    Command::new(ol_bin())
        .args(&args)
        .arg("-p")
        .arg(dir)
        .envs(env.iter().copied())
        .output()
        .expect("run ol")
}

/// The port in the worker dir `dir`'s port file, waited for.
fn wait_for_port(dir: &Path) -> u16 {
    let port_file = dir.join("worker/worker.port");
    let port = || fs::read_to_string(&port_file).ok()?.trim().parse().ok();
    assert!(
        eventually(Duration::from_secs(30), || port().is_some()),
        "the worker in {} never wrote its port",
        dir.display()
    );
    port().unwrap_or_default()
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = ol(self.path(), &["worker", "down"]);
            let _ = ol(self.path(), &["worker", "force-cleanup"]);
        }
    }
}

/// A new worker dir made by `ol worker init` (with `init_args`) holding
/// `lambdas` (name → [(file, source)]) in its registry.
pub fn init_dir(init_args: &[&str], lambdas: &[(&str, &[(&str, &str)])]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ol-e2e-")
        .tempdir()
        .expect("tempdir");
    let mut args = vec!["worker", "init"];
    args.extend(init_args);
    let out = ol(dir.path(), &args);
    assert!(out.status.success(), "init: {}", stderr(&out));
    for (name, files) in lambdas {
        add_lambda(dir.path(), name, files);
    }
    dir
}

/// Sets `settings` (`key=value`, dotted keys, as `-o` takes them) in the
/// config.json of the worker dir `dir`: for what `ol` commands other than
/// `ol worker up` must see too (the admin key).
pub fn set_config(dir: &Path, settings: &[&str]) {
    let file = dir.join("config.json");
    let text = fs::read_to_string(&file).expect("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&text).expect("config JSON");
    for setting in settings {
        ol_worker::config::apply_override(&mut config, setting).expect(setting);
    }
    fs::write(&file, config.to_string()).expect("write config.json");
}

/// Writes lambda `name` into the registry of the worker dir `dir`.
pub fn add_lambda(dir: &Path, name: &str, files: &[(&str, &str)]) {
    let ldir = dir.join("registry").join(name);
    fs::create_dir_all(&ldir).expect("mkdir lambda");
    for (file, source) in files {
        fs::write(ldir.join(file), source).expect("write lambda file");
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Sends one request (any status accepted) and returns the response with
/// its whole body.
fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> http::Response<Vec<u8>> {
    try_send(method, url, headers, body).expect("HTTP request")
}

/// Sends one request (any status accepted); a connection that fails or
/// closes before the whole response is an error.
fn try_send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<http::Response<Vec<u8>>, ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut req = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(body.to_vec()).expect("request");
    let mut resp = agent.run(req)?;
    let bytes = resp.body_mut().read_to_vec()?;
    let (parts, _) = resp.into_parts();
    Ok(http::Response::from_parts(parts, bytes))
}

/// One HTTP request with any status accepted.
pub fn request(method: &str, url: &str, body: &[u8]) -> Answer {
    request_with(method, url, &[], body)
}

/// One HTTP request with extra `headers`, any status accepted.
pub fn request_with(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    answer(send(method, url, headers, body))
}

/// One HTTP request with any status accepted; `None` when the connection
/// failed or closed before the whole response came.
pub fn try_request(method: &str, url: &str, body: &[u8]) -> Option<Answer> {
    try_send(method, url, &[], body).ok().map(answer)
}

fn answer(resp: http::Response<Vec<u8>>) -> Answer {
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    Answer {
        status: resp.status().as_u16(),
        // Lossy: a binary body (an archive) must not fail the request.
        body: String::from_utf8_lossy(resp.body()).into_owned(),
        headers,
    }
}

/// One HTTP request; the raw response body (any status).
pub fn request_bytes(method: &str, url: &str, body: &[u8]) -> Vec<u8> {
    send(method, url, &[], body).into_body()
}

/// One bodiless request with one extra header; the status.
pub fn request_with_header(method: &str, url: &str, name: &str, value: &str) -> u16 {
    send(method, url, &[(name, value)], &[]).status().as_u16()
}

/// The number `field` (`VmRSS`, `FDSize`) of process `pid`'s
/// `/proc/PID/status` (its first word: KiB for the memory fields).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} of process {pid}"))
}

/// Pids of every process whose command line mentions `dir`.
pub fn processes_mentioning(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        let is_zombie = fs::read_to_string(entry.path().join("stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        if cmdline.contains(&needle) && !is_zombie {
            found.push((pid, cmdline));
        }
    }
    found
}

/// The cgroups named after the worker whose state dir is `state` (its
/// parent cgroup in each hierarchy, v1 or v2) that exist.
pub fn worker_cgroups(state: &Path) -> Vec<PathBuf> {
    let id = ol_sandbox::sock::worker_id(state);
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs: Vec<PathBuf> = fs::read_dir(root)
        .map(|d| d.flatten().map(|e| e.path().join(&id)).collect())
        .unwrap_or_default();
    dirs.push(root.join(&id));
    dirs.retain(|d| d.is_dir());
    dirs
}

/// The host's mounts whose line in mountinfo mentions `dir`.
pub fn mounts_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

/// Asserts no live process mentions `dir`.
pub fn assert_no_processes(dir: &Path) {
    let left = processes_mentioning(dir);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

/// Polls `cond` for up to `timeout`.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (up to 2 minutes) for the worker's background compile to mark
/// installed package dir `dir`'s bytecode done (its staging dir is gone
/// by then).
pub fn wait_for_bytecode(dir: &Path) {
    let marker = dir.join(".ol-bytecode");
    assert!(
        eventually(Duration::from_secs(120), || marker.exists()),
        "no bytecode in {} after 2 minutes",
        dir.display()
    );
}

/// Writes a pure-Python wheel `name-version-py3-none-any.whl` providing
/// module `module` (whose `VALUE` is `value`) into `dir`.
pub fn write_wheel(dir: &Path, name: &str, version: &str, module: &str, value: &str) {
    let init = format!("VALUE = {value:?}\n");
    write_wheel_files(
        dir,
        name,
        version,
        &[(&format!("{module}/__init__.py"), &init)],
    );
}

/// Writes a pure-Python wheel `name-version-py3-none-any.whl` holding
/// `files` (path in the wheel, content) into `dir`.
pub fn write_wheel_files(dir: &Path, name: &str, version: &str, files: &[(&str, &str)]) {
    let script = r#"
import base64, hashlib, json, sys, zipfile
dir, name, version, files = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
dist = f"{name}-{version}.dist-info"
files[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
files[f"{dist}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: ol-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
record = []
with zipfile.ZipFile(f"{dir}/{name}-{version}-py3-none-any.whl", "w") as z:
    for path, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
        z.writestr(path, data)
    record.append(f"{dist}/RECORD,,")
    z.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
"#;
    let files: serde_json::Map<String, serde_json::Value> = files
        .iter()
        .map(|(path, text)| (path.to_string(), serde_json::Value::from(*text)))
        .collect();
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .args([name, version])
        .arg(serde_json::Value::Object(files).to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pids of process `pid` in each pid namespace it is in, the host's
/// first (`NSpid`); empty when it is gone.
pub fn ns_pids(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("NSpid:").map(|ns| {
                    ns.split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .collect()
                })
            })
        })
        .unwrap_or_default()
}

/// Whether process `pid` is pid `inner` of its innermost pid namespace,
/// nested at least two levels below the host's (a sandbox's, or a
/// zygote's).
pub fn is_pid_of_its_namespace(pid: u32, inner: u32) -> bool {
    let levels = ns_pids(pid);
    levels.len() >= 3 && levels.last() == Some(&inner)
}

/// The first of `count` consecutive ports on 127.0.0.1 that are free now,
/// all below Linux's ephemeral range (from 32768): there, a worker bound
/// to port 0 or the local end of any outgoing connection could take one
/// between this check and its use (haproxy once failed to bind so).
pub fn free_ports(count: u16) -> u16 {
    const LOW: u16 = 10_000;
    const SPAN: u16 = 22_000;
    // Tests of this binary run at once: each looks from its own offset.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = (std::process::id() % 110) as u16 * 200;
    loop {
        let step = NEXT.fetch_add(count + 1, Ordering::Relaxed);
        let first = LOW + base.wrapping_add(step) % (SPAN - count);
        let taken: Vec<TcpListener> = (first..first + count)
            .map_while(|p| TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if taken.len() == usize::from(count) {
            return first;
        }
    }
}
