//! The sandbox's root file system.
//!
//! A [`MountPlan`] lists, as data, every mount a sandbox started by the
//! sandbox init makes in its private mount namespace before it pivots into
//! the root ([`make_root`], done as root before any privilege is dropped).
//! A zygote child instead attaches mounts the worker prepared
//! ([`crate::outside`]) onto the root it inherited ([`attach`]).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::unistd::{chdir, pivot_root};

use crate::{Result, step, sys};

/// One mount a sandbox makes, in order, inside its own mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum MountOp {
    /// Bind `source` onto `target` (recursively), read-only unless
    /// `writable`; always nosuid.
    Bind {
        /// Host path.
        source: PathBuf,
        /// Path under the new root.
        target: PathBuf,
        /// Leave it writable.
        writable: bool,
    },
    /// A fresh tmpfs (nosuid, nodev).
    Tmpfs {
        /// Path under the new root.
        target: PathBuf,
        /// Mount options (`size=...,mode=...`).
        options: String,
    },
    /// A proc file system for the sandbox's pid namespace.
    Proc {
        /// Path under the new root.
        target: PathBuf,
    },
    /// Make the root itself read-only once everything is mounted.
    ReadOnlyRoot,
}

/// Everything a sandbox mounts before it pivots into `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MountPlan {
    /// The new root (the base directory, bound onto itself first).
    pub root: PathBuf,
    /// Mounts in order.
    pub ops: Vec<MountOp>,
}

/// Makes every mount of `plan` in the calling process's (new, private)
/// mount namespace, so nothing is ever visible on the host and everything
/// vanishes with the namespace, then pivots into the root.
pub fn make_root(plan: &MountPlan) -> Result<()> {
    let none: Option<&str> = None;
    step(
        "make mounts private",
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none),
    )?;
    let root = &plan.root;
    step(
        format!("bind root {}", root.display()),
        mount(
            Some(root),
            root,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        ),
    )?;
    for op in &plan.ops {
        match op {
            MountOp::Bind {
                source,
                target,
                writable,
            } => {
                // A command's dirs may need mount points (in the base, or
                // in the fresh /tmp).
                if !target.exists() {
                    step(
                        format!("make mount point {}", target.display()),
                        std::fs::create_dir_all(target),
                    )?;
                }
                step(
                    format!("bind {} on {}", source.display(), target.display()),
                    mount(
                        Some(source),
                        target,
                        none,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        none,
                    ),
                )?;
                remount(target, !writable)?;
            }
            MountOp::Tmpfs { target, options } => step(
                format!("mount tmpfs on {}", target.display()),
                mount(
                    Some("tmpfs"),
                    target,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(options.as_str()),
                ),
            )?,
            MountOp::Proc { target } => step(
                format!("mount proc on {}", target.display()),
                mount(
                    Some("proc"),
                    target,
                    Some("proc"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    none,
                ),
            )?,
            MountOp::ReadOnlyRoot => remount(root, true)?,
        }
    }
    step(format!("chdir {}", root.display()), chdir(root))?;
    // pivot_root(".", ".") stacks the old root under the new one; unmounting
    // "." then drops it, with no put_old directory needed.
    step("pivot_root", pivot_root(".", "."))?;
    step("detach old root", umount2(".", MntFlags::MNT_DETACH))?;
    step("chdir /", chdir("/"))?;
    Ok(())
}

/// Remounts the bind at `target` nosuid, and read-only when asked.
fn remount(target: &Path, read_only: bool) -> Result<()> {
    let none: Option<&str> = None;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    step(
        format!("remount {}", target.display()),
        mount(none, target, none, flags, none),
    )
}

/// Attaches the detached mount `mount` (made by the worker) at `target`
/// in the calling process's mount namespace, and closes it.
pub fn attach(mount: OwnedFd, target: &str) -> Result<()> {
    step(
        format!("attach {target}"),
        sys::move_mount(mount.as_fd(), Path::new(target)),
    )
}
