//! The `sock` backend (docs/architecture.md §3.2–3.7, §3.13): each lambda runs in new
//! mount, pid, ipc, uts, network and cgroup namespaces, pivot_root'ed into
//! a root of read-only binds with size-bounded tmpfs scratch (`/host`,
//! `/tmp`), in a session of its own, as an unprivileged user with no
//! capabilities, under no_new_privs and a seccomp allow-list, inside its
//! own cgroup with memory, pids and cpu limits; its stdout and stderr are
//! pipes the worker drains into capped logs ([`crate::logs`]).
//!
//! Sandboxes are forked from zygotes: the root zygote has the runtime
//! imported, and the import cache adds child zygotes with packages
//! imported, started on first use. When no zygote works, a sandbox starts a
//! fresh interpreter through the sandbox init ([`init`]). Both enter their
//! sandboxes through the same jail (crates/jail). Everything a worker
//! creates is named under its worker id (`ol-<hash of the worker dir>`):
//! cgroups `ol-<id>/<sandbox>` and scratch dirs, so [`cleanup`] finds and
//! removes it after any crash. Mounts live only in the sandboxes' own
//! mount namespaces and die with them.
//!
//! One file per job:
//! - `pool.rs`: [`SockPool`], the state every job shares, and how a new
//!   sandbox is made (a blank of the deepest working zygote, else fresh);
//! - `zygote_cache.rs`: the zygotes by key, started on first use, retried
//!   after a failure, the least recently used evicted;
//! - `blanks.rs`: blank sandboxes forked ahead by a refill thread, and
//!   handing one its lambda;
//! - `fresh.rs`: sandboxes (and the root zygote) started through the
//!   sandbox init, and their handle;
//! - `command.rs`: the package installer's commands, run to completion;
//! - `cleanup.rs`: removing what a crashed worker left;
//! - `enclosure.rs`: what a sandbox holds on the host (cgroup, scratch)
//!   and how it is paused and torn down;
//! - `zygote.rs`: one zygote process, worker side, and its children;
//! - [`cgroup`], [`rootfs`] (mount plans), [`seccomp`], [`init`].

mod blanks;
pub mod cgroup;
mod cleanup;
mod command;
mod enclosure;
mod fresh;
pub mod init;
mod pool;
pub mod rootfs;
pub mod seccomp;
mod zygote;
mod zygote_cache;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use self::cgroup::{CgroupError, CgroupLimits, Cgroups, Hierarchy, RealFs};
use self::rootfs::inside;
use crate::{Limits, SandboxError, io_err};

pub(crate) use self::cleanup::cleanup;
pub(crate) use self::pool::{SockConfig, SockPool};

/// The worker id of the worker directory `dir`: stable across restarts, so
/// a new worker (or `force-cleanup`) finds what an old one left.
pub fn worker_id(dir: &Path) -> String {
    // FNV-1a: tiny, stable, and enough to keep two worker dirs apart.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("ol-{:08x}", h as u32)
}

/// The cgroups of the host's hierarchy (from /proc/self/mountinfo), on
/// the kernel's cgroupfs.
fn host_cgroups() -> Result<Cgroups, SandboxError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("cannot read", Path::new("/proc/self/mountinfo")))?;
    let hierarchy = Hierarchy::detect(&mountinfo).map_err(cgroup_err)?;
    Ok(hierarchy.cgroups(Arc::new(RealFs)))
}

fn cgroup_err(e: CgroupError) -> SandboxError {
    SandboxError::Cgroup(e.to_string())
}

fn cgroup_limits(l: &Limits) -> CgroupLimits {
    CgroupLimits {
        mem_bytes: l.mem_mb.saturating_mul(1 << 20),
        pids: l.procs,
        cpu_percent: l.cpu_percent,
        swappiness: l.swappiness,
    }
}

/// How every job kills a process the kernel cannot kill with its cgroup.
fn kill_pid(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// Package dirs as a sandbox sees them (under [`inside::PACKAGES`]).
fn package_paths(packages: &[String]) -> Vec<String> {
    packages
        .iter()
        .map(|p| format!("{}/{p}", inside::PACKAGES))
        .collect()
}

/// The environment every runtime starts with.
fn base_env() -> Vec<(String, String)> {
    vec![
        (
            "PATH".to_string(),
            "/usr/local/bin:/usr/bin:/bin".to_string(),
        ),
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("HOME".to_string(), inside::TMP.to_string()),
        ("TMPDIR".to_string(), inside::TMP.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_id_is_stable_and_distinct() {
        let a = worker_id(Path::new("/srv/ol-a"));
        assert_eq!(a, worker_id(Path::new("/srv/ol-a")));
        assert_ne!(a, worker_id(Path::new("/srv/ol-b")));
        assert!(a.starts_with("ol-") && a.len() == 11, "{a}");
    }

    #[test]
    fn limits_map_to_cgroup_units() {
        let l = cgroup_limits(&Limits {
            mem_mb: 50,
            procs: 10,
            cpu_percent: 100,
            swappiness: 0,
            ..Limits::default()
        });
        assert_eq!(l.mem_bytes, 50 << 20);
        assert_eq!((l.pids, l.cpu_percent, l.swappiness), (10, 100, 0));
    }
}
