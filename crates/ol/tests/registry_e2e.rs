//! End-to-end tests of the registry: `ol admin install|ls|rm`, the
//! worker's registry API (hostile uploads refused), and code updates seen
//! after `registry_cache_ms` and not before.

mod common;

use std::fs;
use std::time::Duration;

use common::{Backend, TestWorker, add_lambda, eventually, ol, on_both_backends, stderr};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

on_both_backends!(admin_install_ls_rm_through_a_running_worker);
fn admin_install_ls_rm_through_a_running_worker(backend: Backend) {
    let w = TestWorker::start(backend, &[], &[]);
    let src = tempfile::tempdir().expect("tempdir");
    let lambda = src.path().join("shout");
    fs::create_dir(&lambda).expect("mkdir");
    fs::write(lambda.join("f.py"), "def f(e):\n    return e.upper()\n").expect("write");
    let out = ol(
        w.path(),
        &["admin", "install", lambda.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let a = w.run("shout", "\"hey\"");
    assert_eq!((a.status, a.body.as_str()), (200, "\"HEY\""));
    let out = ol(w.path(), &["admin", "ls"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let names: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert!(
        names.contains(&"shout".to_string()) && names.contains(&"hello".to_string()),
        "{names:?}"
    );

    // Reinstalling new code is seen by the next call at once.
    fs::write(lambda.join("f.py"), "def f(e):\n    return e.lower()\n").expect("write");
    let out = ol(
        w.path(),
        &["admin", "install", lambda.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let a = w.run("shout", "\"HEY\"");
    assert_eq!((a.status, a.body.as_str()), (200, "\"hey\""));

    let out = ol(w.path(), &["admin", "rm", "shout"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(w.run("shout", "\"x\"").status, 404);
    let out = ol(w.path(), &["admin", "rm", "shout"]);
    assert!(!out.status.success());
}

#[test]
fn admin_works_on_a_stopped_worker_dir_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(ol(dir.path(), &["worker", "init"]).status.success());
    let src = tempfile::tempdir().expect("tempdir");
    let lambda = src.path().join("offline");
    fs::create_dir(&lambda).expect("mkdir");
    fs::write(lambda.join("f.py"), "def f(e):\n    return 1\n").expect("write");
    fs::write(
        lambda.join("ol.yaml"),
        "triggers: {http: [{method: FETCH}]}\n",
    )
    .expect("write");
    let out = ol(
        dir.path(),
        &["admin", "install", lambda.to_str().expect("utf-8")],
    );
    assert!(!out.status.success(), "a bad ol.yaml is refused");
    assert!(stderr(&out).contains("FETCH"), "{}", stderr(&out));
    fs::remove_file(lambda.join("ol.yaml")).expect("rm");
    let out = ol(
        dir.path(),
        &["admin", "install", lambda.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.path().join("registry/offline/f.py").is_file());
}

/// A gzipped tar holding one entry with a raw (unchecked) path.
fn tar_gz_with_raw_path(path: &str, data: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..path.len()].copy_from_slice(path.as_bytes());
    header[100..108].copy_from_slice(b"0000644\0");
    header[108..116].copy_from_slice(b"0000000\0");
    header[116..124].copy_from_slice(b"0000000\0");
    let size = format!("{:011o}\0", data.len());
    header[124..136].copy_from_slice(size.as_bytes());
    header[136..148].copy_from_slice(b"00000000000\0");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(data);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).expect("gzip");
    gz.finish().expect("gzip")
}

on_both_backends!(hostile_uploads_are_refused_with_400_and_write_nothing);
fn hostile_uploads_are_refused_with_400_and_write_nothing(backend: Backend) {
    let w = TestWorker::start(backend, &[], &[]);
    let before = fs::read_dir(w.path()).expect("ls").count();
    for (path, what) in [("../evil.py", "traversal"), ("/tmp/evil.py", "absolute")] {
        let body = tar_gz_with_raw_path(path, b"x = 1\n");
        let a = common::request("POST", &w.url("/registry/evil"), &body);
        assert_eq!(a.status, 400, "{what}: {}", a.body);
        assert!(
            a.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains(path.trim_start_matches("../"))),
            "{}",
            a.body
        );
    }
    let a = common::request("POST", &w.url("/registry/evil"), b"not a gzip at all");
    assert_eq!(a.status, 400, "{}", a.body);
    let a = common::request(
        "POST",
        &w.url("/registry/bad.name"),
        &tar_gz_with_raw_path("f.py", b"def f(e): return 1\n"),
    );
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(!w.path().join("registry/evil").exists());
    assert!(!w.path().join("evil.py").exists() && !std::path::Path::new("/tmp/evil.py").exists());
    assert_eq!(fs::read_dir(w.path()).expect("ls").count(), before);
    assert_eq!(w.run("evil", "{}").status, 404);

    // A benign upload through the same route works: 201 and callable.
    let ok = tar_gz_with_raw_path("f.py", b"def f(e):\n    return 'uploaded'\n");
    let a = common::request("POST", &w.url("/registry/good"), &ok);
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(w.run("good", "{}").body, "\"uploaded\"");
    let a = w.call("GET", "/registry/good/config", "");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["triggers"]["http"], serde_json::Value::Null);
    let a = w.call("DELETE", "/registry/good", "");
    assert_eq!(a.status, 204, "{}", a.body);
    assert_eq!(w.call("DELETE", "/registry/good", "").status, 404);
}

/// A worker on `backend` with `registry_cache_ms` set to `cache_ms`,
/// whose lambda `ver` answered 1 and then had its code changed to answer
/// 2.
fn worker_with_changed_code(backend: Backend, cache_ms: u64) -> TestWorker {
    let w = TestWorker::start(
        backend,
        &[("ver", &[("f.py", "def f(e):\n    return 1\n")])],
        &[&format!("registry_cache_ms={cache_ms}")],
    );
    assert_eq!(w.run("ver", "{}").body, "1");
    // Make sure the new file's mtime differs from the old one. Of the same
    // size, within the second: a __pycache__ next to the code (checked by
    // size and mtime in whole seconds) would hide the change.
    std::thread::sleep(Duration::from_millis(20));
    add_lambda(w.path(), "ver", &[("f.py", "def f(e):\n    return 2\n")]);
    w
}

on_both_backends!(code_update_is_not_seen_within_the_cache_interval);
fn code_update_is_not_seen_within_the_cache_interval(backend: Backend) {
    // Ten minutes: no test call comes after it.
    let w = worker_with_changed_code(backend, 600_000);
    let first = w.sandbox_pids("ver");
    for _ in 0..5 {
        assert_eq!(
            w.run("ver", "{}").body,
            "1",
            "code re-read before registry_cache_ms"
        );
    }
    assert_eq!(w.sandbox_pids("ver"), first, "the sandbox was kept");
}

on_both_backends!(code_update_is_seen_after_the_cache_interval);
fn code_update_is_seen_after_the_cache_interval(backend: Backend) {
    let w = worker_with_changed_code(backend, 300);
    let first = w.sandbox_pids("ver");
    assert!(
        eventually(Duration::from_secs(10), || w.run("ver", "{}").body == "2"),
        "new code never seen"
    );
    let now = w.sandbox_pids("ver");
    assert_eq!(now.len(), 1, "the old sandbox was retired");
    assert_ne!(now, first);
}

on_both_backends!(a_worker_reads_its_lambdas_from_another_workers_http_registry);
fn a_worker_reads_its_lambdas_from_another_workers_http_registry(backend: Backend) {
    let server = TestWorker::start(
        backend,
        &[("shared", &[("f.py", "def f(e):\n    return 'v1'\n")])],
        &[],
    );
    let base = server.url("/registry");
    let registry_opt = format!("registry={base}");
    let client = TestWorker::start(backend, &[], &[&registry_opt, "registry_cache_ms=300"]);
    let a = client.run("shared", "{}");
    assert_eq!((a.status, a.body.as_str()), (200, "\"v1\""));
    assert_eq!(client.run("nowhere", "{}").status, 404);
    // The client cannot upload to a remote registry through itself.
    assert_eq!(client.call("GET", "/registry/", "").status, 404);
    std::thread::sleep(Duration::from_millis(20));
    add_lambda(
        server.path(),
        "shared",
        &[("f.py", "def f(e):\n    return 'v2'\n")],
    );
    assert!(
        eventually(Duration::from_secs(10), || client.run("shared", "{}").body
            == "\"v2\""),
        "the client never saw the new code"
    );
    // An unchanged lambda answers 304 to a conditional GET.
    let a = server.call("GET", "/registry/shared.tar.gz", "");
    let etag = a
        .headers
        .iter()
        .find(|(k, _)| k == "etag")
        .map(|(_, v)| v.clone())
        .expect("etag");
    let again = common::request_with_header(
        "GET",
        &server.url("/registry/shared.tar.gz"),
        "if-none-match",
        &etag,
    );
    assert_eq!(again, 304);
}

/// The keys of the code store of [`a_worker_reads_its_lambdas_from_an_s3_code_store`].
const S3_ACCESS: &str = "e2e-access";
const S3_SECRET: &str = "e2e-secret-never-logged";

/// A bundle holding `f.py` that answers `answer`.
fn bundle_answering(answer: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("f.py"),
        format!("def f(e):\n    return {answer:?}\n"),
    )
    .expect("write");
    ol_registry::pack_lambda(dir.path()).expect("pack")
}

on_both_backends!(a_worker_reads_its_lambdas_from_an_s3_code_store);
fn a_worker_reads_its_lambdas_from_an_s3_code_store(backend: Backend) {
    use ol_registry::code_store::{CodeStore, StoreConfig};

    let root = tempfile::tempdir().expect("store root");
    let store = CodeStore::start(StoreConfig {
        root: root.path().to_path_buf(),
        bind: ([127, 0, 0, 1], 0).into(),
        bucket: "lambdas".into(),
        access_key: S3_ACCESS.into(),
        secret_key: S3_SECRET.into(),
    })
    .expect("code store");
    let endpoint = format!("http://{}", store.addr());
    let s3 = ol_registry::S3Config {
        bucket: "lambdas".into(),
        prefix: "e2e".into(),
        endpoint: endpoint.clone(),
        access_key: S3_ACCESS.into(),
        secret_key: S3_SECRET.into(),
        allow_http: true,
        ..ol_registry::S3Config::default()
    };
    // The bundle checks are ol_registry's own; the ol.yaml check is the
    // lambda layer's and these bundles have no ol.yaml.
    let upload = |answer: &str| {
        ol_registry::upload(&s3, "ver", &bundle_answering(answer), |_| {
            Ok::<(), String>(())
        })
        .expect("upload");
    };
    upload("v1");
    let w = TestWorker::start(
        backend,
        &[],
        &[
            "registry=s3://lambdas/e2e",
            &format!("registry_s3.endpoint={endpoint}"),
            &format!("registry_s3.access_key={S3_ACCESS}"),
            &format!("registry_s3.secret_key={S3_SECRET}"),
            "registry_s3.allow_http=true",
            "registry_cache_ms=300",
        ],
    );
    let a = w.run("ver", "{}");
    assert_eq!((a.status, a.body.as_str()), (200, "\"v1\""));
    assert_eq!(w.run("nowhere", "{}").status, 404);
    let registry = &w.stats()["registry"];
    assert_eq!(registry["kind"], "s3", "{registry}");
    assert_eq!(registry["ok"], true, "{registry}");
    // Uploads go to the store, not through a worker whose registry is S3.
    assert_eq!(w.call("GET", "/registry/", "").status, 404);

    // A new bundle is seen after registry_cache_ms, on a new sandbox.
    let first = w.sandbox_pids("ver");
    upload("v2");
    assert!(
        eventually(Duration::from_secs(10), || w.run("ver", "{}").body
            == "\"v2\""),
        "the worker never saw the new code"
    );
    assert_ne!(w.sandbox_pids("ver"), first);

    // Unchanged code is revalidated by HEAD alone: checks go on, no GET.
    let count = |method: &str| store.requests().get(method).copied().unwrap_or(0);
    let (heads, gets) = (count("HEAD"), count("GET"));
    assert!(
        eventually(Duration::from_secs(10), || {
            assert_eq!(w.run("ver", "{}").body, "\"v2\"");
            count("HEAD") >= heads + 2
        }),
        "the worker stopped checking for new code"
    );
    assert_eq!(
        count("GET"),
        gets,
        "an unchanged lambda is never downloaded again"
    );

    // The store goes down: the worker keeps serving the code it has and
    // says so in /stats.
    let pids = w.sandbox_pids("ver");
    store.stop();
    assert!(
        eventually(Duration::from_secs(10), || {
            let a = w.run("ver", "{}");
            assert_eq!((a.status, a.body.as_str()), (200, "\"v2\""), "cached code");
            w.stats()["registry"]["ok"] == false
        }),
        "/stats never said the registry is down"
    );
    let stats = w.stats();
    let registry = &stats["registry"];
    let last_error = registry["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("s3://lambdas/e2e/ver.tar.gz")
            && last_error.contains("onnection refused"),
        "{registry}"
    );
    assert!(registry["last_ok_ms_ago"].is_u64(), "{registry}");
    assert_eq!(w.sandbox_pids("ver"), pids, "the same sandbox serves on");
    // A lambda this worker never fetched cannot be served: a clear error.
    let a = w.run("never", "{}");
    assert_eq!(a.status, 500, "{}", a.body);
    assert!(
        a.body.contains("s3://lambdas/e2e/never.tar.gz"),
        "{}",
        a.body
    );

    // The secret is in no answer and no log line.
    assert!(!stats.to_string().contains(S3_SECRET));
    let log = fs::read_to_string(w.path().join("logs/worker.log")).unwrap_or_default();
    assert!(
        log.contains("s3://lambdas/e2e"),
        "the log names the registry"
    );
    assert!(!log.contains(S3_SECRET), "the secret is in the log");
}
