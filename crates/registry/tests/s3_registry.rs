//! The S3 backend and `upload` against two independent S3 servers: the
//! embedded code store (s3s with SigV4 enforced, counting requests by
//! method) and moto (a Python S3 mock started by the test, `python3 -m
//! pip install 'moto[server]'`, as .ci/run does; moto accepts any keys, so
//! it serves the client tests only). Fetch, revalidation by one HEAD,
//! changes, missing lambdas, listing; refused keys, unsigned requests and
//! hostile bundles store nothing; a stopped store is a clear error.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{MIB, gzip_bomb, link_header, raw_header, regular, tar_gz, tree};
use ol_registry::code_store::{CodeStore, StoreConfig};
use ol_registry::{Registry, RegistryError, S3Config, S3Registry, pack_lambda, upload};
use tar::EntryType;

const BUCKET: &str = "lambdas";
const ACCESS: &str = "test-access-key";
const SECRET: &str = "test-secret-key-0123456789";

/// A bundle of `files` (name, contents), as `ol admin install DIR` packs it.
fn bundle(files: &[(&str, &str)]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        fs::write(dir.path().join(name), text).expect("write");
    }
    pack_lambda(dir.path()).expect("pack")
}

fn code(version: &str) -> Vec<u8> {
    bundle(&[("f.py", &format!("def f(e):\n    return {version:?}\n"))])
}

/// The config check uploads pass: refuses an ol.yaml saying `bad`.
fn config_check(dir: &Path) -> Result<(), String> {
    match fs::read_to_string(dir.join("ol.yaml")) {
        Ok(text) if text.contains("bad") => Err(format!("ol.yaml: {text}")),
        _ => Ok(()),
    }
}

fn put(config: &S3Config, name: &str, body: &[u8]) {
    upload(config, name, body, config_check).expect("upload");
}

/// The test store's config: its bucket and keys, on a free port.
fn store_config(root: &Path) -> StoreConfig {
    StoreConfig {
        root: root.to_path_buf(),
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        bucket: BUCKET.into(),
        access_key: ACCESS.into(),
        secret_key: SECRET.into(),
    }
}

/// A client's config for the store at `addr`, lambdas under `prefix`.
fn client_config(addr: SocketAddr, prefix: &str) -> S3Config {
    S3Config {
        bucket: BUCKET.into(),
        prefix: prefix.into(),
        endpoint: format!("http://{addr}"),
        access_key: ACCESS.into(),
        secret_key: SECRET.into(),
        allow_http: true,
        ..S3Config::default()
    }
}

/// The embedded store in a temp dir.
struct Embedded {
    store: Option<CodeStore>,
    root: tempfile::TempDir,
}

impl Embedded {
    fn start() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let store = CodeStore::start(store_config(root.path())).expect("code store");
        Self {
            store: Some(store),
            root,
        }
    }

    fn store(&self) -> &CodeStore {
        self.store.as_ref().expect("the store runs")
    }

    fn config(&self, prefix: &str) -> S3Config {
        client_config(self.store().addr(), prefix)
    }

    fn requests(&self, method: &str) -> u64 {
        self.store().requests().get(method).copied().unwrap_or(0)
    }

    /// Every file of the bucket's directory.
    fn objects(&self) -> std::collections::BTreeSet<String> {
        tree(&self.root.path().join(BUCKET))
    }
}

/// A moto server on a free port, killed when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut moto = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!(
                    "moto's server exited ({status}): install it with \
                     `python3 -m pip install 'moto[server]'` (.ci/run does)"
                );
            }
            assert!(Instant::now() < deadline, "moto's server never listened");
            std::thread::sleep(Duration::from_millis(100));
        }
        // moto checks no signature: a plain PUT makes the bucket.
        let resp = ureq::put(&format!("http://127.0.0.1:{port}/{BUCKET}"))
            .send_empty()
            .expect("create the bucket");
        assert_eq!(resp.status().as_u16(), 200);
        moto
    }

    fn config(&self, prefix: &str) -> S3Config {
        S3Config {
            bucket: BUCKET.into(),
            prefix: prefix.into(),
            endpoint: format!("http://127.0.0.1:{}", self.port),
            access_key: "moto".into(),
            secret_key: "moto".into(),
            allow_http: true,
            ..S3Config::default()
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Requests of each method a store received since `before`.
fn since(before: &BTreeMap<String, u64>, now: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    now.iter()
        .map(|(m, n)| (m.clone(), n - before.get(m).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// What every S3 server must do for the backend: fetch, revalidate,
/// change, miss, list. `requests` counts the store's requests by method,
/// where it can.
fn client_suite(config: &S3Config, requests: &dyn Fn() -> Option<BTreeMap<String, u64>>) {
    let cache = tempfile::tempdir().expect("cache");
    let reg = S3Registry::new(config, cache.path()).expect("registry");
    assert_eq!(reg.kind(), "s3");
    assert!(reg.list().expect("empty list").is_empty());
    assert_eq!(reg.fetch("hello").expect("missing"), None);

    put(config, "hello", &code("v1"));
    put(config, "other", &code("o"));
    let v1 = reg.fetch("hello").expect("fetch").expect("hello");
    assert!(v1.version.starts_with("s3-etag-"), "{}", v1.version);
    assert!(v1.dir.starts_with(cache.path()));
    let text = fs::read_to_string(v1.dir.join("f.py")).expect("f.py");
    assert!(text.contains("v1"), "{text}");

    // Unchanged: one HEAD, no GET, the same unpacked dir.
    let before = requests();
    let again = reg.fetch("hello").expect("fetch").expect("hello");
    assert_eq!(again, v1);
    if let (Some(before), Some(after)) = (before, requests()) {
        assert_eq!(
            since(&before, &after),
            BTreeMap::from([("HEAD".to_string(), 1)]),
            "an unchanged fetch is one HEAD"
        );
    }

    // Changed: the new code, under a new version.
    put(config, "hello", &code("v2"));
    let v2 = reg.fetch("hello").expect("fetch").expect("hello");
    assert_ne!(v2.version, v1.version);
    assert_ne!(v2.dir, v1.dir);
    let text = fs::read_to_string(v2.dir.join("f.py")).expect("f.py");
    assert!(text.contains("v2"), "{text}");

    assert_eq!(reg.fetch("missing").expect("fetch"), None);
    assert!(matches!(
        reg.fetch("../etc"),
        Err(RegistryError::InvalidName(_))
    ));
    assert_eq!(reg.list().expect("list"), ["hello", "other"]);

    // Another prefix is another registry; another worker (a cache of its
    // own) sees the same code.
    let elsewhere = S3Config {
        prefix: format!("{}/elsewhere", config.prefix),
        ..config.clone()
    };
    let other_cache = tempfile::tempdir().expect("cache");
    let reg2 = S3Registry::new(&elsewhere, other_cache.path()).expect("registry");
    assert!(reg2.list().expect("list").is_empty());
    assert_eq!(reg2.fetch("hello").expect("fetch"), None);
    let same = S3Registry::new(config, other_cache.path()).expect("registry");
    assert_eq!(
        same.fetch("hello").expect("fetch").map(|c| c.version),
        Some(v2.version)
    );
}

#[test]
fn the_embedded_store_serves_an_s3_registry() {
    let store = Embedded::start();
    client_suite(&store.config("team/lambdas"), &|| {
        Some(store.store().requests())
    });
    // At the bucket's top too.
    let top = store.config("");
    put(&top, "top", &code("t"));
    let cache = tempfile::tempdir().expect("cache");
    let reg = S3Registry::new(&top, cache.path()).expect("registry");
    assert_eq!(reg.list().expect("list"), ["top"]);
    // A bucket that is not there: every lambda is missing, and listing
    // says why.
    let nowhere = S3Config {
        bucket: "no-such-bucket".into(),
        ..top
    };
    let reg = S3Registry::new(&nowhere, cache.path()).expect("registry");
    assert_eq!(reg.fetch("top").expect("fetch"), None);
    let err = reg.list().expect_err("no bucket").to_string();
    assert!(
        err.contains("no-such-bucket") && err.contains("404"),
        "{err}"
    );
}

#[test]
fn moto_serves_an_s3_registry() {
    let moto = Moto::start();
    client_suite(&moto.config("team/lambdas"), &|| None);
}

#[test]
fn a_wrong_secret_is_refused_with_403_and_stores_nothing() {
    let store = Embedded::start();
    let good = store.config("p");
    put(&good, "kept", &code("k"));
    let files = store.objects();
    let wrong = S3Config {
        secret_key: "not-the-secret".into(),
        ..good.clone()
    };
    let cache = tempfile::tempdir().expect("cache");
    let reg = S3Registry::new(&wrong, cache.path()).expect("registry");
    for err in [
        reg.fetch("kept").expect_err("fetch"),
        reg.list().expect_err("list"),
        upload(&wrong, "evil", &code("e"), config_check).expect_err("upload"),
    ] {
        assert!(
            matches!(
                err,
                RegistryError::Denied {
                    status: "403 Forbidden",
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("403") && msg.contains("secret key"), "{msg}");
    }
    assert_eq!(store.objects(), files, "nothing was stored");
    let unknown = S3Config {
        access_key: "nobody".into(),
        ..good
    };
    let err = upload(&unknown, "evil", &code("e"), config_check).expect_err("unknown key");
    assert!(matches!(err, RegistryError::Denied { .. }), "{err:?}");
    assert_eq!(store.objects(), files, "nothing was stored");
}

#[test]
fn unsigned_requests_are_refused_and_store_nothing() {
    let store = Embedded::start();
    let base = format!("http://{}/{BUCKET}", store.store().addr());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let put = agent
        .put(&format!("{base}/p/evil.tar.gz"))
        .send(&code("e")[..])
        .expect("PUT");
    assert_eq!(put.status().as_u16(), 403);
    let get = agent.get(&format!("{base}/")).call().expect("GET");
    assert_eq!(get.status().as_u16(), 403);
    assert!(store.objects().is_empty(), "{:?}", store.objects());
}

#[test]
fn hostile_bundles_are_refused_before_anything_is_sent() {
    let store = Embedded::start();
    let config = store.config("p");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "absolute path",
            tar_gz(&[regular(b"/tmp/evil.py", b"x = 1\n")]),
        ),
        (
            "symlink",
            tar_gz(&[
                regular(b"f.py", b"def f(e):\n    return 1\n"),
                (
                    link_header(b"link", EntryType::Symlink, b"/etc/passwd"),
                    b"",
                ),
            ]),
        ),
        (
            "hardlink",
            tar_gz(&[
                regular(b"f.py", b"def f(e):\n    return 1\n"),
                (link_header(b"hard", EntryType::Link, b"f.py"), b""),
            ]),
        ),
        ("too big", gzip_bomb("f.py", 300 * MIB)),
        ("no .py", tar_gz(&[regular(b"notes.txt", b"hello\n")])),
        (
            "a .py only below the top",
            tar_gz(&[
                (raw_header(b"pkg/", EntryType::Directory, 0), b""),
                regular(b"pkg/f.py", b"x = 1\n"),
                regular(b"README", b"x\n"),
            ]),
        ),
        (
            "refused ol.yaml",
            bundle(&[
                ("f.py", "def f(e):\n    return 1\n"),
                ("ol.yaml", "bad: yes\n"),
            ]),
        ),
        ("not a tar.gz", b"this is not gzip".to_vec()),
    ];
    for (what, body) in &cases {
        let err = upload(&config, "evil", body, config_check).expect_err(what);
        let expected = match *what {
            "absolute path" => matches!(err, RegistryError::AbsolutePath { .. }),
            "symlink" | "hardlink" => matches!(err, RegistryError::LinkEntry { .. }),
            "too big" => matches!(err, RegistryError::UnpackedTooLarge { .. }),
            "no .py" | "a .py only below the top" => matches!(err, RegistryError::NoEntryFile(_)),
            "refused ol.yaml" => matches!(err, RegistryError::BadConfig { .. }),
            _ => matches!(err, RegistryError::BadArchive { .. }),
        };
        assert!(expected, "{what}: {err:?}");
    }
    let err = upload(&config, "bad.name", &code("x"), config_check).expect_err("name");
    assert!(matches!(err, RegistryError::InvalidName(_)), "{err:?}");
    assert_eq!(store.requests("PUT"), 0, "nothing was sent");
    assert!(store.objects().is_empty(), "{:?}", store.objects());
    assert!(!Path::new("/tmp/evil.py").exists());
}

#[test]
fn a_stopped_store_is_a_clear_error_and_the_unpacked_code_stays() {
    let mut store = Embedded::start();
    let config = store.config("p");
    put(&config, "kept", &code("k"));
    let cache = tempfile::tempdir().expect("cache");
    let reg = S3Registry::new(&config, cache.path()).expect("registry");
    let code = reg.fetch("kept").expect("fetch").expect("kept");
    if let Some(s) = store.store.take() {
        s.stop();
    }
    let err = reg.fetch("kept").expect_err("the store is down");
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::Remote(_)), "{err:?}");
    assert!(
        msg.contains("HEAD s3://lambdas/p/kept.tar.gz") && msg.contains("onnection refused"),
        "{msg}"
    );
    assert!(reg.list().is_err());
    assert!(code.dir.join("f.py").is_file(), "the code is still there");
}

#[test]
fn the_backend_works_from_async_and_blocking_contexts() {
    let store = Embedded::start();
    let config = store.config("p");
    put(&config, "ctx", &code("c"));
    let cache = tempfile::tempdir().expect("cache");
    let reg = std::sync::Arc::new(S3Registry::new(&config, cache.path()).expect("registry"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // As the worker calls it: from a blocking thread of its runtime.
        let blocking = std::sync::Arc::clone(&reg);
        let found = tokio::task::spawn_blocking(move || blocking.fetch("ctx"))
            .await
            .expect("join");
        assert!(found.expect("fetch").is_some());
        // From the async task itself: blocks the thread, never panics.
        assert!(reg.fetch("ctx").expect("fetch").is_some());
        assert_eq!(reg.list().expect("list"), ["ctx"]);
    });
    // The last handle dropped inside an async context: no panic.
    rt.block_on(async move { drop(reg) });
}

/// Set in the child process of [`serve_until_signal_stops_on_sigterm`]:
/// the store's root.
const CHILD_ROOT: &str = "OL_TEST_CODE_STORE_ROOT";

#[test]
fn serve_until_signal_stops_on_sigterm() {
    if let Ok(root) = std::env::var(CHILD_ROOT) {
        // The child: what `ol cluster registry` does in the foreground.
        let store = CodeStore::start(store_config(Path::new(&root))).expect("code store");
        println!("ADDR={}", store.addr());
        store.serve_until_signal().expect("serve");
        return;
    }
    let root = tempfile::tempdir().expect("root");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "serve_until_signal_stops_on_sigterm",
            "--nocapture",
        ])
        .env(CHILD_ROOT, root.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child");
    // Killed even if an assertion below fails.
    struct Reap(Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().expect("stdout");
    let mut child = Reap(child);
    // Read to the end, so the child's last lines find the pipe open.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        for line in lines.map_while(Result::ok) {
            let addr = line.split_once("ADDR=").map(|(_, a)| a.trim().parse());
            if let Some(Ok(addr)) = addr {
                let _ = tx.send(addr);
            }
        }
    });
    let addr: SocketAddr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the child's address");
    put(&client_config(addr, "p"), "up", &code("u"));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.0.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the store ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(TcpStream::connect(addr).is_err(), "still listening");
    assert!(root.path().join(BUCKET).join("p/up.tar.gz").is_file());
}
