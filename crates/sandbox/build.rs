//! Builds the jail's shared library (`crates/jail`, whose `cdylib` zygotes
//! load) with a cargo of its own, so this crate can embed it: the `ol`
//! binary stays one self-contained file, and zygote children enter their
//! sandboxes with the very code the sandbox init runs.
//!
//! Cargo cannot yet depend on another crate's `cdylib` (artifact
//! dependencies are unstable), hence the nested build, into a target
//! directory of its own under OUT_DIR (reused between builds).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let jail = manifest_dir.join("../jail");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target_dir = out.join("jail-target");
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(jail.join("Cargo.toml"))
        .arg("--lib")
        // The workspace build fetched every crate the jail needs, and the
        // lock file is the workspace's.
        .arg("--offline")
        .arg("--locked")
        .arg("--target-dir")
        .arg(&target_dir)
        // Small and quick to write into each worker's runtime dir: no debug
        // info or symbols beyond the C ABI (the sandbox init links the same
        // code, with its debug info, for debugging).
        .args(["--config", "profile.dev.debug=0"])
        .args(["--config", "profile.dev.strip=\"symbols\""])
        .args(["--config", "profile.release.debug=0"])
        .args(["--config", "profile.release.strip=\"symbols\""]);
    if release {
        cmd.arg("--release");
    }
    // Plain rustc for the nested build: clippy (RUSTC_WORKSPACE_WRAPPER)
    // lints the jail crate itself in the workspace build.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo to build the jail library");
    assert!(
        status.success(),
        "building the jail library failed: {status}"
    );

    let profile_dir = if release { "release" } else { "debug" };
    let built = target_dir.join(profile_dir).join("libol_jail.so");
    let embedded = out.join("libol_jail.so");
    std::fs::copy(&built, &embedded)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", built.display(), embedded.display()));

    println!("cargo:rerun-if-changed={}", jail.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        jail.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../../Cargo.lock").display()
    );
}
