//! End-to-end attacks on a real worker's front door: hostile lambdas and hostile
//! clients try to make it buffer, hang or fall over, and every test checks
//! that it stays up and answers right.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Backend, TestWorker, add_lambda, ol, on_both_backends, stderr};

/// A lambda that, asked to `flood`, writes a frame header claiming a
/// 400 MiB response straight onto the runtime's socket (the only socket a
/// sandbox has) and then streams bytes until it is killed; asked for a
/// number, it returns a string of that many bytes; else its sandbox's id.
const FLOOD: &str = r#"
import os, stat, struct

# Tells sandboxes apart (pids do not: each sock sandbox's runtime is pid 1).
SANDBOX_ID = os.urandom(8).hex()

def runtime_socket():
    for name in os.listdir("/proc/self/fd"):
        try:
            if stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                return int(name)
        except OSError:
            pass
    raise RuntimeError("no socket found")

def f(event):
    if event == "flood":
        fd = runtime_socket()
        os.write(fd, struct.pack(">II", 2, 400 << 20) + b"{}")
        chunk = b"x" * (1 << 20)
        while True:
            os.write(fd, chunk)
    if isinstance(event, int):
        return "x" * event
    return SANDBOX_ID
"#;

/// The worker's resident memory in KiB.
fn worker_rss_kb(w: &TestWorker) -> u64 {
    common::proc_status(w.worker_pid(), "VmRSS")
}

on_both_backends!(response_frame_claiming_400_mib_is_refused_without_buffering_it);
fn response_frame_claiming_400_mib_is_refused_without_buffering_it(backend: Backend) {
    // A long runtime limit: only the frame check can end a flood quickly.
    let w = TestWorker::start(
        backend,
        &[("flood", &[("f.py", FLOOD)])],
        &["limits.runtime_sec=300"],
    );
    let first = w.run("flood", "\"id\"");
    assert_eq!(first.status, 200, "{}", first.body);
    let rss_before = worker_rss_kb(&w);
    for _ in 0..4 {
        let a = w.run("flood", "\"flood\"");
        assert_eq!(a.status, 502, "{}", a.body);
        let body = a.json();
        let error = body["error"].as_str().expect("error message");
        assert!(
            error.contains("limits.max_response_mb")
                && error.contains(&((400u64 << 20) + 2).to_string())
                && error.contains("6 MiB"),
            "{error}"
        );
        assert_eq!(body["lambda"], "flood");
        // The sandbox was destroyed; the next call gets a fresh one.
        let next = w.run("flood", "\"id\"");
        assert_eq!(next.status, 200, "{}", next.body);
        assert_ne!(next.body, first.body, "the flooding sandbox was reused");
    }
    let rss_after = worker_rss_kb(&w);
    eprintln!("worker VmRSS: {rss_before} KiB before, {rss_after} KiB after 4 floods");
    let grown_mb = rss_after.saturating_sub(rss_before) / 1024;
    assert!(grown_mb < 64, "the worker grew by {grown_mb} MiB");
}

on_both_backends!(result_over_max_response_mb_is_an_error_and_the_sandbox_stays);
fn result_over_max_response_mb_is_an_error_and_the_sandbox_stays(backend: Backend) {
    let mut w = TestWorker::start(backend, &[("flood", &[("f.py", FLOOD)])], &[]);
    add_lambda(
        w.path(),
        "small",
        &[
            ("f.py", FLOOD),
            ("ol.yaml", "limits: {max_response_mb: 1}\n"),
        ],
    );
    let id = w.run("flood", "\"id\"").body;
    // 7 MB of JSON against the default limit of 6 MiB.
    let a = w.run("flood", "7000000");
    assert_eq!(a.status, 500, "{}", a.body);
    let error = a.json()["error"].as_str().expect("error").to_string();
    assert!(
        error.starts_with("ResponseTooLarge")
            && error.contains("6 MiB")
            && error.contains("limits.max_response_mb"),
        "{error}"
    );
    assert_eq!(
        w.run("flood", "\"id\"").body,
        id,
        "the sandbox was replaced"
    );
    let a = w.run("flood", "6000000");
    assert_eq!((a.status, a.body.len()), (200, 6_000_002));

    // ol.yaml lowers the limit.
    let a = w.run("small", "1100000");
    assert_eq!(a.status, 500, "{}", a.body);
    assert!(a.body.contains("1 MiB"), "{}", a.body);
    assert_eq!(w.run("small", "1000").status, 200);
    w.down();
}

/// Descriptors the worker holds for TCP connections on its HTTP port
/// (the listener included); sandboxes' descriptors come and go on their
/// own and are not counted.
fn worker_http_fds(w: &TestWorker) -> usize {
    let port = format!(":{:04X}", w.port);
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9 && fields[1].ends_with(&port) {
                inodes.insert(format!("socket:[{}]", fields[9]));
            }
        }
    }
    fs::read_dir(format!("/proc/{}/fd", w.worker_pid()))
        .expect("fd dir")
        .flatten()
        .filter(|e| {
            fs::read_link(e.path())
                .is_ok_and(|target| inodes.contains(&target.to_string_lossy().into_owned()))
        })
        .count()
}

/// Whether the worker closes `conn` (EOF or reset) within 30 s.
fn closed_by_worker(conn: &mut TcpStream) -> bool {
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut buf = [0u8; 256];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            // A 408 before the close is fine too: keep reading to the end.
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

on_both_backends!(stalled_clients_cannot_exhaust_descriptors_or_lock_others_out);
fn stalled_clients_cannot_exhaust_descriptors_or_lock_others_out(backend: Backend) {
    const CAP: usize = 32;
    let w = TestWorker::start(
        backend,
        &[],
        &[
            "http.header_timeout_ms=500",
            &format!("http.max_connections={CAP}"),
        ],
    );
    assert_eq!(w.run("hello", r#"{"name": "A"}"#).status, 200);
    let fds_before = worker_http_fds(&w);
    // Ten times the cap, each with half a header line and then nothing.
    let mut stalled: Vec<TcpStream> = (0..10 * CAP)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", w.port)).expect("connect");
            c.write_all(b"POST /run/hello HTTP/1.1\r\nHost: x\r\nContent-Ty")
                .expect("write");
            c
        })
        .collect();
    // The worker holds at most the cap; the rest wait in the kernel.
    let held = worker_http_fds(&w).saturating_sub(fds_before);
    eprintln!(
        "{} stalled clients: the worker holds {held} more connection descriptors (cap {CAP})",
        stalled.len()
    );
    assert!(held <= CAP, "the worker holds {held} more descriptors");
    // A normal client is served once slow ones are cut off.
    let a = w.run("hello", r#"{"name": "Bob"}"#);
    assert_eq!((a.status, a.body.as_str()), (200, "\"Hello, Bob!\""));
    for (i, c) in stalled.iter_mut().enumerate() {
        assert!(closed_by_worker(c), "stalled connection {i} is still open");
    }
    // Only the listener and, at most, the normal client's kept-alive
    // connection remain.
    assert!(worker_http_fds(&w) <= fds_before + 1, "descriptors leaked");
    assert_eq!(w.run("hello", r#"{"name": "C"}"#).status, 200);
}

#[test]
fn worker_up_refuses_config_that_can_never_work_naming_the_key() {
    let dir = tempfile::Builder::new()
        .prefix("ol-e2e-")
        .tempdir()
        .expect("tempdir");
    let out = ol(dir.path(), &["worker", "init"]);
    assert!(out.status.success(), "init: {}", stderr(&out));
    for (setting, key) in [
        ("mem_pool_mb=0", "mem_pool_mb"),
        ("limits.mem_mb=100000000", "mem_pool_mb"),
        ("limits.procs=4294967295", "limits.procs"),
        ("limits.runtime_sec=1000000", "limits.runtime_sec"),
        ("limits.max_response_mb=0", "limits.max_response_mb"),
        ("limits.disk_mb=0", "limits.disk_mb"),
        ("http.max_connections=0", "http.max_connections"),
        ("http.header_timeout_ms=0", "http.header_timeout_ms"),
        ("scaling.max_instances=0", "scaling.max_instances"),
        (
            "installer_limits.runtime_sec=0",
            "installer_limits.runtime_sec",
        ),
    ] {
        let out = ol(dir.path(), &["worker", "up", "-d", "-o", setting]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{setting}: started");
        let lines: Vec<&str> = err.trim().lines().collect();
        assert_eq!(lines.len(), 1, "{setting}: {err}");
        assert!(lines[0].contains(&format!("`{key}`")), "{setting}: {err}");
        assert!(!dir.path().join("worker/worker.pid").exists(), "{setting}");
    }
}

/// A lambda packed as a tar.gz, with `ol_yaml` as its ol.yaml.
fn packed_with_ol_yaml(ol_yaml: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("f.py"), "def f(event):\n    return 1\n").expect("f.py");
    fs::write(dir.path().join("ol.yaml"), ol_yaml).expect("ol.yaml");
    ol_registry::pack_lambda(dir.path()).expect("pack")
}

on_both_backends!(uploads_with_hostile_ol_yaml_are_refused_with_400);
fn uploads_with_hostile_ol_yaml_are_refused_with_400(backend: Backend) {
    let w = TestWorker::start(backend, &[], &[]);
    let block: String = (0..300).map(|i| format!("{}a:\n", " ".repeat(i))).collect();
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for (n, prev) in ["b", "c", "d", "e", "f", "g", "h", "i", "j"]
        .iter()
        .zip(["a", "b", "c", "d", "e", "f", "g", "h", "i"])
    {
        bomb.push_str(&format!(
            "{n}: &{n} [{}]\n",
            vec![format!("*{prev}"); 10].join(", ")
        ));
    }
    for (what, text, says) in [
        // A megabyte of `{a: ` packs into about a kilobyte and cost minutes.
        (
            "1 MiB of {a: ",
            "{a: ".repeat(1 << 18),
            "over the limit of 65536 bytes",
        ),
        (
            "deep flow maps",
            "{a: ".repeat(16_000),
            "nesting is deeper than 32",
        ),
        (
            "deep flow sequences",
            "[".repeat(65_000),
            "nesting is deeper than 32",
        ),
        ("deep block maps", block, "nesting is deeper than 32"),
        ("alias bomb", bomb, "aliases"),
    ] {
        let upload = packed_with_ol_yaml(&text);
        assert!(upload.len() < 8192, "{what}: {} bytes", upload.len());
        let a = common::request("POST", &w.url("/registry/hostile"), &upload);
        assert_eq!(a.status, 400, "{what}: {}", a.body);
        let error = a.json()["error"].as_str().expect("error").to_string();
        assert!(
            error.starts_with("ol.yaml: ") && error.contains(says),
            "{what}: {error}"
        );
    }
    assert_eq!(w.run("hostile", "1").status, 404, "nothing was installed");
    let a = common::request(
        "POST",
        &w.url("/registry/fine"),
        &packed_with_ol_yaml("limits: {mem_mb: 32}\n"),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(w.run("fine", "1").status, 200);
}
