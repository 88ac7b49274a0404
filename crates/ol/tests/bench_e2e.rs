//! End-to-end test of `ol bench hot --target`: a real worker, two named
//! targets measured interleaved, and the JSON, CSV and PNG outputs read
//! back and checked; `--lb` measuring through a balancer of the bench's
//! own, stopped after.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Backend, TestWorker, ol_bin, on_both_backends};

const BOOM: &[(&str, &str)] = &[("f.py", "def f(event):\n    return 1 / 0\n")];

/// `ol bench hot --target ...` with short timings and every output file.
fn bench_hot(w: &TestWorker, lambda: &str, out: &Path) -> std::process::Output {
    let url = w.url("");
    Command::new(ol_bin())
        .args(["bench", "hot", "--lambda", lambda])
        .args(["--target", &format!("ours={url}"), "--target"])
        .arg(format!("again={url}/"))
        .args([
            "--seconds",
            "0.5",
            "--warmup",
            "0.1",
            "--connections",
            "1,2",
        ])
        .arg("--json")
        .arg(out.join("r.json"))
        .arg("--csv")
        .arg(out.join("r.csv"))
        .arg("--plot")
        .arg(out.join("r.png"))
        .output()
        .expect("run ol bench")
}

fn num(row: &serde_json::Value, field: &str) -> f64 {
    row[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number in {row}"))
}

on_both_backends!(hot_bench_against_targets_writes_json_csv_and_png);
fn hot_bench_against_targets_writes_json_csv_and_png(backend: Backend) {
    let w = TestWorker::start(backend, &[], &[]);
    let out = tempfile::tempdir().expect("tempdir");
    let run = bench_hot(&w, "hello", out.path());
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // Not a terminal: no progress bar on stderr.
    assert!(
        run.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.starts_with("bench "), "{stdout}");
    assert_eq!(stdout.lines().count(), 5, "header + 4 rows:\n{stdout}");

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("r.json")).expect("json file"))
            .expect("json");
    let rows = json.as_array().expect("array of rows");
    let keys: Vec<(String, u64, String)> = rows
        .iter()
        .map(|r| {
            (
                r["target"].as_str().expect("target").to_string(),
                r["connections"].as_u64().expect("connections"),
                r["mode"].as_str().expect("mode").to_string(),
            )
        })
        .collect();
    let want = [
        ("ours", 1, "seq"),
        ("again", 1, "seq"),
        ("ours", 2, "par"),
        ("again", 2, "par"),
    ];
    assert_eq!(
        keys,
        want.map(|(t, c, m)| (t.to_string(), c, m.to_string())),
        "one row per (connections, target), targets in the order given"
    );
    for r in rows {
        assert_eq!(
            (r["bench"].as_str(), r["lambda"].as_str()),
            (Some("hot"), Some("hello"))
        );
        let requests = num(r, "requests");
        assert!(requests > 0.0, "{r}");
        assert_eq!(
            (num(r, "errors"), r["first_error"].as_str()),
            (0.0, Some(""))
        );
        let secs = num(r, "seconds");
        assert!((0.4..5.0).contains(&secs), "measured about 0.5 s: {r}");
        let rate = num(r, "req_per_sec");
        assert!((rate - requests / secs).abs() < 1e-6 * rate.max(1.0), "{r}");
        let (p50, p90, p99, max, mean) = (
            num(r, "p50_us"),
            num(r, "p90_us"),
            num(r, "p99_us"),
            num(r, "max_us"),
            num(r, "mean_us"),
        );
        assert!(0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max, "{r}");
        assert!(p50.min(mean) > 0.0 && mean <= max, "{r}");
        // A call cannot be faster than 1 µs nor, here, slower than 10 s.
        assert!(max < 10e6, "{r}");
    }

    let mut csv = csv::Reader::from_path(out.path().join("r.csv")).expect("csv file");
    let header: Vec<String> = csv
        .headers()
        .expect("header")
        .iter()
        .map(String::from)
        .collect();
    let json_fields: Vec<String> = rows[0]
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect();
    let mut sorted_header = header.clone();
    sorted_header.sort();
    let mut sorted_fields = json_fields.clone();
    sorted_fields.sort();
    assert_eq!(
        sorted_header, sorted_fields,
        "CSV columns are the JSON fields"
    );
    let records: Vec<csv::StringRecord> = csv.records().collect::<Result<_, _>>().expect("records");
    assert_eq!(records.len(), rows.len());
    for (rec, row) in records.iter().zip(rows) {
        for (name, value) in header.iter().zip(rec.iter()) {
            match &row[name] {
                serde_json::Value::String(s) => assert_eq!(value, s, "{name}"),
                v => {
                    let parsed: f64 = value.parse().unwrap_or_else(|_| panic!("{name}={value}"));
                    let expected = v.as_f64().expect("number");
                    assert!(
                        (parsed - expected).abs() <= 1e-9 * expected.abs(),
                        "{name}: {value} vs {v}"
                    );
                }
            }
        }
    }

    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(out.path().join("r.png")).expect("png file"),
    ));
    let mut reader = decoder.read_info().expect("png header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut pixels).expect("png data");
    assert_eq!((info.width, info.height), (1400, 600));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let px = &pixels[..info.buffer_size()];
    let non_white = px.chunks(3).filter(|p| p != &[255, 255, 255]).count();
    let colored = px
        .chunks(3)
        .filter(|p| p.iter().max().unwrap_or(&0) - p.iter().min().unwrap_or(&0) > 100)
        .count();
    assert!(
        non_white > 10_000,
        "axes, text and curves drawn: {non_white}"
    );
    assert!(colored > 1_000, "colored curves and bars drawn: {colored}");
}

on_both_backends!(failing_calls_are_counted_and_reported);
fn failing_calls_are_counted_and_reported(backend: Backend) {
    let w = TestWorker::start(backend, &[("boom", BOOM)], &[]);
    let out = tempfile::tempdir().expect("tempdir");
    let run = bench_hot(&w, "boom", out.path());
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success(),
        "failed calls fail the bench:\n{stdout}"
    );
    assert!(stderr.contains("calls failed"), "{stderr}");
    assert!(
        stdout.contains("first error of hot on ours") && stdout.contains("/run/boom: 500"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("r.json")).expect("json file"))
            .expect("json");
    for r in json.as_array().expect("rows") {
        assert!(
            num(r, "errors") > 0.0 && num(r, "errors") == num(r, "requests"),
            "{r}"
        );
        let first = r["first_error"].as_str().expect("first_error");
        assert!(
            first.starts_with("/run/boom: 500 ") && first.contains("ZeroDivisionError"),
            "{first}"
        );
    }
}

/// Runs `ol bench ARGS... --json FILE` and returns its rows.
fn bench_json(args: &[&str], out: &Path) -> Vec<serde_json::Value> {
    let json = out.join("rows.json");
    // The bench's own worker and balancer dirs go in `out` too: a test can
    // tell its processes from those of the tests running beside it.
    let run = Command::new(ol_bin())
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(&json)
        .env("TMPDIR", out)
        .output()
        .expect("run ol bench");
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(json).expect("json file")).expect("json");
    v.as_array().expect("rows").clone()
}

on_both_backends!(churn_bench_makes_a_sandbox_per_call_and_finds_nothing_left_behind);
fn churn_bench_makes_a_sandbox_per_call_and_finds_nothing_left_behind(backend: Backend) {
    let out = tempfile::tempdir().expect("tempdir");
    let json = out.path().join("rows.json");
    let run = Command::new(ol_bin())
        .args(["bench", "churn", "--count", "300", "--lambdas", "30"])
        .args(["--live", "10", "-o", backend.option(), "--json"])
        .arg(&json)
        .env("TMPDIR", out.path())
        .output()
        .expect("run ol bench churn");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    // Every call made a sandbox (its lambda's last one was evicted or
    // had timed out), and the worker holds no more than before.
    assert!(
        stderr.contains("churn: 300 sandboxes made") && stderr.contains("nothing left behind"),
        "{stderr}"
    );
    if backend == Backend::Sock {
        // It did count them: the root zygote and its blanks.
        assert!(!stderr.contains("cgroups: 0,"), "{stderr}");
        assert!(!stderr.contains("processes: 0,"), "{stderr}");
    }
    let rows: serde_json::Value =
        serde_json::from_slice(&std::fs::read(json).expect("json file")).expect("json");
    let r = &rows[0];
    assert_eq!(
        (r["bench"].as_str(), num(r, "requests"), num(r, "errors")),
        (Some("churn"), 300.0, 0.0),
        "{r}"
    );
}

on_both_backends!(openlambda_benches_call_the_lambdas_written_by_bench_init);
fn openlambda_benches_call_the_lambdas_written_by_bench_init(backend: Backend) {
    let w = TestWorker::start(backend, &[], &[]);
    let init = common::ol(
        w.path(),
        &["bench", "init", "--kind", "py", "--count", "64"],
    );
    assert!(init.status.success(), "{}", common::stderr(&init));
    let out = tempfile::tempdir().expect("tempdir");
    let target = format!("w={}", w.url(""));
    let rows = bench_json(
        &[
            "ol",
            "py64-seq",
            "py-par-64",
            "--tasks",
            "3",
            "--target",
            &target,
        ]
        .into_iter()
        .chain(["--seconds", "0.4"])
        .collect::<Vec<_>>(),
        out.path(),
    );
    let keys: Vec<(&str, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["bench"].as_str().expect("bench"),
                r["connections"].as_u64().expect("n"),
            )
        })
        .collect();
    assert_eq!(keys, [("py64-seq", 1), ("py64-par", 3)]);
    for r in &rows {
        assert_eq!(
            (r["target"].as_str(), r["lambda"].as_str()),
            (Some("w"), Some("bench-py-[0,64)"))
        );
        assert!(num(r, "requests") > 0.0 && num(r, "errors") == 0.0, "{r}");
    }
    // The warm-up called each of the 64 lambdas once: each has a sandbox.
    let stats = w.stats();
    let lambdas: std::collections::BTreeSet<&str> = stats["sandboxes"]
        .as_array()
        .expect("sandboxes")
        .iter()
        .filter_map(|s| s["lambda"].as_str())
        .filter(|l| l.starts_with("bench-py-"))
        .collect();
    assert_eq!(lambdas.len(), 64, "{lambdas:?}");
}

on_both_backends!(first_call_bench_times_fresh_workers);
fn first_call_bench_times_fresh_workers(backend: Backend) {
    let out = tempfile::tempdir().expect("tempdir");
    let rows = bench_json(
        &["first-call", "--runs", "2", "-o", backend.option()],
        out.path(),
    );
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        (r["bench"].as_str(), num(r, "requests"), num(r, "errors")),
        (Some("first-call"), 2.0, 0.0)
    );
    // Starting a worker takes more than 1 ms and (here) less than 30 s.
    assert!((1_000.0..30e6).contains(&num(r, "p50_us")), "{r}");
}

on_both_backends!(burst_bench_has_every_call_of_a_new_lambda_busy_at_once);
fn burst_bench_has_every_call_of_a_new_lambda_busy_at_once(backend: Backend) {
    // The default scaling.max_instances (8) allows 6 sandboxes of a lambda.
    let w = TestWorker::start(backend, &[], &[]);
    let out = tempfile::tempdir().expect("tempdir");
    let target = format!("w={}", w.url(""));
    let rows = bench_json(
        &[
            "burst",
            "--instances",
            "6",
            "--runs",
            "2",
            "--hold-ms",
            "3000",
            "--target",
            &target,
        ],
        out.path(),
    );
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        (r["bench"].as_str(), num(r, "requests"), num(r, "errors")),
        (Some("burst"), 12.0, 0.0),
        "{r}"
    );
    // Each call started inside its lambda after it was sent and before the
    // first one finished holding its sandbox.
    assert!(num(r, "max_us") < 3e6, "{r}");
    // Six calls at once, each run of a new lambda: six sandboxes each.
    let created = w.stats()["sandboxes_created"].as_u64().expect("created");
    assert!(created >= 12, "sandboxes created: {created}");
    let left: Vec<String> = std::fs::read_dir(w.path().join("registry"))
        .expect("registry")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("burst-"))
        .collect();
    assert!(left.is_empty(), "uploaded lambdas left behind: {left:?}");
}

on_both_backends!(cold_bench_uploads_new_lambdas_to_each_target_and_removes_them);
fn cold_bench_uploads_new_lambdas_to_each_target_and_removes_them(backend: Backend) {
    let w = TestWorker::start(backend, &[], &[]);
    let out = tempfile::tempdir().expect("tempdir");
    let (a, b) = (format!("a={}", w.url("")), format!("b={}", w.url("")));
    let rows = bench_json(
        &[
            "cold",
            "--count",
            "3",
            "--connections",
            "2",
            "--target",
            &a,
            "--target",
            &b,
        ],
        out.path(),
    );
    let targets: Vec<&str> = rows
        .iter()
        .map(|r| r["target"].as_str().expect("target"))
        .collect();
    assert_eq!(targets, ["a", "b"]);
    for r in &rows {
        assert_eq!((num(r, "requests"), num(r, "errors")), (3.0, 0.0), "{r}");
        assert_eq!(
            (num(r, "connections"), r["mode"].as_str()),
            (2.0, Some("par"))
        );
    }
    // Every call was a cold start: 3 per target, plus one warm-up each.
    let created = w.stats()["sandboxes_created"].as_u64().expect("created");
    assert!(created >= 8, "sandboxes created: {created}");
    let left: Vec<String> = std::fs::read_dir(w.path().join("registry"))
        .expect("registry")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cold-"))
        .collect();
    assert!(left.is_empty(), "uploaded lambdas left behind: {left:?}");
}

#[test]
fn hot_bench_measures_through_a_balancer_of_its_own_and_stops_it() {
    let out = tempfile::tempdir().expect("tempdir");
    let rows = bench_json(
        &[
            "hot",
            "--lb",
            "-o",
            "sandbox=process",
            "--lambda",
            "hello",
            "--seconds",
            "0.4",
            "--warmup",
            "0.1",
            "--rounds",
            "2",
            "--connections",
            "1,2",
        ],
        out.path(),
    );
    for conns in [1.0, 2.0] {
        for target in ["ours", "lb"] {
            let row = rows
                .iter()
                .find(|r| r["target"] == target && num(r, "connections") == conns)
                .unwrap_or_else(|| panic!("no {target} row at {conns}: {rows:?}"));
            assert!(num(row, "requests") > 0.0, "{row}");
            assert_eq!(num(row, "errors"), 0.0, "{row}");
        }
    }
    // Its balancer (and worker) are gone. Only its own: another bench
    // test beside it may be stopping a balancer of its own right now.
    let ours = out.path().join("ol-bench-lb-");
    let ours = ours.to_string_lossy();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(ours.as_ref()))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn cold_bench_installs_on_the_worker_and_calls_through_the_balancer() {
    let out = tempfile::tempdir().expect("tempdir");
    // The balancer refuses /registry: its lambdas are uploaded to the
    // worker behind it, and only its calls go through it.
    let rows = bench_json(
        &["cold", "--lb", "-o", "sandbox=process", "--count", "3"],
        out.path(),
    );
    for target in ["ours", "lb"] {
        let row = rows
            .iter()
            .find(|r| r["target"] == target)
            .unwrap_or_else(|| panic!("no {target} row: {rows:?}"));
        assert_eq!(num(row, "requests"), 3.0, "{row}");
        assert_eq!(num(row, "errors"), 0.0, "{row}");
    }
}

#[test]
fn hot_bench_calls_over_grpc_directly_and_through_the_balancer() {
    let out = tempfile::tempdir().expect("tempdir");
    let rows = bench_json(
        &[
            "hot",
            "--grpc",
            "--lb",
            "-o",
            "sandbox=process",
            "--seconds",
            "0.4",
            "--warmup",
            "0.1",
            "--rounds",
            "2",
            "--connections",
            "1,2",
        ],
        out.path(),
    );
    for conns in [1.0, 2.0] {
        for target in ["ours", "lb"] {
            let row = rows
                .iter()
                .find(|r| r["target"] == target && num(r, "connections") == conns)
                .unwrap_or_else(|| panic!("no {target} row at {conns}: {rows:?}"));
            assert_eq!(row["bench"], "hot-grpc", "{row}");
            assert!(num(row, "requests") > 0.0, "{row}");
            assert_eq!(num(row, "errors"), 0.0, "{row}");
        }
    }
}
