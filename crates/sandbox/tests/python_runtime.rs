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
