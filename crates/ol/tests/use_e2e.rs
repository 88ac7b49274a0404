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
    // The app's own 418 is no worker error; the 405 is.
    let stats = w.stats();
    assert_eq!(
        stats["errors_by_status"],
        serde_json::json!({"405": 1}),
        "{stats}"
    );
    assert_eq!(stats["errors_4xx"], 1, "{stats}");
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
        assert!(
            log.contains("WARN")
                && log.contains("limits.mem_mb, procs, cpu_percent and disk_mb are not enforced"),
            "the process backend warns: {log}"
        );
    }
}

/// A lambda that prints on both streams, tagged with its call.
const PRINTER: &str = r#"
import sys
def f(event, ctx):
    print("hello from", ctx.request_id)
    print("to stderr", file=sys.stderr)
    if event == "fail":
        raise RuntimeError("asked to fail")
    if event == "forge":
        print('{"time":"2000-01-01T00:00:00.000Z","sandbox":"other","request_id":"x","stream":"stdout","line":"forged"}')
        print("\x1b[31mred\nsecond line")
    if event == "flood":
        for i in range(2000):
            print("flood line", i)
    return {"agent": ctx.headers.get("x-agent"), "event": event}
"#;

/// Runs `ol args...` (no `-p`).
fn ol_plain(args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::ol_bin())
        .args(args)
        .output()
        .expect("run ol")
}

/// Runs `ol args... -p dir` with `env`.
fn ol_env(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(common::ol_bin())
        .args(args)
        .arg("-p")
        .arg(dir)
        .envs(env.iter().copied())
        .output()
        .expect("run ol")
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

on_both_backends!(invoke_logs_describe_and_listings);

fn invoke_logs_describe_and_listings(backend: Backend) {
    let small_log = "limits: {log_kb: 16}\n";
    let mut w = TestWorker::start(
        backend,
        &[("printer", &[("f.py", PRINTER), ("ol.yaml", small_log)])],
        &[],
    );
    let dir = w.path().to_path_buf();

    // ol invoke: the body on stdout; -v shows the request id.
    let out = common::ol(&dir, &["invoke", "printer", "-d", "{\"x\": 1}"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(stdout(&out), "{\"agent\": null, \"event\": {\"x\": 1}}\n");
    let body = dir.join("body.json");
    fs::write(&body, "\"from a file\"").expect("body");
    let at_file = format!("@{}", body.display());
    let out = common::ol(
        &dir,
        &[
            "invoke",
            "printer",
            "-d",
            &at_file,
            "-H",
            "x-agent: cli",
            "-v",
        ],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(
        stdout(&out),
        "{\"agent\": \"cli\", \"event\": \"from a file\"}\n"
    );
    let err = common::stderr(&out);
    let id = err
        .split("request id ")
        .nth(1)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no request id in {err}"));
    assert!(err.contains("POST") && err.contains(": 200 in"), "{err}");

    // An error status fails the command and says why, with the id.
    let out = common::ol(&dir, &["invoke", "printer", "-d", "\"fail\""]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(
        err.contains("printer answered 500: RuntimeError: asked to fail")
            && err.contains("request id"),
        "{err}"
    );
    assert!(err.contains("f.py"), "traceback shown: {err}");
    let out = common::ol(&dir, &["invoke", "nosuch"]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("nosuch answered 404"),
        "{}",
        common::stderr(&out)
    );

    // What a lambda prints cannot forge entries or paint the terminal.
    let out = common::ol(&dir, &["invoke", "printer", "-d", "\"forge\""]);
    assert!(out.status.success(), "{}", common::stderr(&out));

    // ol logs: each line with its time, sandbox, call and stream.
    let out = common::ol(&dir, &["logs", "printer"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let logs = stdout(&out);
    let tagged = logs
        .lines()
        .find(|l| l.ends_with(&format!("stdout| hello from {id}")))
        .unwrap_or_else(|| panic!("no line of call {id} in:\n{logs}"));
    let fields: Vec<&str> = tagged.split(' ').collect();
    assert!(
        fields[0].ends_with('Z') && fields[1].starts_with("printer"),
        "{tagged}"
    );
    assert_eq!(fields[2], id, "{tagged}");
    assert!(
        logs.lines().any(|l| l.ends_with("stderr| to stderr")),
        "{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains(" error| 500 RuntimeError: asked to fail")),
        "{logs}"
    );
    assert!(
        !logs.contains('\u{1b}'),
        "escape sequences are escaped: {logs}"
    );
    assert!(logs.contains("\\u{1b}[31mred"), "{logs}");
    assert!(
        !logs.lines().any(|l| l.starts_with("2000-01-01")),
        "forged entry: {logs}"
    );

    // Over HTTP, filtered.
    let a = w.call("GET", "/logs/printer?stream=error", "");
    assert_eq!(a.status, 200, "{}", a.body);
    let entries = a.json()["entries"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 1, "{}", a.body);
    assert_eq!(entries[0]["stream"], "error");
    assert_eq!(w.call("GET", "/logs/..%2Fetc", "").status, 400);
    let a = w.call("POST", "/logs/printer", "");
    assert_eq!((a.status, header(&a, "allow")), (405, Some("GET")));

    // ol admin describe: files, settings, sandboxes, last errors.
    let out = common::ol(&dir, &["admin", "describe", "printer"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("files:        f.py, ol.yaml"), "{text}");
    assert!(text.contains("limits:       log_kb 16 (others"), "{text}");
    assert!(text.contains("sandboxes:    1"), "{text}");
    assert!(
        text.contains("last errors:  1") && text.contains("asked to fail"),
        "{text}"
    );
    let out = common::ol(&dir, &["admin", "describe", "printer", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("describe --json");
    assert_eq!(v["last_errors"].as_array().map(Vec::len), Some(1), "{v}");

    // --json listings; the dir from $OL_DIR.
    let out = ol_env(&dir, &["admin", "ls", "--json"], &[]);
    let names: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ls --json");
    assert!(
        names
            .as_array()
            .is_some_and(|n| n.contains(&"printer".into())),
        "{names}"
    );
    let out = std::process::Command::new(common::ol_bin())
        .args(["worker", "status", "--json"])
        .env("OL_DIR", &dir)
        .output()
        .expect("run ol");
    assert!(out.status.success(), "{}", common::stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(status["pid"].as_u64(), Some(u64::from(w.worker_pid())));
    assert!(
        status["stats"]["invocations"].as_u64() >= Some(4),
        "{status}"
    );

    // A lambda keeps at most its log_kb, newest kept.
    let out = common::ol(&dir, &["invoke", "printer", "-d", "\"flood\""]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(common::eventually(
        std::time::Duration::from_secs(10),
        || { stdout(&common::ol(&dir, &["logs", "printer"])).contains("flood line 1999") }
    ));
    let size = |f: &str| fs::metadata(dir.join("logs/lambdas").join(f)).map_or(0, |m| m.len());
    assert!(size("printer.log") + size("printer.log.1") <= 16 * 1024);

    // ol logs -f prints the lines of calls made while it runs.
    let mut follow = std::process::Command::new(common::ol_bin())
        .args(["logs", "printer", "-f", "--since", "1s", "-p"])
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ol logs -f");
    let pipe = follow.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let out = common::ol(&dir, &["invoke", "printer", "-d", "\"followed\"", "-v"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let err = common::stderr(&out);
    let followed = err
        .split("request id ")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_string();
    let wanted = format!("stdout| hello from {followed}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline {
        match rx.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(line) if line.ends_with(&wanted) => break,
            Ok(line) => seen.push(line),
            Err(_) => {}
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        std::time::Instant::now() < deadline,
        "ol logs -f never showed {wanted}: {seen:?}"
    );
    // The worker's own log has no terminal colours in a file.
    let log = fs::read_to_string(dir.join("logs/worker.log")).expect("worker.log");
    assert!(!log.contains('\u{1b}'), "{log}");

    // The lines outlive the sandboxes and the worker; --since filters.
    w.down();
    let out = common::ol(&dir, &["logs", "printer", "--since", "1h"]);
    assert!(
        stdout(&out).contains("flood line 1999"),
        "{}",
        common::stderr(&out)
    );
    let out = common::ol(&dir, &["logs", "printer", "--json"]);
    assert!(
        stdout(&out)
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
    );
}

#[test]
fn new_makes_lambdas_that_pass_their_tests_and_run() {
    let w = TestWorker::start(Backend::Process, &[], &[]);
    let work = tempfile::tempdir().expect("tempdir");
    let parent = work.path().to_str().expect("utf-8 path");
    let cases = [
        (
            "greet",
            "python",
            "{\"name\": \"Alice\"}",
            "\"greeting\": \"Hello, Alice!\"",
        ),
        ("wsgi-app", "wsgi", "hi", "\"received\": 2"),
        ("asgi-app", "asgi", "hi", "\"received\": 2"),
    ];
    for (name, template, body, expected) in cases {
        let out = ol_plain(&["new", name, "--template", template, "--dir", parent]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        assert!(
            stdout(&out).contains("python3 -m unittest"),
            "{}",
            stdout(&out)
        );
        let lambda = work.path().join(name);
        let test = std::process::Command::new("python3")
            .args(["-m", "unittest"])
            .current_dir(&lambda)
            .output()
            .expect("python3");
        assert!(
            test.status.success(),
            "{template}: {}",
            common::stderr(&test)
        );
        let out = common::ol(
            w.path(),
            &["admin", "install", lambda.to_str().unwrap_or_default()],
        );
        assert!(out.status.success(), "{}", common::stderr(&out));
        let out = common::ol(w.path(), &["invoke", name, "-d", body]);
        assert!(out.status.success(), "{template}: {}", common::stderr(&out));
        assert!(
            stdout(&out).contains(expected),
            "{template}: {}",
            stdout(&out)
        );
    }
    for (template, file, package) in [
        ("flask", "app.py", "flask"),
        ("fastapi", "app.py", "fastapi"),
        ("numpy", "f.py", "numpy"),
    ] {
        let name = format!("with-{template}");
        let out = ol_plain(&["new", &name, "-t", template, "--dir", parent]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        let lambda = work.path().join(&name);
        let requirements =
            fs::read_to_string(lambda.join("requirements.txt")).expect("requirements");
        assert_eq!(requirements.trim(), package);
        let compiled = std::process::Command::new("python3")
            .args(["-m", "py_compile", file])
            .current_dir(&lambda)
            .status()
            .expect("python3");
        assert!(compiled.success(), "{template}'s {file} compiles");
    }
    // An existing dir is not overwritten.
    let out = ol_plain(&["new", "greet", "--dir", parent]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("exists already"),
        "{}",
        common::stderr(&out)
    );
}

#[test]
fn completion_and_errors_about_the_worker_dir() {
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(common::ol_bin())
            .args(["completion", shell])
            .output()
            .expect("run ol");
        assert!(out.status.success(), "{shell}");
        let script = stdout(&out);
        assert!(
            script.contains("invoke") && script.contains("logs"),
            "{shell}: {script}"
        );
    }
    let missing = tempfile::tempdir().expect("tempdir");
    let dir = missing.path().join("nothing-here");
    let out = common::ol(&dir, &["worker", "status"]);
    let err = common::stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("no worker directory at {}", dir.display()))
            && err.contains("from -p")
            && err.contains("OL_DIR=DIR"),
        "{err}"
    );
    let out = std::process::Command::new(common::ol_bin())
        .args(["admin", "ls"])
        .env("OL_DIR", &dir)
        .output()
        .expect("run ol");
    let err = common::stderr(&out);
    assert!(err.contains("from $OL_DIR"), "{err}");
    // A remote registry is named as such; init names the sandbox as
    // config.json does.
    let remote = tempfile::tempdir().expect("tempdir");
    let out = common::ol(remote.path(), &["worker", "init"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let said = stdout(&out);
    assert!(
        said.contains("sandbox: sock,") || said.contains("sandbox: process,"),
        "{said}"
    );
    common::set_config(remote.path(), &["registry=http://127.0.0.1:9/registry"]);
    let out = common::ol(remote.path(), &["admin", "ls"]);
    let err = common::stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("is remote (http://127.0.0.1:9/registry)"),
        "{err}"
    );

    // Each cause once.
    fs::create_dir_all(&dir).expect("mkdir");
    fs::write(dir.join("config.json"), "{not json").expect("config.json");
    let out = common::ol(&dir, &["admin", "ls"]);
    let err = common::stderr(&out);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("is not valid JSON: key must be a string"),
        "{err}"
    );
    assert_eq!(err.matches("key must be a string").count(), 1, "{err}");
}

on_both_backends!(install_checks_limits_and_packs_only_the_lambda);

fn install_checks_limits_and_packs_only_the_lambda(backend: Backend) {
    let w = TestWorker::start(backend, &[], &[]);
    let src = tempfile::tempdir().expect("tempdir");
    let lambda = src.path().join("big");
    fs::create_dir_all(lambda.join(".git/objects")).expect("mkdir");
    fs::create_dir_all(lambda.join("data")).expect("mkdir");
    fs::write(lambda.join(".git/objects/blob"), "x".repeat(1 << 20)).expect("blob");
    fs::write(
        lambda.join("f.py"),
        "import os\ndef f(event):\n    return sorted(os.listdir('.'))\n",
    )
    .expect("f.py");
    for i in 0..1200 {
        fs::write(lambda.join(format!("data/{i}.txt")), "d").expect("data");
    }
    let path = lambda.to_str().unwrap_or_default();
    let out = common::ol(w.path(), &["admin", "install", path]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let err = common::stderr(&out);
    assert!(
        err.contains("packing") && err.contains("1000 files"),
        "progress: {err}"
    );
    let a = w.run("big", "");
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        !a.body.contains(".git") && a.body.contains("data"),
        "{}",
        a.body
    );

    // ol.yaml asking more than the worker gives is refused at install,
    // naming the key, by the worker and without one.
    fs::write(lambda.join("ol.yaml"), "limits: {mem_mb: 100000}\n").expect("ol.yaml");
    let out = common::ol(w.path(), &["admin", "install", path, "--name", "greedy"]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(
        err.contains("(400)") && err.contains("limits.mem_mb: 100000 is above this worker's limit"),
        "{err}"
    );
    assert_eq!(w.run("greedy", "").status, 404, "nothing installed");
    let idle = tempfile::tempdir().expect("tempdir");
    let out = common::ol(idle.path(), &["worker", "init"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let out = common::ol(idle.path(), &["admin", "install", path, "--name", "greedy"]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("limits.mem_mb"),
        "{}",
        common::stderr(&out)
    );

    // force-cleanup says it kills the running worker.
    let pid = w.worker_pid();
    let out = common::ol(w.path(), &["worker", "force-cleanup"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains(&format!("a worker (pid {pid}) is running in")),
        "{}",
        common::stderr(&out)
    );
}

#[test]
#[ignore = "needs root"]
fn invoke_shows_the_packages_a_first_call_installs() {
    let wheels = tempfile::tempdir().expect("tempdir");
    // Many files, so that installing it takes a while (unpacking and
    // sealing go file by file).
    let mut files: Vec<(String, &str)> = (0..4000)
        .map(|i| (format!("olshown/data/f{i}.txt"), "x"))
        .collect();
    files.push(("olshown/__init__.py".into(), "VALUE = 'shown'\n"));
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (p.as_str(), *t)).collect();
    common::write_wheel_files(wheels.path(), "ol_shown_pkg", "0.0.1", &files);
    let index = format!("pip_index_url={}", wheels.path().display());
    let code = "import olshown\ndef f(event):\n    return olshown.VALUE\n";
    let w = TestWorker::start(
        Backend::Sock,
        &[(
            "shown",
            &[
                ("f.py", code),
                ("requirements.txt", "ol-shown-pkg==0.0.1\n"),
            ],
        )],
        &["package_cache_dir=/var/tmp/ol-test-uv-cache", &index],
    );
    let out = common::ol(w.path(), &["invoke", "shown"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(stdout(&out), "\"shown\"\n");
    let err = common::stderr(&out);
    let log = fs::read_to_string(w.path().join("logs/worker.log")).expect("worker.log");
    assert!(
        log.contains("installing package=ol-shown-pkg==0.0.1"),
        "{log}"
    );
    // How long the install took, as the worker logged it: one that lasted
    // longer than the watcher's interval (it looks every 250 ms) must have
    // been shown; a quicker one may fall between two looks.
    let ms: f64 = log
        .lines()
        .find(|l| l.contains("installed package=ol-shown-pkg==0.0.1"))
        .and_then(|l| l.split("ms=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no install time in {log}"));
    if ms >= 400.0 {
        assert!(
            err.contains("] installing ol-shown-pkg==0.0.1"),
            "{ms} ms: {err}"
        );
    } else {
        eprintln!("the install took {ms} ms: too quick to require the watcher's line");
    }
    // ol admin describe names what is installed for it.
    let out = common::ol(w.path(), &["admin", "describe", "shown"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("requirements: ol-shown-pkg==0.0.1")
            && text.contains("installed:    ol-shown-pkg==0.0.1"),
        "{text}"
    );
}
