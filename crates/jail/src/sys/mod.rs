//! The only place in `ol` with `unsafe` code: thin wrappers over the raw
//! syscalls the jail needs that no safe crate API covers, and the C ABI
//! zygotes call ([`ffi`]). Each wrapper maps its failure to an
//! `std::io::Error` that the caller names (see [`crate::JailError`]).
#![allow(unsafe_code)]

mod ffi;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::unistd::ForkResult;

fn last_error<T>() -> io::Result<T> {
    Err(io::Error::last_os_error())
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn c_str(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// A descriptor the kernel just returned, owned from now on.
fn owned(rc: libc::c_long) -> io::Result<OwnedFd> {
    if rc < 0 {
        return last_error();
    }
    let fd = RawFd::try_from(rc).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel returned this descriptor to us alone; nothing else
    // owns or closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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

/// `prctl` with integer arguments only.
fn prctl(option: libc::c_int, arg2: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: every option we pass takes integers, no memory.
    let rc = unsafe {
        libc::prctl(
            option,
            arg2,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc < 0 { last_error() } else { Ok(rc) }
}

/// Clears the ambient capability set.
pub(crate) fn clear_ambient_caps() -> io::Result<()> {
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )
    .map(drop)
}

/// Drops every capability not in `keep` (a bit per capability number)
/// from the bounding set.
pub(crate) fn drop_bounding_set(keep: u64) -> io::Result<()> {
    for cap in 0..64u32 {
        if keep & (1 << cap) != 0 {
            continue;
        }
        match prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap)) {
            Ok(_) => {}
            // EINVAL: past the last capability this kernel knows.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Installs a seccomp filter program (classic BPF, 8 bytes an
/// instruction, native endian) on the calling thread (and, since it is
/// inherited, on everything it starts). Needs no_new_privs or
/// CAP_SYS_ADMIN.
pub(crate) fn install_seccomp(program: &[u8]) -> io::Result<()> {
    if program.is_empty() || program.len() % 8 != 0 {
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

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `MOUNT_ATTR_*` bits (linux/mount.h).
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;
pub(crate) const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// A detached copy of the mount tree at `path` (`open_tree` with
/// `OPEN_TREE_CLONE | AT_RECURSIVE`) with `attrs` set on every mount of it.
pub(crate) fn open_tree_clone(path: &Path, attrs: u64) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let cpath = c_path(path)?;
    let flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint;
    // SAFETY: open_tree reads the NUL-terminated path, which lives across
    // the call, and returns a new descriptor or -1.
    let fd = owned(unsafe {
        libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, cpath.as_ptr(), flags)
    })?;
    let attr = MountAttr {
        attr_set: attrs,
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
pub(crate) fn new_fs(fstype: &str, options: &[FsOption<'_>], attrs: u64) -> io::Result<OwnedFd> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_SET_FD: libc::c_uint = 5;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    let name = c_str(fstype)?;
    // SAFETY: fsopen reads the NUL-terminated name, which lives across the
    // call, and returns a new descriptor or -1.
    let ctx = owned(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) })?;
    for option in options {
        let rc = match option {
            FsOption::Text(key, value) => {
                let (key, value) = (c_str(key)?, c_str(value)?);
                // SAFETY: fsconfig reads the two NUL-terminated strings,
                // which live across the call.
                unsafe {
                    libc::syscall(
                        libc::SYS_fsconfig,
                        ctx.as_raw_fd(),
                        FSCONFIG_SET_STRING,
                        key.as_ptr(),
                        value.as_ptr(),
                        0,
                    )
                }
            }
            FsOption::Fd(key, fd) => {
                let key = c_str(key)?;
                // SAFETY: fsconfig reads the NUL-terminated key, which lives
                // across the call; the descriptor is borrowed for it.
                unsafe {
                    libc::syscall(
                        libc::SYS_fsconfig,
                        ctx.as_raw_fd(),
                        FSCONFIG_SET_FD,
                        key.as_ptr(),
                        std::ptr::null::<libc::c_void>(),
                        fd.as_raw_fd(),
                    )
                }
            }
        };
        if rc < 0 {
            return last_error();
        }
    }
    // SAFETY: integers and a null key/value, as FSCONFIG_CMD_CREATE wants.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            ctx.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if rc < 0 {
        return last_error();
    }
    // SAFETY: integers only; returns a new descriptor or -1.
    owned(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            ctx.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            attrs as libc::c_uint,
        )
    })
}

/// Attaches the detached mount `mount` at `target` (`move_mount` with
/// `MOVE_MOUNT_F_EMPTY_PATH`).
pub(crate) fn move_mount(mount: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    let target = c_path(target)?;
    // SAFETY: move_mount reads the two NUL-terminated paths, which live
    // across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 { last_error() } else { Ok(()) }
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

/// Makes descriptor number `to` a copy of `from` (`dup2`), without
/// close-on-exec: how a sandbox's stdout and stderr become its log pipes.
pub(crate) fn redirect(from: BorrowedFd<'_>, to: RawFd) -> io::Result<()> {
    if from.as_raw_fd() == to {
        return Ok(());
    }
    // SAFETY: dup2 takes integers; `to` is a stdio number the caller owns
    // (its old file is closed and replaced, as intended).
    if unsafe { libc::dup2(from.as_raw_fd(), to) } < 0 {
        return last_error();
    }
    Ok(())
}

/// Ends the process at once (`_exit`): no atexit handlers and no stdio
/// flushing, the right exit for a forked copy of another program.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes an integer and never returns; it runs no code of
    // ours or of the forked program.
    unsafe { libc::_exit(code) }
}
