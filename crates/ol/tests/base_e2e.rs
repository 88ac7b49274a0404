//! End-to-end tests of `ol worker init --base debootstrap` (root, and the
//! Debian mirror the first time): lambdas run on the base's own Python and
//! see nothing of the host's system. The built root file system is cached
//! (`/var/cache/ol`, or `$OL_CACHE_DIR`), so reruns do not download.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{Backend, TestWorker, ol, stderr};

/// Shared installer cache, as in packages_e2e.rs.
const PACKAGE_CACHE: &str = "package_cache_dir=/var/tmp/ol-test-uv-cache";

/// What a lambda sees of its interpreter and file system.
const PROBE: &str = r#"
import os, sys

def f(event):
    return {
        "version": sys.version,
        "executable": sys.executable,
        "prefix": sys.base_prefix,
        "debian_version": open("/etc/debian_version").read(),
        "mounts": [line.split()[4] for line in open("/proc/self/mountinfo")],
        "visible": [p for p in event["paths"] if os.path.exists(p)],
    }
"#;

const SIX: &str = r#"
import six

def f(event):
    return six.__file__
"#;

/// `python -c code` run in a chroot of `base`, trimmed.
fn in_base(base: &Path, code: &str) -> String {
    let chroot = ["/usr/sbin/chroot", "/sbin/chroot"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("chroot");
    let out = Command::new(chroot)
        .arg(base)
        .args(["/usr/bin/python3", "-I", "-S", "-c", code])
        .output()
        .expect("run chroot");
    assert!(out.status.success(), "chroot: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The host's own interpreter (what a host base would run).
fn host_python() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-I", "-S", "-c", "import sys; print(sys.executable)"])
        .output()
        .ok()?;
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

#[test]
#[ignore = "needs root"]
fn lambdas_run_on_the_debootstrap_base_and_its_own_python() {
    let started = Instant::now();
    // Fails with init's one-line error (say, an unreachable mirror) when
    // the base cannot be built.
    let mut w = TestWorker::start_init(
        Backend::Sock,
        &["--base", "debootstrap"],
        &[
            ("probe", &[("f.py", PROBE)]),
            ("six", &[("f.py", SIX), ("requirements.txt", "six\n")]),
        ],
        &[PACKAGE_CACHE],
    );
    eprintln!(
        "init --base debootstrap and up took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let base = w.path().join("base");
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(w.path().join("config.json")).expect("config"))
            .expect("config JSON");
    assert_eq!(config["base"], "debootstrap");
    assert_eq!(config["python"], "/usr/bin/python3");
    assert_eq!(
        fs::read_to_string(base.join(".ol-base")).expect("marker"),
        "debootstrap\n"
    );

    let a = w.run("hello", r#"{"name": "Debian"}"#);
    assert_eq!((a.status, a.body.as_str()), (200, "\"Hello, Debian!\""));

    // Paths the host has and the base has not: none may be visible.
    let mut host_only: Vec<PathBuf> = [
        "/usr/sbin/debootstrap",
        "/usr/bin/gcc",
        "/usr/bin/git",
        "/usr/bin/curl",
        "/root/.pyenv",
    ]
    .iter()
    .map(PathBuf::from)
    .chain(host_python())
    .filter(|p| p.exists() && !base.join(p.strip_prefix("/").unwrap_or(p)).exists())
    .collect();
    host_only.dedup();
    assert!(
        !host_only.is_empty(),
        "the host has debootstrap, which the base has not"
    );
    let event = serde_json::json!({ "paths": host_only }).to_string();
    let a = w.run("probe", &event);
    assert_eq!(a.status, 200, "{}", a.body);
    let j = a.json();
    assert_eq!(j["executable"], "/usr/bin/python3");
    assert_eq!(j["prefix"], "/usr");
    assert_eq!(
        j["version"],
        in_base(&base, "import sys; print(sys.version)"),
        "the base's Python, not the host's"
    );
    assert_eq!(
        j["debian_version"],
        fs::read_to_string(base.join("etc/debian_version")).expect("debian_version")
    );
    assert_eq!(j["visible"], serde_json::json!([]), "host-only paths");
    let mounts: Vec<&str> = j["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    for host_dir in ["/usr", "/lib", "/lib64", "/bin", "/sbin", "/root"] {
        assert!(
            !mounts.iter().any(|m| Path::new(m).starts_with(host_dir)),
            "{host_dir} is bound from the host: {mounts:?}"
        );
    }
    assert!(mounts.contains(&"/handler") && mounts.contains(&"/dev/null"));

    // The package installer resolves and installs for the base's Python.
    let a = w.run("six", "null");
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("/packages/six=="), "{}", a.body);

    w.down();
    // config.json and the base must agree.
    let out = ol(w.path(), &["worker", "up", "-d", "-o", "base=host"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is a debootstrap base but config.json says \"base\": \"host\""),
        "{}",
        stderr(&out)
    );
}

#[test]
#[ignore = "needs root"]
fn an_unreachable_mirror_fails_init_with_one_clear_line() {
    let dir = tempfile::Builder::new()
        .prefix("ol-e2e-")
        .tempdir()
        .expect("tempdir");
    let cache = tempfile::tempdir().expect("cache");
    let out = Command::new(common::ol_bin())
        .args(["worker", "init", "-p"])
        .arg(dir.path().join("ol"))
        .args([
            "--base",
            "debootstrap",
            "--mirror",
            "http://127.0.0.1:9/debian",
        ])
        .arg("--cache-dir")
        .arg(cache.path())
        .output()
        .expect("run ol");
    assert!(!out.status.success());
    let err = stderr(&out);
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ol: debootstrap of ")
            && last.contains("from http://127.0.0.1:9/debian failed")
            && last.contains("check that the mirror is reachable"),
        "{err}"
    );
    assert!(!dir.path().join("ol/config.json").exists());
    // Nothing of the failed build is left mounted or half-built.
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mountinfo.contains(&cache.path().display().to_string()));
    let leftovers: Vec<_> = fs::read_dir(cache.path().join("debootstrap"))
        .expect("cache dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".build") || n.ends_with(".tar"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
