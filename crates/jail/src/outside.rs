//! What the worker (root, outside every sandbox) prepares for a zygote
//! child: detached mounts that belong to no mount namespace until the child
//! attaches them (so nothing is ever mounted on the host, and a mount
//! nobody attached vanishes with its last descriptor), and the loopback of
//! the child's network namespace. Doing these from outside is what lets
//! zygotes run without CAP_NET_ADMIN and without the right to mount any
//! file system.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::child::{self, NS_META, PROC_META};
pub use crate::sys::PidfdEnd;
use crate::sys::{self, FsOption, MountAttrFlags};
use crate::{Result, refuse, step};

/// A detached recursive bind of `path`: read-only unless `writable`,
/// always nosuid and nodev.
pub fn bind(path: &Path, writable: bool) -> Result<OwnedFd> {
    let mut attrs = MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV;
    if !writable {
        attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
    }
    step(
        format!("clone the mount of {}", path.display()),
        sys::open_tree_clone(path, attrs),
    )
}

/// A scratch file system a sandbox may write (its `/host` or `/tmp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scratch {
    /// Its size in MiB (pages written also count against the sandbox's
    /// memory limit: tmpfs pages are charged to the writer's cgroup).
    pub size_mb: u64,
    /// Mode of its top directory.
    pub mode: u32,
    /// Owner (uid and gid) of its top directory, on the host.
    pub owner: u32,
}

/// Most files and directories a scratch file system holds per MiB of its
/// size (inodes cost memory too).
const INODES_PER_MB: u64 = 256;

/// The inode limit of a scratch file system of `size_mb`.
pub fn inodes_for(size_mb: u64) -> u64 {
    size_mb.max(1).saturating_mul(INODES_PER_MB)
}

/// A new, detached tmpfs for a sandbox's scratch.
pub fn scratch(s: Scratch) -> Result<OwnedFd> {
    let size = format!("{}m", s.size_mb);
    let inodes = inodes_for(s.size_mb).to_string();
    let mode = format!("{:o}", s.mode);
    let owner = s.owner.to_string();
    let options = [
        FsOption::Text("size", &size),
        FsOption::Text("nr_inodes", &inodes),
        FsOption::Text("mode", &mode),
        FsOption::Text("uid", &owner),
        FsOption::Text("gid", &owner),
    ];
    step(
        "make a scratch file system",
        sys::new_fs(
            "tmpfs",
            &options,
            MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV,
        ),
    )
}

/// A new, detached proc file system of the pid namespace `pidns` (sent by
/// the sandbox: see [`crate::ns::pidns_handle`]).
pub fn proc_of(pidns: BorrowedFd<'_>) -> Result<OwnedFd> {
    step(
        "make the sandbox's proc",
        sys::new_fs(
            "proc",
            &[FsOption::Fd("pidns", pidns)],
            MountAttrFlags::MOUNT_ATTR_NOSUID
                | MountAttrFlags::MOUNT_ATTR_NODEV
                | MountAttrFlags::MOUNT_ATTR_NOEXEC,
        ),
    )
}

/// Brings up the loopback of the network namespace that `sock` belongs to
/// (sent by the sandbox: see [`crate::ns::netns_handle`]).
pub fn loopback_up_via(sock: BorrowedFd<'_>) -> Result<()> {
    step(
        "bring the sandbox's loopback up",
        sys::loopback_up_via(sock),
    )
}

/// What the worker holds of a new sandbox once its first frame came.
#[derive(Debug)]
pub struct NewSandbox {
    /// A proc mount of its pid namespace, for the sandbox to attach.
    pub proc: OwnedFd,
    /// A pidfd of its pid 1 ([`pid1_end`]).
    pub pid1: OwnedFd,
}

/// Reads the first frame of a new sandbox (a blank or a child zygote) from
/// its socket `conn`, with its pid namespace, a socket of its network
/// namespace and a pidfd of its pid 1; brings that network's loopback up
/// and makes a proc mount of that pid namespace.
pub fn receive_namespaces(conn: BorrowedFd<'_>) -> Result<NewSandbox> {
    let what = "receive the sandbox's namespaces";
    let mut fds = child::receive(conn, NS_META, 3, what)?.into_iter();
    let (Some(pidns), Some(net), Some(pid1)) = (fds.next(), fds.next(), fds.next()) else {
        return refuse(what, "three descriptors were expected");
    };
    loopback_up_via(net.as_fd())?;
    Ok(NewSandbox {
        proc: proc_of(pidns.as_fd())?,
        pid1,
    })
}

/// How a sandbox's pid 1 ended, through the pidfd it sent
/// ([`NewSandbox::pid1`]): its raw wait status once it has ended and its
/// parent (the zygote) has reaped it, on Linux 6.15 and later; on older
/// kernels only that it ended.
pub fn pid1_end(pid1: BorrowedFd<'_>) -> Result<PidfdEnd> {
    step("read how the sandbox ended", sys::pidfd_end(pid1))
}

/// The host pid (as the caller numbers it) of a sandbox's pid 1, through
/// its pidfd ([`NewSandbox::pid1`]); `None` once it has ended or on a
/// kernel before 6.13.
pub fn pid1_pid(pid1: BorrowedFd<'_>) -> Option<u32> {
    sys::pidfd_pid(pid1)
}

/// Waits, asleep, until a sandbox's pid 1 has ended (its pidfd,
/// [`NewSandbox::pid1`], is readable), at most `timeout`; returns whether
/// it has. When pid 1 ends, the kernel has killed and waited for every
/// other process of its pid namespace.
pub fn wait_pid1_end(pid1: BorrowedFd<'_>, timeout: std::time::Duration) -> Result<bool> {
    step("wait for the sandbox's end", sys::pidfd_wait(pid1, timeout))
}

/// Sends a new child zygote the proc mount of its pid namespace.
pub fn send_proc(conn: BorrowedFd<'_>, proc: BorrowedFd<'_>) -> Result<()> {
    child::send(conn, PROC_META, &[proc], "send the zygote its proc")
}
