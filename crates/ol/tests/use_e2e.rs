//! End-to-end: everyday use of a worker (issue 13). The request context of
//! `f(event, ctx)` and the request id of every call (`X-Request-Id`, which
//! a lambda cannot set), return values JSON cannot encode, where
//! tracebacks go (`tracebacks`), 405's `Allow`, and the commands a user
//! reaches for: `ol invoke`, `ol new`, `ol admin describe`, `ol logs`,
//! `ol completion`.

mod common;

use std::fs;

use common::{Backend, TestWorker, on_both_backends, request_with};

const CTX: &str = r#"
def f(event, ctx):
    print("in call", ctx.request_id)
    return {
        "event": event,
        "method": ctx.method,
        "path": ctx.path,
        "query": ctx.query,
        "agent": ctx.headers.get("x-agent"),
        "request_id": ctx.request_id,
    }
"#;

const PLAIN: &str = "def f(event):\n    return event\n";

/// A WSGI app that tries to name its own request id.
const SPOOF: &str = r#"
def app(environ, start_response):
    start_response("418 I'm a teapot", [("X-Request-Id", "forged"), ("Content-Type", "text/plain")])
    return [b"teapot"]
"#;

const FAILING: &str = r#"
def f(event):
    if event == "set":
        return {1, 2}
    raise ValueError("no good\n2026-01-01T00:00:00Z  INFO worker ready")
"#;

fn header<'a>(a: &'a common::Answer, name: &str) -> Option<&'a str> {
    a.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

on_both_backends!(f_gets_the_request_context_and_every_call_an_id);

fn f_gets_the_request_context_and_every_call_an_id(backend: Backend) {
    let get_only = "triggers: {http: [{method: GET}, {method: PUT}]}\n";
    let w = TestWorker::start(
        backend,
        &[
            ("ctx", &[("f.py", CTX)]),
            ("plain", &[("f.py", PLAIN)]),
            ("spoof", &[("app.py", SPOOF)]),
            ("getonly", &[("f.py", PLAIN), ("ol.yaml", get_only)]),
        ],
        &[],
    );
    let a = request_with(
        "GET",
        &w.url("/run/ctx/a/b?y=1&y=2"),
        &[("x-agent", "test")],
        b"",
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    let id = header(&a, "x-request-id")
        .expect("X-Request-Id")
        .to_string();
    assert_eq!(id.len(), 16, "{id}");
    assert_eq!(v["request_id"], id.as_str());
    assert_eq!(v["event"], serde_json::Value::Null);
    assert_eq!(
        (&v["method"], &v["path"], &v["query"]["y"], &v["agent"]),
        (&"GET".into(), &"/a/b".into(), &"1".into(), &"test".into())
    );
    let again = w.call("GET", "/run/ctx", "");
    assert_ne!(
        header(&again, "x-request-id"),
        Some(id.as_str()),
        "one id per call"
    );

    // A plain client id is kept; one that could break a log line is not.
    let a = request_with(
        "POST",
        &w.url("/run/ctx"),
        &[("x-request-id", "trace-42")],
        b"7",
    );
    assert_eq!(header(&a, "x-request-id"), Some("trace-42"));
    assert_eq!(
        (a.json()["request_id"].as_str(), a.json()["event"].as_i64()),
        (Some("trace-42"), Some(7))
    );
    let a = request_with(
        "POST",
        &w.url("/run/ctx"),
        &[("x-request-id", "a b\"c")],
        b"",
    );
    assert_ne!(header(&a, "x-request-id"), Some("a b\"c"));
    assert_eq!(header(&a, "x-request-id").map(str::len), Some(16));

    // f(event) is unchanged: a GET with a query still gets null.
    let a = w.call("GET", "/run/plain?y=1", "");
    assert_eq!((a.status, a.body.as_str()), (200, "null"));
    assert!(header(&a, "x-request-id").is_some());

    // The lambda cannot name its call.
    let a = w.call("GET", "/run/spoof", "");
    assert_eq!((a.status, a.body.as_str()), (418, "teapot"));
    let ids: Vec<&str> = a
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-request-id"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_ne!(ids[0], "forged");

    // 405 says what would work; errors carry the id too.
    let a = w.call("POST", "/run/getonly", "");
    assert_eq!(a.status, 405, "{}", a.body);
    assert_eq!(header(&a, "allow"), Some("GET, PUT"));
    assert_eq!(
        a.json()["request_id"].as_str(),
        header(&a, "x-request-id"),
        "{}",
        a.body
    );
}

#[test]
fn failures_are_named_and_tracebacks_go_where_config_says() {
    for tracebacks in ["client", "log"] {
        let setting = format!("tracebacks={tracebacks}");
        let w = TestWorker::start(
            Backend::Process,
            &[("failing", &[("f.py", FAILING)])],
            &[&setting],
        );
        let a = w.run("failing", "\"set\"");
        assert_eq!(a.status, 500, "{}", a.body);
        assert_eq!(
            a.json()["error"],
            "TypeError: f returned a set, which JSON cannot encode"
        );
        let a = w.run("failing", "\"raise\"");
        assert_eq!(a.status, 500, "{}", a.body);
        let v = a.json();
        let id = header(&a, "x-request-id").expect("id").to_string();
        assert_eq!(v["request_id"], id.as_str());
        assert!(
            v["error"]
                .as_str()
                .unwrap_or("")
                .starts_with("ValueError: no good"),
            "{v}"
        );
        match tracebacks {
            "client" => assert!(
                v["traceback"].as_str().unwrap_or("").contains("f.py"),
                "{v}"
            ),
            _ => assert!(v.get("traceback").is_none(), "{v}"),
        }
        // Either way the worker log has the traceback, on the call's one
        // line: the lambda's text cannot start a line of its own.
        let log = fs::read_to_string(w.path().join("logs/worker.log")).expect("worker log");
        let line = log
            .lines()
            .find(|l| l.contains(&id))
            .unwrap_or_else(|| panic!("no line with {id} in {log}"));
        assert!(
            line.contains("traceback=") && line.contains("f.py"),
            "{line}"
        );
        assert!(
            !log.lines().any(|l| l.starts_with("2026-01-01")),
            "forged line: {log}"
        );
        assert_eq!(
            log.lines().filter(|l| l.contains("no good")).count(),
            1,
            "{log}"
        );
    }
}
