//! OpenLambda's own conformance cases (upstream `scripts/test.py` in
//! github.com/open-lambda/open-lambda) that need no PyPI packages, ported
//! to stdlib-only lambdas.

mod common;

use std::thread;
use std::time::Duration;

use common::{Backend, TestWorker, eventually, on_both_backends};

const WSGI_ECHO: &str = "def app(environ, start_response):\n    body = environ['wsgi.input'].read(int(environ.get('CONTENT_LENGTH') or 0))\n    start_response('200 OK', [('Content-Type', 'application/octet-stream'), ('X-Path', environ['PATH_INFO']), ('X-Query', environ['QUERY_STRING'])])\n    return [body]\n";

const ASGI_APP: &str = "async def app(scope, receive, send):\n    if scope['type'] != 'http':\n        return\n    message = await receive()\n    await send({'type': 'http.response.start', 'status': 201, 'headers': [(b'x-method', scope['method'].encode())]})\n    await send({'type': 'http.response.body', 'body': b'asgi:' + message.get('body', b'')})\n";

const SLEEPY: &str = "import time\n\ndef f(event):\n    time.sleep(event)\n    return 'woke'\n";

on_both_backends!(wsgi_post_echo_with_path_and_query);
fn wsgi_post_echo_with_path_and_query(backend: Backend) {
    let w = TestWorker::start(backend, &[("echo-wsgi", &[("app.py", WSGI_ECHO)])], &[]);
    let a = common::request("POST", &w.url("/run/echo-wsgi/a/b?x=1&y=2"), b"posted");
    assert_eq!((a.status, a.body.as_str()), (200, "posted"));
    let header = |name: &str| {
        a.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-path").as_deref(), Some("/a/b"));
    assert_eq!(header("x-query").as_deref(), Some("x=1&y=2"));
    // A binary body comes back byte for byte.
    let body: Vec<u8> = (0..=255u8).collect();
    let raw = common::request_bytes("POST", &w.url("/run/echo-wsgi"), &body);
    assert_eq!(raw, body);
}

on_both_backends!(hand_written_asgi_app);
fn hand_written_asgi_app(backend: Backend) {
    let w = TestWorker::start(backend, &[("asgi", &[("app.py", ASGI_APP)])], &[]);
    let a = w.call("PUT", "/run/asgi", "payload");
    assert_eq!((a.status, a.body.as_str()), (201, "asgi:payload"));
    assert!(
        a.headers.iter().any(|(k, v)| k == "x-method" && v == "PUT"),
        "{:?}",
        a.headers
    );
}

on_both_backends!(entry_file_and_entry_name_from_environment);
fn entry_file_and_entry_name_from_environment(backend: Backend) {
    let w = TestWorker::start(
        backend,
        &[
            (
                "entry",
                &[
                    ("main.py", "def f(event):\n    return 'from main.py'\n"),
                    ("ol.yaml", "environment: {OL_ENTRY_FILE: main.py}\n"),
                ],
            ),
            (
                "wsgi-entry",
                &[
                    (
                        "app.py",
                        "def server(environ, start_response):\n    start_response('200 OK', [])\n    return [b'named wsgi entry']\n",
                    ),
                    ("ol.yaml", "environment: {OL_WSGI_ENTRY: server}\n"),
                ],
            ),
        ],
        &[],
    );
    assert_eq!(w.run("entry", "{}").body, "\"from main.py\"");
    assert_eq!(
        w.call("GET", "/run/wsgi-entry", "").body,
        "named wsgi entry"
    );
}

on_both_backends!(stress_one_lambda_all_answers_correct);
fn stress_one_lambda_all_answers_correct(backend: Backend) {
    let w = TestWorker::start(backend, &[], &[]);
    let answers: Vec<(usize, u16, String)> = thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let w = &w;
                s.spawn(move || {
                    (0..50)
                        .map(|i| {
                            let n = t * 1000 + i;
                            let a = w.run("hello", &format!(r#"{{"name": "n{n}"}}"#));
                            (n, a.status, a.body)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(answers.len(), 400);
    for (n, status, body) in answers {
        assert_eq!((status, body), (200, format!("\"Hello, n{n}!\"")));
    }
}

on_both_backends!(full_queue_is_429);
fn full_queue_is_429(backend: Backend) {
    let w = TestWorker::start(
        backend,
        &[("sleepy", &[("f.py", SLEEPY)])],
        &["scaling.max_instances=1", "scaling.max_queue=1"],
    );
    assert_eq!(w.run("sleepy", "0").status, 200);
    // One call runs (1 s), one waits, the third finds the queue full.
    let running = {
        let url = w.url("/run/sleepy");
        thread::spawn(move || common::request("POST", &url, b"1").status)
    };
    thread::sleep(Duration::from_millis(200));
    let queued = {
        let url = w.url("/run/sleepy");
        thread::spawn(move || common::request("POST", &url, b"0").status)
    };
    thread::sleep(Duration::from_millis(200));
    let a = w.run("sleepy", "0");
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(
        a.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("scaling.max_queue")),
        "{}",
        a.body
    );
    assert_eq!(running.join().expect("thread"), 200);
    assert_eq!(queued.join().expect("thread"), 200);
    assert!(eventually(Duration::from_secs(5), || w
        .run("sleepy", "0")
        .status
        == 200));
}

on_both_backends!(idle_sandboxes_are_scaled_down_and_come_back_on_demand);
fn idle_sandboxes_are_scaled_down_and_come_back_on_demand(backend: Backend) {
    let w = TestWorker::start(
        backend,
        &[],
        &["scaling.idle_timeout_ms=300", "pause_after_idle_ms=0"],
    );
    assert_eq!(w.run("hello", r#"{"name": "a"}"#).status, 200);
    assert_eq!(w.sandbox_pids("hello").len(), 1);
    assert!(
        eventually(Duration::from_secs(5), || w
            .sandbox_pids("hello")
            .is_empty()),
        "the idle sandbox was never destroyed"
    );
    let a = w.run("hello", r#"{"name": "b"}"#);
    assert_eq!((a.status, a.body.as_str()), (200, "\"Hello, b!\""));
}

on_both_backends!(memory_pool_kept_full_by_busy_sandboxes_is_503);
fn memory_pool_kept_full_by_busy_sandboxes_is_503(backend: Backend) {
    let w = TestWorker::start(
        backend,
        &[("sleepy", &[("f.py", SLEEPY)])],
        &["mem_pool_mb=50", "limits.mem_mb=50"],
    );
    let busy = {
        let url = w.url("/run/sleepy");
        thread::spawn(move || common::request("POST", &url, b"12").status)
    };
    assert!(eventually(Duration::from_secs(10), || w
        .sandbox_pids("sleepy")
        .len()
        == 1));
    // Nothing idle to evict, the only sandbox busy past the admission wait.
    let a = w.run("hello", r#"{"name": "x"}"#);
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(
        a.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("mem_pool_mb")),
        "{}",
        a.body
    );
    assert_eq!(busy.join().expect("thread"), 200);
}
