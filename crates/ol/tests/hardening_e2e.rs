//! End-to-end attacks on a real worker: hostile lambdas and hostile
//! clients try to make it buffer, hang or fall over, and every test checks
//! that it stays up and answers right.

mod common;

use std::fs;

use common::{TestWorker, add_lambda};

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
    let status = fs::read_to_string(format!("/proc/{}/status", w.worker_pid())).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[test]
fn response_frame_claiming_400_mib_is_refused_without_buffering_it() {
    // A long runtime limit: only the frame check can end a flood quickly.
    let w = TestWorker::start(
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
    let grown_mb = worker_rss_kb(&w).saturating_sub(rss_before) / 1024;
    assert!(grown_mb < 64, "the worker grew by {grown_mb} MiB");
}

#[test]
fn result_over_max_response_mb_is_an_error_and_the_sandbox_stays() {
    let mut w = TestWorker::start(&[("flood", &[("f.py", FLOOD)])], &[]);
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
