//! The jail's syscall boundary, and the only place in `ol` with `unsafe`
//! code: the kernel calls the jail makes, each mapping its failure to an
//! `std::io::Error` that the caller names (see [`crate::JailError`]), and
//! the C ABI zygotes call ([`ffi`]). Where `rustix` has a safe wrapper
//! (the new mount API, capability sets, dup onto stdio) it is used;
//! `unsafe` remains only for what no safe crate covers here: `fork` (and
//! `clone` into new namespaces), pidfds and their exit status,
//! `pre_exec`, `close_range`, `mount_setattr`, installing a seccomp
//! filter, the loopback's interface flags, `_exit`, a signal's default
//! action, and adopting descriptors handed over by number.
#![allow(unsafe_code)]

mod ffi;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::unistd::ForkResult;
pub(crate) use rustix::mount::MountAttrFlags;
use rustix::mount::{FsMountFlags, FsOpenFlags, MoveMountFlags, OpenTreeFlags};
use rustix::thread::CapabilitySet;

fn last_error<T>() -> io::Result<T> {
    Err(io::Error::last_os_error())
}

/// Forks the calling process. Only for single-threaded callers: the
/// sandbox init, and zygote children (a Python zygote never starts
/// threads).
pub(crate) fn fork() -> io::Result<ForkResult> {
    // SAFETY: our callers are single-threaded, so the child gets a
    // consistent copy of the only thread's state (no lock can be held by a
    // thread that does not exist in the child).
    unsafe { nix::unistd::fork() }.map_err(io::Error::from)
}

/// Forks the calling process straight into new namespaces (`flags`, a
/// `CLONE_NEW*` set): the child is the first process of a new pid
/// namespace when `CLONE_NEWPID` is in them. One `clone` with the child on
/// its copy of the caller's stack, like `fork`, instead of fork, unshare
/// and fork again (measured on this machine kind: 1.35 ms against 2.58
/// ms). libc's fork handlers do not run, and libc's record of the
/// thread's id is not updated (nothing the jail or Python's runtime uses
/// reads it): only for single-threaded callers, whose other threads can
/// hold no lock the child would wait for (a threaded zygote uses [`fork`],
/// see [`crate::child::Forked`]).
pub(crate) fn fork_into(flags: nix::sched::CloneFlags) -> io::Result<ForkResult> {
    let flags = flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: a raw clone without CLONE_VM and with a null stack is fork:
    // the child runs on its own copy of the caller's memory, stack
    // included. The caller is single-threaded (as for `fork`), so that copy
    // is consistent. The null pointers are the optional tid and tls
    // arguments, unused without the flags that read them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    match rc {
        rc if rc < 0 => last_error(),
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent {
            child: nix::unistd::Pid::from_raw(pid as libc::pid_t),
        }),
    }
}

/// A pidfd of process `pid` (as numbered in the caller's pid namespace).
pub(crate) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes integers and returns a new descriptor that
    // nobody else owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return last_error();
    }
    // SAFETY: a fresh descriptor, ours alone.
    Ok(unsafe { adopt(fd as RawFd) })
}

/// `struct pidfd_info` of linux/pidfd.h (its first version, 64 bytes, and
/// the fields after it up to `exit_code`).
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
}
/// `PIDFD_INFO_PID`: the pid fields (the kernel fills them always).
const PIDFD_INFO_PID: u64 = 1 << 0;
/// `PIDFD_INFO_EXIT` (Linux 6.15).
const PIDFD_INFO_EXIT: u64 = 1 << 3;
/// `PIDFD_GET_INFO`: `_IOWR(0xFF, 11, struct pidfd_info)`.
const PIDFD_GET_INFO: libc::c_ulong =
    (3 << 30) | ((size_of::<PidfdInfo>() as libc::c_ulong) << 16) | (0xFF << 8) | 11;

/// What a pidfd tells of its process's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidfdEnd {
    /// It runs (or has not been reaped yet).
    Running,
    /// It ended and was reaped, with this raw wait status.
    Status(i32),
    /// It ended, but the kernel keeps no exit status for pidfds (before
    /// Linux 6.15).
    Unknown,
}

/// `PIDFD_GET_INFO` on `pidfd`, asking for the fields of `mask`.
fn pidfd_info(pidfd: BorrowedFd<'_>, mask: u64) -> io::Result<PidfdInfo> {
    let mut info = PidfdInfo {
        mask,
        ..PidfdInfo::default()
    };
    // SAFETY: PIDFD_GET_INFO writes at most the size its request number
    // carries, which is `info`'s.
    let rc = unsafe {
        libc::ioctl(
            pidfd.as_raw_fd(),
            PIDFD_GET_INFO,
            std::ptr::from_mut(&mut info),
        )
    };
    if rc == 0 { Ok(info) } else { last_error() }
}

/// The pid of the process of `pidfd` as numbered in the caller's pid
/// namespace: one `ioctl`, against reading `/proc` to find it. `None`
/// once it has ended, when the caller's namespace cannot see it, or
/// before Linux 6.13 (no `PIDFD_GET_INFO`).
pub(crate) fn pidfd_pid(pidfd: BorrowedFd<'_>) -> Option<u32> {
    pidfd_info(pidfd, PIDFD_INFO_PID)
        .ok()
        .filter(|info| info.mask & PIDFD_INFO_PID != 0 && info.pid != 0)
        .map(|info| info.pid)
}

/// How the process of `pidfd` ended ([`PidfdEnd`]).
pub(crate) fn pidfd_end(pidfd: BorrowedFd<'_>) -> io::Result<PidfdEnd> {
    let e = match pidfd_info(pidfd, PIDFD_INFO_EXIT) {
        Ok(info) => {
            return Ok(if info.mask & PIDFD_INFO_EXIT != 0 {
                PidfdEnd::Status(info.exit_code)
            } else {
                PidfdEnd::Running
            });
        }
        Err(e) => e,
    };
    match e.raw_os_error() {
        // Reaped, on a kernel that knows PIDFD_GET_INFO but not
        // PIDFD_INFO_EXIT (6.13, 6.14).
        Some(libc::ESRCH) => Ok(PidfdEnd::Unknown),
        // No PIDFD_GET_INFO at all: a pidfd is readable once its process
        // has ended.
        Some(libc::ENOTTY | libc::EINVAL) => Ok(if pidfd_wait(pidfd, std::time::Duration::ZERO)? {
            PidfdEnd::Unknown
        } else {
            PidfdEnd::Running
        }),
        _ => Err(e),
    }
}

/// Waits until the process of `pidfd` has ended (its pidfd is readable),
/// at most `timeout`; returns whether it has.
pub(crate) fn pidfd_wait(pidfd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut poll = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut poll, 1, ms) };
        match n {
            n if n > 0 => return Ok(true),
            0 => return Ok(false),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Makes the child started by `cmd` inherit `fd` as descriptor `target`
/// (without close-on-exec), whatever number `fd` has in the parent.
pub fn inherit_fd_as(cmd: &mut Command, fd: RawFd, target: RawFd) {
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe syscalls (dup2, fcntl) on descriptors it owns; it
    // allocates nothing and touches no locks.
    unsafe {
        cmd.pre_exec(move || {
            if fd == target {
                let flags = libc::fcntl(target, libc::F_GETFD);
                if flags < 0 || libc::fcntl(target, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, target) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `close_range(first, last, flags)`: closes (or, with
/// `CLOSE_RANGE_CLOEXEC`, marks close-on-exec) every descriptor in the
/// range, open or not.
pub(crate) fn close_range(first: u32, last: u32, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: close_range takes integers only. Descriptors in the range that
    // Rust objects own are the caller's concern: `crate::fds` only closes
    // ranges holding no descriptor it still uses.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) };
    if rc < 0 { last_error() } else { Ok(()) }
}

/// The raw number of `fd`, whose ownership passes to the caller's new
/// [`OwnedFd`]: for descriptors handed over the C ABI or received with
/// SCM_RIGHTS.
///
/// # Safety
/// `fd` must be open and owned by nobody else.
pub(crate) unsafe fn adopt(fd: RawFd) -> OwnedFd {
    // SAFETY: upheld by the caller.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Clears the ambient capability set.
pub(crate) fn clear_ambient_caps() -> io::Result<()> {
    Ok(rustix::thread::clear_ambient_capability_set()?)
}

/// Drops every capability not in `keep` (a bit per capability number)
/// from the bounding set. Only those still in it: each drop replaces the
/// process's credentials (a copy and an RCU-freed old one), where reading
/// the set does not, and a sandbox's bounding set is already down to its
/// zygote's few capabilities (then empty, for the assignment).
pub(crate) fn drop_bounding_set(keep: u64) -> io::Result<()> {
    for cap in 0..64u32 {
        if keep & (1 << cap) != 0 {
            continue;
        }
        let one = CapabilitySet::from_bits_retain(1 << cap);
        match rustix::thread::capability_is_in_bounding_set(one) {
            Ok(false) => continue,
            Ok(true) => {}
            // EINVAL: past the last capability this kernel knows.
            Err(rustix::io::Errno::INVAL) => break,
            Err(e) => return Err(e.into()),
        }
        rustix::thread::remove_capability_from_bounding_set(one)?;
    }
    Ok(())
}

/// Installs a seccomp filter program (classic BPF, 8 bytes an
/// instruction, native endian) on the calling thread (and, since it is
/// inherited, on everything it starts). Needs no_new_privs or
/// CAP_SYS_ADMIN.
pub(crate) fn install_seccomp(program: &[u8]) -> io::Result<()> {
    if program.is_empty() || !program.len().is_multiple_of(8) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut filter: Vec<libc::sock_filter> = program
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let len = u16::try_from(filter.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let prog = libc::sock_fprog {
        len,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel
    // copies the program before returning.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc < 0 { last_error() } else { Ok(()) }
}

/// Sets IFF_UP and IFF_RUNNING on the loopback interface of the network
/// namespace that `sock` (any socket) belongs to. The caller needs
/// CAP_NET_ADMIN over that namespace, which the worker (root) has over
/// every sandbox's: a sandbox sends it a socket of its namespace, so the
/// sandbox itself never holds the capability.
pub(crate) fn loopback_up_via(sock: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS writes into `req`, which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return last_error();
    }
    // SAFETY: the union member ifru_flags is what SIOCGIFFLAGS filled in.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads `req`, which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return last_error();
    }
    Ok(())
}

/// Restores the default action of `sig` (before re-raising it).
pub(crate) fn default_signal(sig: nix::sys::signal::Signal) -> io::Result<()> {
    use nix::sys::signal::{SigHandler, signal};
    // SAFETY: installing SIG_DFL involves no handler code at all.
    unsafe { signal(sig, SigHandler::SigDfl) }
        .map(drop)
        .map_err(io::Error::from)
}

/// `struct mount_attr` of `mount_setattr` (linux/mount.h), which rustix
/// does not wrap.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached copy of the mount tree at `path` (`open_tree` with
/// `OPEN_TREE_CLONE | AT_RECURSIVE`) with `attrs` set on every mount of it.
pub(crate) fn open_tree_clone(path: &Path, attrs: MountAttrFlags) -> io::Result<OwnedFd> {
    let fd = rustix::mount::open_tree(
        rustix::fs::CWD,
        path,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    )?;
    let attr = MountAttr {
        attr_set: u64::from(attrs.bits()),
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads `attr` (its size passed), which outlives
    // the call; the empty path with AT_EMPTY_PATH names the descriptor.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return last_error();
    }
    Ok(fd)
}

/// An option of a new file system instance (see [`new_fs`]).
pub(crate) enum FsOption<'a> {
    /// `key=value`.
    Text(&'a str, &'a str),
    /// `key` set to a descriptor (proc's `pidns`).
    Fd(&'a str, BorrowedFd<'a>),
}

/// A new, detached instance of file system `fstype` (`fsopen`, `fsconfig`,
/// `fsmount`) with `options` and mount `attrs`. It belongs to no mount
/// namespace until someone attaches it with `move_mount`, and vanishes
/// with its last descriptor if nobody does.
pub(crate) fn new_fs(
    fstype: &str,
    options: &[FsOption<'_>],
    attrs: MountAttrFlags,
) -> io::Result<OwnedFd> {
    let ctx = rustix::mount::fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC)?;
    for option in options {
        match option {
            FsOption::Text(key, value) => rustix::mount::fsconfig_set_string(&ctx, *key, *value)?,
            FsOption::Fd(key, fd) => rustix::mount::fsconfig_set_fd(&ctx, *key, *fd)?,
        }
    }
    rustix::mount::fsconfig_create(&ctx)?;
    Ok(rustix::mount::fsmount(
        &ctx,
        FsMountFlags::FSMOUNT_CLOEXEC,
        attrs,
    )?)
}

/// Attaches the detached mount `mount` at `target` (`move_mount` with
/// `MOVE_MOUNT_F_EMPTY_PATH`).
pub(crate) fn move_mount(mount: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    Ok(rustix::mount::move_mount(
        mount,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?)
}

/// Sends `bytes` on the stream socket `sock` with `fds` attached
/// (SCM_RIGHTS), all in one message.
pub(crate) fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let iov = [io::IoSlice::new(bytes)];
    let sent = sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(fds)],
        MsgFlags::empty(),
        None,
    )?;
    if sent != bytes.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short send"));
    }
    Ok(())
}

/// Most descriptors [`recv_with_fds`] takes with one message (the kernel
/// closes any beyond it and flags the message truncated).
const MAX_RECEIVED_FDS: usize = 16;

/// Receives one message of at most `buf.len()` bytes from `sock` with the
/// descriptors attached to it, which the caller then owns. Returns the
/// byte count (0: the peer closed).
pub(crate) fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut space = nix::cmsg_space!([RawFd; MAX_RECEIVED_FDS]);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: SCM_RIGHTS just installed these descriptors in our
            // table; nothing else refers to them.
            fds.extend(received.into_iter().map(|fd| unsafe { adopt(fd) }));
        }
    }
    Ok((msg.bytes, fds))
}

/// Which standard stream [`redirect`] replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stdio {
    Out,
    Err,
}

/// Makes stdout or stderr a copy of `from` (`dup2`), without
/// close-on-exec: how a sandbox's stdout and stderr become its log pipes.
pub(crate) fn redirect(from: BorrowedFd<'_>, to: Stdio) -> io::Result<()> {
    match to {
        Stdio::Out => Ok(rustix::stdio::dup2_stdout(from)?),
        Stdio::Err => Ok(rustix::stdio::dup2_stderr(from)?),
    }
}

/// Ends the process at once (`_exit`): no atexit handlers and no stdio
/// flushing, the right exit for a forked copy of another program.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes an integer and never returns; it runs no code of
    // ours or of the forked program.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::process::{Command, Stdio};

    use super::*;

    fn pidfd_of(child: &std::process::Child) -> OwnedFd {
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        pidfd_open(pid).expect("pidfd_open")
    }

    /// A process that runs until killed, and a pidfd of it.
    fn sleeper() -> (std::process::Child, OwnedFd) {
        let child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .expect("sleep");
        let pidfd = pidfd_of(&child);
        (child, pidfd)
    }

    #[test]
    fn a_pidfd_names_its_process_while_it_runs() {
        let (mut sleeper, pidfd) = sleeper();
        assert_eq!(pidfd_pid(pidfd.as_fd()), Some(sleeper.id()));
        sleeper.kill().expect("kill");
        sleeper.wait().expect("reap");
        assert_eq!(pidfd_pid(pidfd.as_fd()), None);
    }

    #[test]
    fn a_pidfd_tells_a_running_process_from_one_that_ended_and_how() {
        let (mut sleeper, pidfd) = sleeper();
        assert_eq!(pidfd_end(pidfd.as_fd()).expect("end"), PidfdEnd::Running);
        sleeper.kill().expect("kill");
        sleeper.wait().expect("reap");
        let killed = pidfd_end(pidfd.as_fd()).expect("end");

        let mut exits = Command::new("sh")
            .args(["-c", "read _; exit 3"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("sh");
        let pidfd = pidfd_of(&exits);
        drop(exits.stdin.take());
        exits.wait().expect("reap");
        let exited = pidfd_end(pidfd.as_fd()).expect("end");
        if [killed, exited].contains(&PidfdEnd::Unknown) {
            // A kernel before 6.15 keeps no exit status: only the end shows.
            assert_eq!((killed, exited), (PidfdEnd::Unknown, PidfdEnd::Unknown));
        } else {
            assert_eq!(killed, PidfdEnd::Status(libc::SIGKILL));
            assert_eq!(exited, PidfdEnd::Status(3 << 8));
        }
    }

    #[test]
    fn waiting_on_a_pidfd_ends_when_its_process_does_and_not_before() {
        let (mut sleeper, pidfd) = sleeper();
        let short = std::time::Duration::from_millis(50);
        assert!(
            !pidfd_wait(pidfd.as_fd(), short).expect("wait"),
            "still running"
        );
        sleeper.kill().expect("kill");
        // Not reaped yet: a pidfd is readable once its process has ended.
        assert!(pidfd_wait(pidfd.as_fd(), std::time::Duration::from_secs(10)).expect("wait"));
        sleeper.wait().expect("reap");
    }
}
