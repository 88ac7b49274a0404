//! End-to-end tests of gRPC (`ol.v1.Lambda/Invoke`, docs/lb.md "gRPC"),
//! as a user calls it: a Python client on grpcio, its stubs generated at
//! test time by grpcio-tools from crates/worker/proto/ol/v1/lambda.proto
//! (so the worker's hand-derived messages are checked against the .proto),
//! calls a worker directly and three workers through `ol lb`; `ol invoke
//! --grpc` does too. The Python with grpcio and grpcio-tools is
//! `$OL_TEST_GRPC_PYTHON`, by default the venv .ci/run makes
//! ([`DEFAULT_PYTHON`]). HAProxy must be installed (`.ci/run` does).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::lb::{TestLb, stdout};
use common::{Backend, TestWorker, free_ports, ol_bin, stderr};
use serde_json::{Value, json};

/// The Python of the venv .ci/run installs grpcio and grpcio-tools into.
const DEFAULT_PYTHON: &str = "/var/tmp/ol-ci-grpcio-1.85.1/bin/python";

/// A lambda `f(event, ctx)` saying which worker ran it and what it saw.
fn who(n: usize) -> String {
    format!(
        "def f(event, ctx):\n    return {{'worker': {n}, 'event': event, 'method': ctx.method, \
         'path': ctx.path, 'headers': ctx.headers, 'request_id': ctx.request_id}}\n"
    )
}

/// A WSGI app answering with a status and header of its own.
const TEAPOT: &str = r#"
def app(environ, start_response):
    start_response("418 I'm a teapot", [("X-Pot", "yes")])
    return [b"short and stout"]
"#;

const BOOM: &str = "def f(event):\n    raise ValueError('asked to fail')\n";

/// A worker (`n` says its number) holding `who`, `teapot`, `boom` and
/// `f0`..`f11` (each a `who`), with `overrides`.
fn worker(n: usize, overrides: &[&str]) -> TestWorker {
    let code = who(n);
    let files = [("f.py", code.as_str())];
    let teapot = [("app.py", TEAPOT)];
    let boom = [("f.py", BOOM)];
    let names: Vec<String> = (0..12).map(|i| format!("f{i}")).collect();
    let mut lambdas: Vec<(&str, &[(&str, &str)])> =
        vec![("who", &files), ("teapot", &teapot), ("boom", &boom)];
    for name in &names {
        lambdas.push((name.as_str(), &files));
    }
    TestWorker::start(Backend::Process, &lambdas, overrides)
}

/// The Python client: grpcio, and stubs generated from the repository's
/// .proto into a temp dir.
struct GrpcPython {
    python: PathBuf,
    stubs: tempfile::TempDir,
}

impl GrpcPython {
    fn new() -> Self {
        let python = std::env::var_os("OL_TEST_GRPC_PYTHON")
            .map_or_else(|| PathBuf::from(DEFAULT_PYTHON), PathBuf::from);
        let stubs = tempfile::Builder::new()
            .prefix("ol-grpc-stubs-")
            .tempdir()
            .expect("tempdir");
        let proto_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../worker/proto");
        let out = Command::new(&python)
            .args(["-m", "grpc_tools.protoc", "-I"])
            .arg(&proto_root)
            .arg(format!("--python_out={}", stubs.path().display()))
            .arg(format!("--grpc_python_out={}", stubs.path().display()))
            .arg("ol/v1/lambda.proto")
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): these tests need a Python with grpcio and grpcio-tools \
                     (.ci/run makes it; or set OL_TEST_GRPC_PYTHON)",
                    python.display()
                )
            });
        assert!(
            out.status.success(),
            "generating the Python stubs failed (grpcio-tools missing? .ci/run installs it): {}",
            stderr(&out)
        );
        Self { python, stubs }
    }

    /// Makes `calls` (see tests/grpc/invoke.py) in order on one channel to
    /// `target` (`HOST:PORT`); one answer for each.
    fn call(&self, target: &str, calls: &[Value]) -> Vec<Value> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc/invoke.py");
        let mut child = Command::new(&self.python)
            .arg(&script)
            .env("PYTHONPATH", self.stubs.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the Python client");
        let job = json!({"target": target, "calls": calls}).to_string();
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(job.as_bytes())
            .expect("write the calls");
        let out = child.wait_with_output().expect("the Python client");
        assert!(out.status.success(), "the Python client: {}", stderr(&out));
        let answers: Vec<Value> =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)));
        assert_eq!(answers.len(), calls.len());
        answers
    }
}

/// HAProxy's `show stat` of the balancer, from its admin socket.
fn engine_stats(lb: &TestLb) -> String {
    use std::io::Read;
    let mut socket =
        std::os::unix::net::UnixStream::connect(lb.dir.join("admin.sock")).expect("admin.sock");
    socket.write_all(b"show stat\n").expect("show stat");
    let mut csv = String::new();
    socket.read_to_string(&mut csv).expect("read the stats");
    csv
}

/// The servers of the gRPC backend whose last health check passed.
fn grpc_checks_passed(lb: &TestLb) -> usize {
    let csv = engine_stats(lb);
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .map(|h| h.split(',').collect())
        .unwrap_or_default();
    let column = |name: &str| header.iter().position(|c| *c == name);
    let (Some(px), Some(sv), Some(check)) =
        (column("pxname"), column("svname"), column("check_status"))
    else {
        return 0;
    };
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.get(px) == Some(&"workers-grpc") && f.get(sv) != Some(&"BACKEND"))
        .filter(|f| f.get(check) == Some(&"L7OK"))
        .count()
}

/// A call of `name` with `body`, named in the `ol-lambda` metadata.
fn named_call(name: &str, body: &str) -> Value {
    json!({"name": name, "body": body, "metadata": [["ol-lambda", name]]})
}

/// The body of a successful call, as JSON.
fn ok_body(answer: &Value) -> Value {
    assert_eq!(answer["code"], "OK", "{answer}");
    serde_json::from_str(answer["body"].as_str().expect("body")).expect("a JSON body")
}

/// Asserts that `answer` failed with gRPC status `code` saying `says`.
fn assert_failed(answer: &Value, code: &str, says: &str) {
    assert_eq!(answer["code"], code, "{answer}");
    assert!(
        answer["details"].as_str().is_some_and(|d| d.contains(says)),
        "{answer}"
    );
}

#[test]
fn grpc_calls_a_worker_through_the_http_call_path_and_ol_invoke_does_too() {
    let python = GrpcPython::new();
    let w = worker(0, &["limits.max_body_mb=1"]);
    let target = w.url("").trim_start_matches("http://").to_string();
    let calls = [
        // Metadata and the request's headers (which win) reach ctx, as
        // does the client's request id; gRPC's own metadata does not.
        json!({
            "name": "who",
            "body": "{\"a\": 1}",
            "headers": {"x-both": "message", "content-type": "application/json"},
            "metadata": [["x-tenant", "t1"], ["x-both", "metadata"], ["x-request-id", "grpc-e2e-1"], ["ol-lambda", "who"]],
        }),
        json!({"name": "teapot", "body": ""}),
        json!({"name": "nosuch", "body": "{}"}),
        json!({"name": "a.b", "body": "{}"}),
        json!({"name": "boom", "body": "{}"}),
        json!({"name": "who", "body": "x".repeat(1_200_000)}),
        json!({"name": "who", "body": "{}", "metadata": [["ol-lambda", "teapot"]]}),
    ];
    let answers = python.call(&target, &calls);

    let seen = ok_body(&answers[0]);
    assert_eq!(answers[0]["status"], 200);
    assert_eq!(seen["event"], json!({"a": 1}));
    assert_eq!(
        (&seen["method"], &seen["path"]),
        (&json!("POST"), &json!("/"))
    );
    let headers = &seen["headers"];
    assert_eq!(headers["x-tenant"], "t1", "{headers}");
    assert_eq!(headers["x-both"], "message", "{headers}");
    assert_eq!(headers["content-type"], "application/json", "{headers}");
    assert!(headers.get("te").is_none(), "{headers}");
    assert_eq!(seen["request_id"], "grpc-e2e-1");
    assert_eq!(answers[0]["metadata"]["x-request-id"], "grpc-e2e-1");
    assert_eq!(answers[0]["headers"]["x-request-id"], "grpc-e2e-1");
    // The lambda's own status and headers are its answer, not an error.
    assert_eq!(answers[1]["code"], "OK", "{}", answers[1]);
    assert_eq!(answers[1]["status"], 418);
    assert_eq!(answers[1]["body"], "short and stout");
    assert_eq!(answers[1]["headers"]["x-pot"], "yes");
    assert_failed(&answers[2], "NOT_FOUND", "nosuch");
    assert!(
        answers[2]["metadata"]["x-request-id"].is_string(),
        "{}",
        answers[2]
    );
    assert_failed(&answers[3], "INVALID_ARGUMENT", "a.b");
    assert_failed(&answers[4], "INTERNAL", "asked to fail");
    assert_failed(&answers[5], "RESOURCE_EXHAUSTED", "limits.max_body_mb");
    assert_failed(&answers[6], "INVALID_ARGUMENT", "ol-lambda");
    // gRPC calls are the worker's calls: counted as HTTP's are (two
    // refused before the call path: the oversized and the misnamed).
    let stats = w.stats();
    assert_eq!(stats["invocations"], 5, "{stats}");
    // HTTP on the same port still works.
    assert_eq!(w.run("who", "{}").status, 200);

    // ol invoke --grpc: the body on stdout; errors fail with the status.
    let dir = w.path().to_path_buf();
    let out = common::ol(
        &dir,
        &[
            "invoke",
            "--grpc",
            "who",
            "-d",
            "{\"b\": 2}",
            "-H",
            "x-tenant: cli",
            "-v",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: Value = serde_json::from_str(&stdout(&out)).expect("JSON on stdout");
    assert_eq!(printed["event"], json!({"b": 2}));
    assert_eq!(printed["headers"]["x-tenant"], "cli");
    assert!(
        stderr(&out).contains("OK, status 200 in"),
        "{}",
        stderr(&out)
    );
    let out = common::ol(&dir, &["invoke", "--grpc", "nosuch", "-d", "{}"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("nosuch failed with gRPC status 5 (NotFound)"),
        "{}",
        stderr(&out)
    );
    let out = common::ol(&dir, &["invoke", "--grpc", "teapot"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("teapot answered 418: short and stout"),
        "{}",
        stderr(&out)
    );
    let out = common::ol(&dir, &["invoke", "--grpc", "who", "-X", "GET"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("POST"), "{}", stderr(&out));
}

#[test]
fn grpc_through_the_balancer_keeps_each_lambda_on_one_worker() {
    let python = GrpcPython::new();
    let workers: Vec<TestWorker> = (0..3).map(|n| worker(n, &[])).collect();
    let refs: Vec<&TestWorker> = workers.iter().collect();
    let mut lb = TestLb::up(&refs, &["--policy", "name"]);
    let target = format!("127.0.0.1:{}", lb.port);
    // The workers' HTTP/2 health checks pass, as their HTTP/1.1 ones do.
    assert!(
        common::eventually(std::time::Duration::from_secs(5), || {
            grpc_checks_passed(&lb) == 3
        }),
        "{}",
        engine_stats(&lb)
    );

    let mut calls = Vec::new();
    for round in 0..3 {
        for i in 0..12 {
            calls.push(named_call(
                &format!("f{i}"),
                &format!("{{\"round\": {round}}}"),
            ));
        }
    }
    calls.push(json!({"name": "f0", "body": "{}"}));
    calls.push(named_call("nosuch", "{}"));
    let answers = python.call(&target, &calls);
    let mut home: BTreeMap<String, u64> = BTreeMap::new();
    for (call, answer) in calls.iter().zip(&answers).take(36) {
        let lambda = call["name"].as_str().expect("name").to_string();
        let w = ok_body(answer)["worker"].as_u64().expect("worker");
        assert_eq!(
            *home.entry(lambda.clone()).or_insert(w),
            w,
            "{lambda} moved"
        );
    }
    let used: BTreeSet<u64> = home.values().copied().collect();
    assert!(used.len() >= 2, "12 lambdas all on one worker: {home:?}");
    // Without the metadata the balancer cannot place the call: it says
    // so as a gRPC status; a worker's error passes as it is.
    assert_failed(&answers[36], "INVALID_ARGUMENT", "ol-lambda");
    assert_failed(&answers[37], "NOT_FOUND", "nosuch");

    // HTTP shares the port; ol invoke --grpc --url goes through it too,
    // to the lambda's worker.
    assert_eq!(lb.run("f3", "{}").status, 200);
    let out = Command::new(ol_bin())
        .args(["invoke", "--grpc", "--url", &lb.url(""), "f3", "-d", "{}"])
        .output()
        .expect("run ol");
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: Value = serde_json::from_str(&stdout(&out)).expect("JSON on stdout");
    assert_eq!(printed["worker"].as_u64(), home.get("f3").copied());
    // `status` counts gRPC calls with HTTP's.
    let (ok, text) = lb.status();
    assert!(ok, "{text}");
    lb.down();

    // A balancer with no live worker answers gRPC calls with UNAVAILABLE.
    let dead = format!("http://127.0.0.1:{}", free_ports(1));
    let mut empty = TestLb::up_with(&["--workers", &dead]);
    let answers = python.call(
        &format!("127.0.0.1:{}", empty.port),
        &[named_call("who", "{}")],
    );
    assert_failed(&answers[0], "UNAVAILABLE", "no worker is available");
    empty.down();
}
