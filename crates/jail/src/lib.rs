//! The one jail of `ol` (docs/architecture.md §3.2, §3.13): every step of putting a
//! process into a sandbox, in Rust, used by both ways a sandbox starts:
//! - the sandbox init (`ol __ol_sandbox_init`, in the sandbox crate), which
//!   starts the root zygote, lambdas started without a zygote, and the
//!   package installer;
//! - zygote children: a Python zygote loads this crate as a shared library
//!   (`libol_jail.so`, the `cdylib` of this crate) and enters each child's
//!   sandbox with one native call ([`child`], through a small C ABI), so no
//!   syscall number or kernel constant lives in Python.
//!
//! The steps are small functions, each failing with a [`JailError`] that
//! names the step: [`fds`] (descriptors, cgroups), [`ns`] (namespaces,
//! sessions, host name, loopback), [`mounts`] (the root file system),
//! [`creds`] (identity, capabilities, no_new_privs, seccomp) and
//! [`process`] (fork, reaping, exit status). [`outside`] is what the worker
//! does from outside a sandbox: detached mounts of code, scratch file
//! systems and proc, and the loopback of a sandbox's network namespace.
//! All `unsafe` code of `ol` is in one module, `sys`.

pub mod child;
pub mod creds;
pub mod fds;
pub mod mounts;
pub mod ns;
pub mod outside;
pub mod process;
mod sys;

pub use sys::inherit_fd_as;

/// A step of entering a sandbox that failed.
#[derive(Debug)]
pub struct JailError {
    /// What was being done ("join cgroup /sys/fs/cgroup/...", "pivot_root").
    pub step: String,
    /// Why it failed.
    pub source: std::io::Error,
}

impl std::fmt::Display for JailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.source)
    }
}

impl std::error::Error for JailError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Result of a jail step.
pub type Result<T> = std::result::Result<T, JailError>;

/// Names the step `what` of a fallible operation.
pub fn step<T, E: Into<std::io::Error>>(
    what: impl Into<String>,
    r: std::result::Result<T, E>,
) -> Result<T> {
    r.map_err(|e| JailError {
        step: what.into(),
        source: e.into(),
    })
}

/// A step that fails for a reason of ours (no OS error behind it).
pub(crate) fn refuse<T>(what: impl Into<String>, why: &str) -> Result<T> {
    Err(JailError {
        step: what.into(),
        source: std::io::Error::other(why.to_string()),
    })
}

/// The uid and gid lambdas run as (`nobody`), inside their sandbox and on
/// the host alike.
pub const SANDBOX_ID: u32 = 65534;
/// The host uid and gid behind root of the zygotes' user namespace: an
/// unprivileged id that owns no file, so a zygote (and any package code it
/// imports) is nobody on the host.
pub const ZYGOTE_HOST_ID: u32 = 65533;
