//! End-to-end tests of the package installer under attack (root): a
//! tenant's requirements and packages are hostile. A source distribution
//! whose in-tree build backend tries to reach the worker's HTTP API on
//! loopback (to replace another lambda's code), a canary port, the package
//! store and the download cache is served from a local index directory;
//! URL, VCS and option lines are asked for. No package index is needed
//! (uv comes from the shared test cache, installed there once).

mod common;

use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{Backend, TestWorker, add_lambda, write_wheel};

/// Shared installer cache (uv is installed there once for every test run).
const CACHE_DIR: &str = "/var/tmp/ol-test-uv-cache";

/// A port on loopback that records whether anything connected to it.
struct Canary(TcpListener);

impl Canary {
    fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind canary");
        listener.set_nonblocking(true).expect("nonblocking");
        Self(listener)
    }

    fn port(&self) -> u16 {
        self.0.local_addr().expect("addr").port()
    }

    /// Whether a connection arrived (it waits in the backlog even after
    /// its sender is gone).
    fn reached(&self) -> bool {
        match self.0.accept() {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => panic!("canary accept: {e}"),
        }
    }
}

/// Files the hostile build tries to create outside its staging dir;
/// removed when dropped, whatever the test's outcome.
struct Planted(Vec<PathBuf>);

impl Planted {
    fn new(w: &TestWorker, tag: &str) -> Self {
        let name = format!("ol-planted-{tag}-{}", std::process::id());
        Self(vec![
            w.path().join("packages").join(&name),
            Path::new(CACHE_DIR).join(&name),
        ])
    }

    fn existing(&self) -> Vec<&PathBuf> {
        self.0.iter().filter(|p| p.exists()).collect()
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// Writes `hostile-1.0.tar.gz` into `dir`: an sdist whose in-tree build
/// backend, when run, tries to POST new code for lambda `victim` to the
/// worker on `worker_port`, to connect to `canary_port` and to create the
/// `planted` files, and builds a wheel whose module `hostile` holds what
/// each attempt gave in `RESULTS`.
fn write_hostile_sdist(dir: &Path, worker_port: u16, canary_port: u16, planted: &Planted) {
    let backend = format!(
        r#"
import base64, hashlib, io, json, os, socket, tarfile, urllib.request, zipfile
WORKER, CANARY, PLANTED = {worker_port}, {canary_port}, {planted:?}
def attempts():
    results = {{}}
    def attempt(key, fn):
        try:
            results[key] = "ok: " + repr(fn())
        except BaseException as e:
            results[key] = "failed: " + type(e).__name__ + ": " + str(e)
    def replace_victim():
        code = b"def f(event):\n    return 'replaced by a build script'\n"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            info = tarfile.TarInfo("f.py"); info.size = len(code); t.addfile(info, io.BytesIO(code))
        req = urllib.request.Request(f"http://127.0.0.1:{{WORKER}}/registry/victim", data=buf.getvalue(), method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    attempt("worker", replace_victim)
    attempt("canary", lambda: socket.create_connection(("127.0.0.1", CANARY), timeout=5).sendall(b"ran"))
    for i, path in enumerate(PLANTED):
        attempt(f"write{{i}}", lambda: open(path, "w").write("planted"))
    return results
def get_requires_for_build_wheel(config_settings=None):
    return []
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    results = attempts()
    dist = "hostile-1.0.dist-info"
    files = {{
        "hostile/__init__.py": "RESULTS = " + repr(results) + "\n",
        dist + "/METADATA": "Metadata-Version: 2.1\nName: hostile\nVersion: 1.0\n",
        dist + "/WHEEL": "Wheel-Version: 1.0\nGenerator: hostile\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }}
    name = "hostile-1.0-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        for path, text in files.items():
            data = text.encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{{path}},sha256={{digest}},{{len(data)}}")
            z.writestr(path, data)
        record.append(dist + "/RECORD,,")
        z.writestr(dist + "/RECORD", "\n".join(record) + "\n")
    return name
"#,
        planted = planted
            .0
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>(),
    );
    let script = r#"
import io, sys, tarfile
dir, backend = sys.argv[1:]
files = {
    "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
    "backend.py": backend,
    "PKG-INFO": "Metadata-Version: 2.1\nName: hostile\nVersion: 1.0\n",
}
with tarfile.open(f"{dir}/hostile-1.0.tar.gz", "w:gz") as t:
    for path, text in files.items():
        data = text.encode()
        info = tarfile.TarInfo("hostile-1.0/" + path)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .arg(backend)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A worker whose index is the local directory `index`, with `overrides`,
/// and lambda `victim` next to lambda `hostile` (which requires the
/// hostile package).
fn start(index: &Path, overrides: &[&str]) -> TestWorker {
    let base = base_overrides(index);
    let mut all: Vec<&str> = base.iter().map(String::as_str).collect();
    all.extend(overrides);
    let w = TestWorker::start(Backend::Sock, &[], &all);
    add_lambda(
        w.path(),
        "victim",
        &[("f.py", "def f(event):\n    return 'original'\n")],
    );
    add_lambda(
        w.path(),
        "hostile",
        &[
            (
                "f.py",
                "import hostile\ndef f(event):\n    return hostile.RESULTS\n",
            ),
            ("requirements.txt", "hostile==1.0\n"),
        ],
    );
    w
}

/// The shared cache and `index` as the package index.
fn base_overrides(index: &Path) -> [String; 2] {
    [
        format!("package_cache_dir={CACHE_DIR}"),
        format!("pip_index_url={}", index.display()),
    ]
}

/// The victim answers with its own code.
fn assert_victim_unchanged(w: &TestWorker) {
    let a = w.run("victim", "{}");
    assert_eq!((a.status, a.body.as_str()), (200, "\"original\""));
    let code = fs::read_to_string(w.path().join("registry/victim/f.py")).expect("victim code");
    assert!(code.contains("original"), "{code}");
}

#[test]
#[ignore = "needs root"]
fn by_default_an_sdist_is_not_built_and_its_build_code_never_runs() {
    let index = tempfile::tempdir().expect("index dir");
    let canary = Canary::new();
    let w = start(index.path(), &[]);
    let planted = Planted::new(&w, "default");
    write_hostile_sdist(index.path(), w.port, canary.port(), &planted);

    let a = w.run("hostile", "{}");
    assert_eq!(a.status, 500, "{}", a.body);
    let error = a.json()["error"].as_str().expect("error").to_string();
    assert!(
        error.contains("hostile")
            && error.contains("no usable wheel")
            && error.contains("features.source_builds"),
        "the error names the package and the key that allows builds: {error}"
    );
    // No build code ran: nothing reached the worker or the canary, and
    // nothing was written.
    assert!(!canary.reached(), "build code reached loopback");
    assert_victim_unchanged(&w);
    assert!(planted.existing().is_empty(), "{:?}", planted.existing());
    assert_eq!(w.stats()["packages"]["source_builds"], 0);
}

#[test]
#[ignore = "needs root"]
fn allowed_source_builds_run_offline_and_write_only_their_staging_dir() {
    let index = tempfile::tempdir().expect("index dir");
    let canary = Canary::new();
    let w = start(index.path(), &["features.source_builds=true"]);
    let planted = Planted::new(&w, "build");
    write_hostile_sdist(index.path(), w.port, canary.port(), &planted);

    let a = w.run("hostile", "{}");
    assert_eq!(a.status, 200, "{}", a.body);
    // The build ran (its wheel holds what it tried) and failed at each
    // attempt.
    let results = a.json();
    let results = results.as_object().expect("results");
    eprintln!("what the build script managed: {results:?}");
    assert_eq!(results.len(), 4, "{results:?}");
    for (attempt, got) in results {
        let got = got.as_str().expect("result");
        assert!(got.starts_with("failed"), "{attempt}: {got}");
    }
    assert!(!canary.reached(), "build code reached loopback");
    assert_victim_unchanged(&w);
    assert!(planted.existing().is_empty(), "{:?}", planted.existing());
    let stats = w.stats();
    assert_eq!(stats["packages"]["source_builds"], 1, "{stats}");
    // The built wheel is kept for the resolver, owned by the worker.
    let wheel = w
        .path()
        .join("packages/.wheels/hostile-1.0-py3-none-any.whl");
    let meta = fs::metadata(&wheel).expect("built wheel");
    assert_eq!((meta.uid(), meta.mode() & 0o022), (0, 0));
    assert_store_is_the_workers(&w.path().join("packages"));
}

#[test]
#[ignore = "needs root"]
fn url_vcs_and_option_requirements_are_refused_naming_the_line() {
    let index = tempfile::tempdir().expect("index dir");
    let canary = Canary::new();
    let w = start(index.path(), &["features.source_builds=true"]);
    let port = canary.port();
    let cases = [
        (
            "direct",
            format!("six\nhostile @ http://127.0.0.1:{port}/hostile-1.0.tar.gz\n"),
            "line 2",
            "direct references",
        ),
        (
            "vcs",
            "git+https://github.com/example/hostile.git\n".to_string(),
            "line 1",
            "VCS",
        ),
        (
            "option",
            format!("# mirror\n--extra-index-url http://127.0.0.1:{port}/simple\nsix\n"),
            "line 2",
            "options are not allowed",
        ),
        (
            "editable",
            format!("-e git+http://127.0.0.1:{port}/hostile.git#egg=hostile\n"),
            "line 1",
            "editable",
        ),
    ];
    for (name, requirements, line, why) in &cases {
        add_lambda(
            w.path(),
            name,
            &[
                ("f.py", "def f(event):\n    return 1\n"),
                ("requirements.txt", requirements),
            ],
        );
        let a = w.run(name, "{}");
        assert_eq!(a.status, 500, "{name}: {}", a.body);
        let error = a.json()["error"].as_str().expect("error").to_string();
        let first = requirements
            .lines()
            .find(|l| l.contains("://"))
            .expect("url line");
        assert!(
            error.contains(line) && error.contains(why) && error.contains(first),
            "{name}: {error}"
        );
    }
    assert!(!canary.reached(), "a refused requirement was fetched");
    let stats = w.stats();
    assert_eq!(stats["packages"]["resolutions"], 0, "{stats}");
}

#[test]
#[ignore = "needs root"]
fn installed_packages_are_owned_by_root_and_not_writable_by_sandboxes() {
    let wheels = tempfile::tempdir().expect("wheel dir");
    write_wheel(wheels.path(), "ol_owned", "1.0", "olowned", "mine");
    let mut w = start(wheels.path(), &[]);
    add_lambda(
        w.path(),
        "owned",
        &[
            (
                "f.py",
                "import olowned\ndef f(event):\n    return olowned.VALUE\n",
            ),
            ("requirements.txt", "ol-owned==1.0\n"),
        ],
    );
    let a = w.run("owned", "{}");
    assert_eq!((a.status, a.body.as_str()), (200, "\"mine\""));
    let packages = w.path().join("packages");
    assert!(packages.join("ol-owned==1.0/olowned/__init__.py").is_file());
    // Its bytecode, compiled after the install, is the worker's too.
    common::wait_for_bytecode(&packages.join("ol-owned==1.0"));
    assert!(packages.join("ol-owned==1.0/olowned/__pycache__").is_dir());
    assert_store_is_the_workers(&packages);
    // The staging area is the worker's alone, and empty again.
    let staging = fs::metadata(packages.join(".staging")).expect("staging");
    assert_eq!((staging.uid(), staging.mode() & 0o777), (0, 0o700));
    assert_eq!(
        fs::read_dir(packages.join(".staging"))
            .expect("staging")
            .count(),
        0
    );
    // A package dir an older worker left owned by the sandbox uid is made
    // the worker's when next used.
    let chown = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(packages.join("ol-owned==1.0"))
        .status()
        .expect("chown");
    assert!(chown.success());
    let base = base_overrides(wheels.path());
    w.restart(&base.iter().map(String::as_str).collect::<Vec<_>>());
    let a = w.run("owned", "{}");
    assert_eq!((a.status, a.body.as_str()), (200, "\"mine\""));
    assert_store_is_the_workers(&packages);
}

/// Every entry of every installed package dir (and the resolutions) is
/// root's and writable by nobody else; no symlink, device or set-id file,
/// and no file with a second name (uv hard-links installs out of a cache
/// of their own, which must be gone).
fn assert_store_is_the_workers(packages: &Path) {
    let mut todo: Vec<PathBuf> = fs::read_dir(packages)
        .expect("packages dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.ends_with(".staging"))
        .collect();
    assert!(!todo.is_empty());
    while let Some(path) = todo.pop() {
        let meta = fs::symlink_metadata(&path).expect("meta");
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{}", path.display());
        assert_eq!(
            meta.mode() & 0o022,
            0,
            "{} is writable by others",
            path.display()
        );
        assert_eq!(meta.mode() & 0o6000, 0, "{} is set-id", path.display());
        let kind = meta.file_type();
        assert!(kind.is_dir() || kind.is_file(), "{}", path.display());
        if kind.is_file() {
            assert_eq!(meta.nlink(), 1, "{} has hard links", path.display());
        }
        if kind.is_dir() {
            todo.extend(
                fs::read_dir(&path)
                    .expect("dir")
                    .flatten()
                    .map(|e| e.path()),
            );
        }
    }
}

/// A static HTTP server on loopback serving the files under a dir (a
/// PEP 503 index: `simple/NAME/index.html`); stopped when dropped.
struct StaticServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StaticServer {
    fn start(root: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => serve_one(&root, conn),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => return,
                }
            }
        });
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one request on `conn` with the file its path names under
/// `root` (`index.html` for a dir), or 404.
fn serve_one(root: &Path, conn: std::net::TcpStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&conn);
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    // Skip the headers.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let path = path.split(['?', '#']).next().unwrap_or("/");
    let mut file = root.join(path.trim_start_matches('/'));
    if path.contains("..") {
        file = root.join("missing");
    } else if path.ends_with('/') {
        file = file.join("index.html");
    }
    let (status, kind, body) = match fs::read(&file) {
        Ok(body) if path.ends_with('/') => ("200 OK", "text/html", body),
        Ok(body) => ("200 OK", "application/octet-stream", body),
        Err(_) => ("404 Not Found", "text/plain", b"not found".to_vec()),
    };
    let mut conn = &conn;
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(&body);
}

/// Writes `simple/hostile/index.html` under `root`, linking
/// `files/hostile-1.0.tar.gz` with `sha256`.
fn write_index_page(root: &Path, sha256: &str) {
    let dir = root.join("simple/hostile");
    fs::create_dir_all(&dir).expect("index dir");
    fs::write(
        dir.join("index.html"),
        format!(
            "<!DOCTYPE html><html><body><a href=\"/files/hostile-1.0.tar.gz#sha256={sha256}\">hostile-1.0.tar.gz</a></body></html>\n"
        ),
    )
    .expect("index page");
}

fn sha256_of(file: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(file)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string()
}

#[test]
#[ignore = "needs root"]
fn sdists_come_from_the_index_only_with_the_index_sha256() {
    let root = tempfile::tempdir().expect("index root");
    let files = root.path().join("files");
    fs::create_dir_all(&files).expect("files dir");
    let server = StaticServer::start(root.path().to_path_buf());
    let index = format!("http://127.0.0.1:{}/simple", server.port);
    let canary = Canary::new();
    let run = |sha256: Option<&str>| {
        let w = start(Path::new(&index), &["features.source_builds=true"]);
        let planted = Planted::new(&w, "http");
        write_hostile_sdist(&files, w.port, canary.port(), &planted);
        let sdist = files.join("hostile-1.0.tar.gz");
        write_index_page(root.path(), sha256.unwrap_or(&sha256_of(&sdist)));
        let a = w.run("hostile", "{}");
        assert_victim_unchanged(&w);
        assert!(planted.existing().is_empty(), "{:?}", planted.existing());
        a
    };
    // A file whose digest is not the index's is refused before it is
    // unpacked.
    let a = run(Some(&"0".repeat(64)));
    assert_eq!(a.status, 500, "{}", a.body);
    assert!(a.body.contains("is not the index's"), "{}", a.body);
    // With the index's digest, it is built offline and installed.
    let a = run(None);
    assert_eq!(a.status, 200, "{}", a.body);
    let results = a.json();
    for (attempt, got) in results.as_object().expect("results") {
        let got = got.as_str().expect("result");
        assert!(got.starts_with("failed"), "{attempt}: {got}");
    }
    assert!(!canary.reached(), "build code reached loopback");
}
