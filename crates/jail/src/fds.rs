//! Descriptors: a sandbox keeps exactly the ones meant for it (whatever the
//! process that started the worker left open without close-on-exec, and
//! whatever its zygote held, stays out), and joins its cgroups.

use std::io::Write;
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;

use crate::{Result, step, sys};

/// Closes every descriptor of the process but those in `keep`, including
/// any a Rust object still owns: call it when the only descriptors still
/// owned are in `keep` (or were turned into raw numbers).
pub fn close_all_except(keep: &[RawFd]) -> Result<()> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first = 0u32;
    for &fd in &keep {
        if fd > first {
            step(
                "close inherited descriptors",
                sys::close_range(first, fd - 1, 0),
            )?;
        }
        first = fd.saturating_add(1);
    }
    if first < u32::MAX {
        step(
            "close inherited descriptors",
            sys::close_range(first, u32::MAX, 0),
        )?;
    }
    Ok(())
}

/// Marks every descriptor from 3 up close-on-exec, so nothing the process
/// that started us left open reaches a program we start (the worker calls
/// this first thing).
pub fn cloexec_inherited() -> Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    step(
        "mark inherited descriptors close-on-exec",
        sys::close_range(3, u32::MAX, CLOSE_RANGE_CLOEXEC),
    )
}

/// Joins the cgroups whose join files (v1 `tasks`, v2 `cgroup.procs`) the
/// worker opened and sent (the kernel checks the opener's credentials, so
/// the joining process needs no privilege of its own), then closes them.
/// The caller is a child just forked, so its one thread is the process.
pub fn join_cgroups(procs: Vec<OwnedFd>) -> Result<()> {
    for file in procs {
        // "0" is the writing process itself.
        step("join cgroup", std::fs::File::from(file).write_all(b"0"))?;
    }
    Ok(())
}

/// Joins the cgroups of these join files (v1 `tasks`, v2 `cgroup.procs`;
/// by path, as root) by writing `0`, the writing thread: the caller has
/// only one (an init before it starts anything).
pub fn join_cgroup_paths(files: &[PathBuf]) -> Result<()> {
    for file in files {
        step(
            format!("join cgroup {}", file.display()),
            std::fs::write(file, "0"),
        )?;
    }
    Ok(())
}
