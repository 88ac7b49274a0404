//! Runs the Python runtime's own unit tests (runtimes/python/test_*.py)
//! with the real interpreter, so `cargo test` covers both languages.

use std::path::Path;
use std::process::Command;

use ol_base::python::resolve_python;

#[test]
fn python_runtime_unit_tests_pass() {
    let python = resolve_python("python3").expect("a Python 3 interpreter");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../runtimes/python");
    let out = Command::new(&python.executable)
        .args(["-I", "-m", "unittest", "discover", "-s"])
        .arg(&dir)
        .args(["-p", "test_*.py", "-v"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python unittest");
    let report = String::from_utf8_lossy(&out.stderr);
    println!("{report}");
    assert!(
        out.status.success(),
        "Python runtime tests failed:\n{report}"
    );
    // unittest prints "Ran N tests"; a run of zero tests is a failure too.
    let ran: usize = report
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("unittest summary line");
    assert!(ran > 0, "no Python tests were found in {}", dir.display());
}

/// The runtime and the zygote start as sandboxes start them (the `-c`
/// program of `start_program`, with `-I -S`), from the byte-compiled
/// copies `compile_runtime` leaves beside them, and get their arguments.
#[test]
fn runtime_and_zygote_start_from_their_byte_compiled_copies() {
    use ol_sandbox::runtime::{
        RUNTIME_FILE, ZYGOTE_FILE, compile_runtime, install_runtime, start_program,
    };
    let python = resolve_python("python3").expect("a Python 3 interpreter");
    let dir = tempfile::tempdir().expect("tempdir");
    install_runtime(dir.path()).expect("install the runtime");
    compile_runtime(
        dir.path(),
        &python.executable,
        ol_sandbox::sock::rootfs::BaseKind::Host,
    );
    let dir_text = dir.path().to_str().expect("a UTF-8 temp dir");
    for (file, usage) in [
        (RUNTIME_FILE, "usage: ol_runtime.py"),
        (ZYGOTE_FILE, "usage: ol_zygote.py"),
    ] {
        let out = Command::new(&python.executable)
            .args(["-I", "-S", "-v", "-c", &start_program(dir_text, file)])
            // Not a descriptor: main() answers with its usage and 2.
            .args(["--fd", "not-a-number"])
            .output()
            .expect("run python");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {stderr}");
        assert!(
            stderr.contains(usage),
            "{file} did not run its main: {stderr}"
        );
        let module = file.trim_end_matches(".py");
        let cached = format!("code object from '{dir_text}/__pycache__/{module}.");
        assert!(
            stderr.contains(&cached),
            "{file} was not loaded from its byte-compiled copy: {stderr}"
        );
    }
}
