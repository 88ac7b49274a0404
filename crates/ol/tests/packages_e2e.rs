//! End-to-end tests of packages and the import cache (root, real PyPI
//! through the package registry this machine reaches): lambdas with
//! requirements install them once per worker and fork from zygotes that
//! have them imported. Downloads go to a cache shared by every run
//! (`/var/tmp/ol-test-uv-cache`), so reruns do not download again (but
//! for the one test of a worker with caches of its own).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{Backend, TestWorker, add_lambda, wait_for_bytecode, write_wheel};

/// Shared installer cache (docs/architecture.md §5: network tests use a local cache).
const CACHE: &str = "package_cache_dir=/var/tmp/ol-test-uv-cache";

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/lambdas")
        .join(name)
}

/// Copies example lambda `name` into the worker's registry.
fn add_example(w: &TestWorker, name: &str) {
    let files: Vec<(String, String)> = fs::read_dir(example(name))
        .expect("example dir")
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read_to_string(e.path()).expect("example file"),
            )
        })
        .collect();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    add_lambda(w.path(), name, &files);
}

fn start(overrides: &[&str]) -> TestWorker {
    let mut all = vec![CACHE];
    all.extend(overrides);
    TestWorker::start(Backend::Sock, &[], &all)
}

/// Lambda `name` in `dir`'s registry whose `f.py` is `code` and whose
/// one requirement is `six`.
fn add_with_six(dir: &Path, name: &str, code: &str) {
    add_lambda(dir, name, &[("f.py", code), ("requirements.txt", "six\n")]);
}

/// Lambda `six` in `dir`'s registry: returns the version of `six`, its
/// one requirement.
fn add_six(dir: &Path) {
    add_with_six(dir, "six", SIX_VERSION);
}

/// A lambda returning the version of `six`.
const SIX_VERSION: &str = "import six\ndef f(event):\n    return six.__version__\n";

/// Lambda `name` in `dir`'s registry that returns 1 and needs
/// `requirements` (a requirements.txt).
fn add_needing(dir: &std::path::Path, name: &str, requirements: &str) {
    add_lambda(
        dir,
        name,
        &[
            ("f.py", "def f(event):\n    return 1\n"),
            ("requirements.txt", requirements),
        ],
    );
}

/// The installed dir of the distribution named `name` in `w`'s packages.
fn package_dir(w: &TestWorker, name: &str) -> PathBuf {
    fs::read_dir(w.path().join("packages"))
        .expect("packages dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}==")))
        })
        .unwrap_or_else(|| panic!("{name} installed"))
}

fn installs(w: &TestWorker) -> u64 {
    w.stats()["packages"]["installs"]
        .as_u64()
        .expect("installs")
}

#[test]
#[ignore = "needs root"]
fn numpy_and_pandas_lambdas_return_versions_and_results() {
    let w = start(&[]);
    add_example(&w, "numpy");
    add_example(&w, "pandas");
    let a = w.run("numpy", r#"{"n": 100}"#);
    assert_eq!(a.status, 200, "{}", a.body);
    let numpy = a.json();
    assert_eq!(numpy["sum"], 4950);
    let version = numpy["numpy"].as_str().expect("version").to_string();
    assert!(
        version.starts_with(|c: char| c.is_ascii_digit()),
        "{version}"
    );
    let a = w.run("pandas", "{}");
    assert_eq!(a.status, 200, "{}", a.body);
    let pandas = a.json();
    assert_eq!(pandas["total"], 66);
    assert!(pandas["pandas"].as_str().is_some_and(|v| !v.is_empty()));
    // pandas needs numpy: the numpy install was reused, not repeated.
    let packages = fs::read_dir(w.path().join("packages"))
        .expect("packages dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("numpy=="))
        .count();
    assert_eq!(packages, 1);
    // Both forked from import-cache zygotes (numpy, then numpy/pandas).
    let stats = w.stats();
    assert_eq!(stats["zygote_hits"], 2, "{stats}");
    assert!(
        stats["forked_from"]
            .as_object()
            .expect("forked_from")
            .keys()
            .any(|k| k.starts_with(&format!("numpy=={version}/")) && k.contains("pandas==")),
        "{stats}"
    );
    // `down` leaves nothing: no process (zygotes included), no cgroup.
    let mut w = w;
    w.down();
    let left = common::worker_cgroups(&w.state_dir());
    assert!(left.is_empty(), "{left:?} are left");
}

#[test]
#[ignore = "needs root"]
fn flask_and_fastapi_apps_work() {
    let w = start(&[]);
    add_example(&w, "flask");
    add_example(&w, "fastapi");
    let a = w.call("GET", "/run/flask", "");
    assert_eq!((a.status, a.body.as_str()), (418, "hi\n"));
    assert!(
        a.headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("a") && v == "B"),
        "{:?}",
        a.headers
    );
    let a = w.run("fastapi", r#"{"x": 1}"#);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.json(),
        serde_json::json!({"got": {"x": 1}, "framework": "fastapi"})
    );
    let a = w.call("GET", "/run/fastapi/hello/bob", "");
    assert_eq!(
        (a.status, a.json()),
        (200, serde_json::json!({"hello": "bob"}))
    );
}

#[test]
#[ignore = "needs root"]
fn same_requirement_is_installed_once_even_when_asked_at_once() {
    let w = start(&[]);
    add_with_six(w.path(), "six-a", SIX_VERSION);
    add_with_six(w.path(), "six-b", SIX_VERSION);
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let calls: Vec<_> = ["six-a", "six-b", "six-a", "six-b"]
            .iter()
            .map(|name| {
                let w = &w;
                s.spawn(move || {
                    let a = w.run(name, "{}");
                    (a.status, a.body)
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().expect("call")).collect()
    });
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body, &answers[0].1);
    }
    assert_eq!(installs(&w), 1);
    let stats = w.stats();
    assert_eq!(stats["packages"]["resolutions"], 1, "{stats}");
}

#[test]
#[ignore = "needs root"]
fn restarted_worker_reuses_its_resolutions_and_installs() {
    let mut w = start(&[]);
    add_six(w.path());
    let first = w.run("six", "{}");
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(w.stats()["packages"]["resolutions"], 1);
    w.restart(&[CACHE]);
    let again = w.run("six", "{}");
    assert_eq!((again.status, again.body), (200, first.body));
    let stats = w.stats();
    assert_eq!(stats["packages"]["resolutions"], 0, "{stats}");
    assert_eq!(stats["packages"]["installs"], 0, "{stats}");
}

#[test]
#[ignore = "needs root"]
fn pinned_requirement_forks_from_the_numpy_zygote() {
    let w = start(&[]);
    // Learn the current numpy version, then pin it exactly.
    add_example(&w, "numpy");
    let a = w.run("numpy", "{}");
    assert_eq!(a.status, 200, "{}", a.body);
    let version = a.json()["numpy"].as_str().expect("version").to_string();
    add_lambda(
        w.path(),
        "pinned",
        &[
            (
                "f.py",
                "import numpy\ndef f(event):\n    return numpy.__version__\n",
            ),
            ("requirements.txt", &format!("numpy=={version}\n")),
        ],
    );
    let a = w.run("pinned", "{}");
    assert_eq!((a.status, a.json()), (200, serde_json::json!(version)));
    let stats = w.stats();
    let key = format!("numpy=={version}");
    // Both lambdas forked from the one numpy zygote (OpenLambda's exact
    // string match would send the pinned one to the root).
    assert_eq!(stats["forked_from"][&key], 2, "{stats}");
    assert_eq!(stats["zygote_hits"], 2, "{stats}");
    assert_eq!(stats["zygotes"], serde_json::json!([key]), "{stats}");
    assert_eq!(installs(&w), 1);
}

#[test]
#[ignore = "needs root"]
fn bad_requirement_fails_its_lambda_only_with_a_clear_error() {
    let w = start(&[]);
    add_needing(w.path(), "broken", "ol-no-such-package-4c1d9e\n");
    add_needing(w.path(), "impossible", "six==0.0.0.1\n");
    for (name, names) in [
        ("broken", "ol-no-such-package-4c1d9e"),
        ("impossible", "six==0.0.0.1"),
    ] {
        let a = w.run(name, "{}");
        assert_eq!(a.status, 500, "{}", a.body);
        let error = a.json()["error"].as_str().expect("error").to_string();
        assert!(error.contains(names), "{error}");
        assert!(error.contains(&format!("lambda {name}")), "{error}");
    }
    // Other lambdas keep working, and the failure is remembered, not
    // re-run for every call.
    let a = w.run("hello", r#"{"name": "ok"}"#);
    assert_eq!((a.status, a.body.as_str()), (200, "\"Hello, ok!\""));
    let before = w.stats()["packages"]["resolutions"].as_u64();
    assert_eq!(w.run("broken", "{}").status, 500);
    assert_eq!(w.stats()["packages"]["resolutions"].as_u64(), before);
    assert_eq!(w.stats()["packages"]["failures"], 3);
}

/// OpenLambda's `call_each_once`: `count` new lambdas, each called once,
/// each answering its own number; with `numpy`, each imports numpy.
fn call_each_once(import_cache: &str, count: usize, numpy: bool) {
    let w = start(&[&format!("features.import_cache={import_cache}")]);
    for i in 0..count {
        let mut files = vec![(
            "f.py".to_string(),
            if numpy {
                format!("import numpy\ndef f(event):\n    return int(numpy.int64({i}))\n")
            } else {
                format!("def f(event):\n    return {i}\n")
            },
        )];
        if numpy {
            files.push(("requirements.txt".to_string(), "numpy\n".to_string()));
        }
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        add_lambda(w.path(), &format!("each-{i}"), &files);
    }
    for i in 0..count {
        let a = w.run(&format!("each-{i}"), "{}");
        assert_eq!(
            (a.status, a.body.clone()),
            (200, i.to_string()),
            "lambda {i} with import_cache={import_cache:?}"
        );
    }
    let stats = w.stats();
    assert_eq!(stats["lambdas"].as_array().map(Vec::len), Some(count));
    let forked = stats["forked_from"].as_object().expect("forked_from");
    let total: u64 = forked.values().filter_map(|v| v.as_u64()).sum();
    assert_eq!(total, count as u64, "{stats}");
    match (import_cache, numpy) {
        // Zygotes off: every sandbox started a fresh interpreter.
        ("", _) => assert_eq!(
            forked.get("none").and_then(|v| v.as_u64()),
            Some(count as u64)
        ),
        (_, false) => assert_eq!(
            forked.get("root").and_then(|v| v.as_u64()),
            Some(count as u64)
        ),
        (mode, true) => {
            assert_eq!(stats["zygote_hits"], count as u64, "{stats}");
            // multitree spreads the forks over two copies of the node.
            let copies = forked.keys().filter(|k| k.starts_with("numpy==")).count();
            assert_eq!(copies, if mode == "multitree" { 2 } else { 1 }, "{stats}");
        }
    }
}

#[test]
#[ignore = "needs root"]
fn call_each_once_10_and_100_without_import_cache() {
    call_each_once("", 10, false);
    call_each_once("", 100, false);
    call_each_once("", 10, true);
}

#[test]
#[ignore = "needs root"]
fn call_each_once_10_and_100_with_tree() {
    call_each_once("tree", 10, false);
    call_each_once("tree", 100, false);
    call_each_once("tree", 10, true);
}

#[test]
#[ignore = "needs root"]
fn call_each_once_10_and_100_with_multitree() {
    call_each_once("multitree", 10, false);
    call_each_once("multitree", 100, false);
    call_each_once("multitree", 10, true);
}

#[test]
#[ignore = "needs root"]
fn local_wheel_directory_as_the_index() {
    let wheels = tempfile::tempdir().expect("tempdir");
    write_wheel(
        wheels.path(),
        "ol_local_pkg",
        "1.2.3",
        "ollocal",
        "from a local wheel",
    );
    let w = start(&[&format!("pip_index_url={}", wheels.path().display())]);
    add_lambda(
        w.path(),
        "local",
        &[
            (
                "f.py",
                "import ollocal\ndef f(event):\n    return ollocal.VALUE\n",
            ),
            ("requirements.txt", "ol-local-pkg==1.2.3\n"),
        ],
    );
    let a = w.run("local", "{}");
    assert_eq!((a.status, a.body.as_str()), (200, "\"from a local wheel\""));
    let meta: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(
            w.path()
                .join("packages/ol-local-pkg==1.2.3/.ol-package.json"),
        )
        .expect("package metadata"),
    )
    .expect("json");
    // The top-level module was read from the wheel's RECORD.
    assert_eq!(meta["top_level"], serde_json::json!(["ollocal"]));
    // Nothing else is on that index: PyPI was not asked.
    add_needing(w.path(), "elsewhere", "six\n");
    let a = w.run("elsewhere", "{}");
    assert_eq!(a.status, 500, "{}", a.body);
    assert!(a.body.contains("six"), "{}", a.body);
}

#[test]
#[ignore = "needs root"]
fn a_lambda_needing_several_distributions_gets_all_or_a_clear_error() {
    // They install a few at a time: every one must land, and one that
    // cannot be installed fails the lambda without losing the others.
    let wheels = tempfile::tempdir().expect("tempdir");
    for i in 0..6 {
        write_wheel(
            wheels.path(),
            &format!("ol_multi_{i}"),
            "1.0",
            &format!("olmulti{i}"),
            &i.to_string(),
        );
    }
    let w = start(&[&format!("pip_index_url={}", wheels.path().display())]);
    let imports = (0..6).map(|i| format!("olmulti{i}")).collect::<Vec<_>>();
    let source = format!(
        "import {}\ndef f(event):\n    return sum(int(m.VALUE) for m in ({},))\n",
        imports.join(", "),
        imports.join(", ")
    );
    let requirements: String = (0..6).map(|i| format!("ol-multi-{i}==1.0\n")).collect();
    add_lambda(
        w.path(),
        "multi",
        &[("f.py", &source), ("requirements.txt", &requirements)],
    );
    let a = w.run("multi", "{}");
    assert_eq!((a.status, a.body.as_str()), (200, "15"));
    for i in 0..6 {
        assert!(
            w.path()
                .join(format!("packages/ol-multi-{i}==1.0/.ol-package.json"))
                .is_file(),
            "ol-multi-{i} installed"
        );
    }
    // A version that is not on the index: resolution names it.
    add_needing(w.path(), "broken", "ol-multi-0==1.0\nol-multi-1==9.9\n");
    let a = w.run("broken", "{}");
    assert_eq!(a.status, 500, "{}", a.body);
    assert!(a.body.contains("ol-multi-1"), "{}", a.body);
    let a = w.run("multi", "{}");
    assert_eq!(
        (a.status, a.body.as_str()),
        (200, "15"),
        "the first lambda still works"
    );
}

/// Pids of the import-cache zygotes: in the worker's cgroups named
/// `zygote-*` other than the root zygote's (the first one started), the
/// process that is pid 2 of its own pid namespace (pid 1 there only reaps,
/// and the process that forked it stays outside to report its exit).
fn import_cache_zygote_pids(w: &TestWorker) -> Vec<u32> {
    let parent = Path::new("/sys/fs/cgroup/pids").join(ol_sandbox::sock::worker_id(&w.state_dir()));
    let mut zygotes: Vec<(u64, PathBuf)> = fs::read_dir(&parent)
        .expect("worker cgroup")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("zygote-")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    zygotes.sort();
    zygotes
        .iter()
        .skip(1)
        .flat_map(|(_, dir)| {
            fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .filter(|pid| common::is_pid_of_its_namespace(*pid, 2))
        .collect()
}

#[test]
#[ignore = "needs root"]
fn a_killed_import_cache_zygote_is_started_again() {
    let w = start(&[]);
    let lambda = |name: &str| {
        add_lambda(
            w.path(),
            name,
            &[
                (
                    "f.py",
                    "import numpy\ndef f(event):\n    return int(numpy.ones(3).sum())\n",
                ),
                ("requirements.txt", "numpy\n"),
            ],
        );
    };
    lambda("np-1");
    assert_eq!(w.run("np-1", "{}").body, "3");
    let pids = import_cache_zygote_pids(&w);
    assert_eq!(pids.len(), 1, "one numpy zygote process: {pids:?}");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pids[0].to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    // Its sandbox lives on (it sits in its own cgroup and namespaces).
    assert_eq!(w.run("np-1", "{}").body, "3");
    // New lambdas still fork from a numpy zygote: the first may take the
    // blank the dead one left ready; its death is then noticed and a new
    // numpy zygote started, not the root used.
    for name in ["np-2", "np-3"] {
        lambda(name);
        assert_eq!(w.run(name, "{}").body, "3");
    }
    let stats = w.stats();
    assert_eq!(stats["zygote_hits"], 3, "{stats}");
    assert_eq!(stats["zygote_misses"], 0, "{stats}");
    let again = import_cache_zygote_pids(&w);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again[0], pids[0]);
}

#[test]
#[ignore = "needs root"]
fn uv_comes_from_its_wheel_into_a_fresh_package_cache() {
    use std::os::unix::fs::MetadataExt;
    // No shared package cache: this worker's own, empty, and a machine
    // cache of the test's own (where a root worker keeps uv), so it gets
    // uv itself.
    let machine = tempfile::tempdir().expect("machine cache");
    let dir = common::init_dir(&[], &[]);
    let machine_var = machine.path().to_str().expect("utf-8 path");
    let out = common::up_detached(
        dir.path(),
        Backend::Sock,
        &[],
        &[],
        &[("XDG_CACHE_HOME", machine_var)],
    );
    assert!(out.status.success(), "{out:?}");
    let w = TestWorker::adopt(Backend::Sock, dir);
    add_six(w.path());
    let a = w.run("six", "{}");
    assert_eq!(a.status, 200, "{}", a.body);
    let tools = machine.path().join("ol/tools");
    let uv = tools.join("bin/uv");
    assert_eq!(
        w.stats()["packages"]["installer"],
        format!("uv ({})", uv.display()),
        "the worker installs with the uv it got"
    );
    // Fetched and unpacked by the worker's own program: the binary alone,
    // not the Python package `pip install --target` leaves beside it.
    let entries: Vec<String> = fs::read_dir(&tools)
        .expect("tools dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["bin"], "{entries:?}");
    let version = std::process::Command::new(&uv)
        .arg("--version")
        .output()
        .expect("run uv");
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("uv "),
        "{version:?}"
    );
    // six was installed out of a cache of the install's own (a worker's
    // own package cache is not shared), which went with its staging dir:
    // sealed, and its files have no other name. (Its bytecode is compiled
    // in a staging dir too, after the install.)
    let packages = w.path().join("packages");
    let six = package_dir(&w, "six");
    wait_for_bytecode(&six);
    let module = fs::metadata(six.join("six.py")).expect("six.py");
    assert_eq!((module.uid(), module.nlink()), (0, 1));
    // That cache started with the interpreter query the resolve left in
    // the worker's own cache, and uv took it instead of asking again.
    let log = fs::read_to_string(w.path().join("logs/worker.log")).expect("worker log");
    let installed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("installed package=six=="))
        .collect();
    assert_eq!(installed.len(), 1, "{log}");
    assert!(
        installed[0].contains("interpreter_query=\"skipped\""),
        "{}",
        installed[0]
    );
    assert_eq!(
        fs::read_dir(packages.join(".staging"))
            .expect("staging")
            .count(),
        0
    );
}

#[test]
#[ignore = "needs root"]
fn installed_packages_get_bytecode_python_takes() {
    use std::os::unix::fs::MetadataExt;
    let w = start(&[]);
    // What Python's loader checks before it takes a checked-hash pyc
    // instead of compiling the source: the magic number, the flags (0b11:
    // checked hash) and the source's hash.
    add_with_six(
        w.path(),
        "six-pyc",
        concat!(
            "import importlib.util, six\n",
            "def f(event):\n",
            "    pyc = importlib.util.cache_from_source(six.__file__)\n",
            "    try:\n",
            "        data = open(pyc, 'rb').read()\n",
            "    except OSError as e:\n",
            "        return {'pyc': str(e)}\n",
            "    source = open(six.__file__, 'rb').read()\n",
            "    return {'pyc': pyc, 'magic': data[:4] == importlib.util.MAGIC_NUMBER,\n",
            "            'flags': int.from_bytes(data[4:8], 'little'),\n",
            "            'hash': data[8:16] == importlib.util.source_hash(source)}\n",
        ),
    );
    let first = w.run("six-pyc", "{}");
    assert_eq!(first.status, 200, "{}", first.body);
    let six = package_dir(&w, "six");
    wait_for_bytecode(&six);
    let got = w.run("six-pyc", "{}");
    assert_eq!(got.status, 200, "{}", got.body);
    let got = got.json();
    assert_eq!(
        (&got["magic"], &got["flags"], &got["hash"]),
        (&true.into(), &3.into(), &true.into()),
        "{got}"
    );
    // Written by the worker like the rest of the package, and nothing
    // of the compile's staging left.
    let pyc_dir = six.join("__pycache__");
    let pycs: Vec<PathBuf> = fs::read_dir(&pyc_dir)
        .expect("__pycache__")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(!pycs.is_empty());
    for pyc in &pycs {
        let meta = fs::symlink_metadata(pyc).expect("pyc");
        assert_eq!(
            (meta.uid(), meta.mode() & 0o7777, meta.nlink()),
            (0, 0o644, 1),
            "{}",
            pyc.display()
        );
    }
    let dir = fs::symlink_metadata(&pyc_dir).expect("__pycache__");
    assert_eq!((dir.uid(), dir.mode() & 0o7777), (0, 0o755));
    assert_eq!(
        fs::read_dir(w.path().join("packages/.staging"))
            .expect("staging")
            .count(),
        0
    );
}

#[test]
fn process_backend_installs_and_imports_packages_too() {
    // The process backend's installer runs as the worker's user, so each
    // user has a cache of its own: files root writes in the shared one
    // would be unwritable for the sock installer sandbox (`nobody`), and
    // in another user's for that user.
    let cache = format!(
        "package_cache_dir=/var/tmp/ol-test-uv-cache-process-{}",
        nix::unistd::geteuid()
    );
    let w = TestWorker::start(Backend::Process, &[], &[&cache]);
    add_with_six(
        w.path(),
        "six",
        "import six, sys\ndef f(event):\n    return [six.__version__, [p for p in sys.path if 'six==' in p] != []]\n",
    );
    let a = w.run("six", "{}");
    assert_eq!(a.status, 200, "{}", a.body);
    let got = a.json();
    assert_eq!(
        got[1], true,
        "six came from the worker's packages dir: {got}"
    );
    assert_eq!(installs(&w), 1);
}
