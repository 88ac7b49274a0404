//! The only place in `ol` with `unsafe` code: thin wrappers over the raw
//! syscalls the sandbox layer needs that no safe crate API covers. Each
//! wrapper maps its failure to an `std::io::Error` the caller names.
#![allow(unsafe_code)]

use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the child started by `cmd` inherit `fd` as descriptor `target`
/// (without close-on-exec), whatever number `fd` has in the parent.
pub(crate) fn inherit_fd_as(cmd: &mut Command, fd: RawFd, target: RawFd) {
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe syscalls (dup2, fcntl) on descriptors it owns; it
    // allocates nothing and touches no locks.
    unsafe {
        cmd.pre_exec(move || {
            if fd == target {
                let flags = libc::fcntl(target, libc::F_GETFD);
                if flags < 0 || libc::fcntl(target, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Forks the calling process. Only for the sandbox init, which is single
/// threaded when it calls this.
pub(crate) fn fork() -> std::io::Result<nix::unistd::ForkResult> {
    // SAFETY: the sandbox init never starts threads, so the child gets a
    // consistent copy of the only thread's state.
    unsafe { nix::unistd::fork() }.map_err(std::io::Error::from)
}

/// Drops every capability from the bounding set and clears the ambient set,
/// so nothing exec'd later can regain privileges.
pub(crate) fn drop_capability_sets() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    for cap in 0..=63 {
        // SAFETY: as above; EINVAL marks the end of the kernel's caps.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Brings the loopback interface of the current network namespace up.
pub(crate) fn loopback_up() -> std::io::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into `req`, which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the union member ifru_flags is what SIOCGIFFLAGS filled in.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads `req`, which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Restores the default action of `sig` (before re-raising it).
pub(crate) fn default_signal(sig: nix::sys::signal::Signal) -> std::io::Result<()> {
    use nix::sys::signal::{SigHandler, signal};
    // SAFETY: installing SIG_DFL involves no handler code at all.
    unsafe { signal(sig, SigHandler::SigDfl) }
        .map(drop)
        .map_err(std::io::Error::from)
}

/// A detached copy of the mount tree at `path` (`open_tree` with
/// `OPEN_TREE_CLONE | AT_RECURSIVE`), read-only, nosuid and nodev unless
/// `writable` (then nosuid and nodev only). It belongs to no mount
/// namespace: a process in another one (a zygote's child) can attach it
/// with `move_mount`, and it vanishes when the last descriptor closes if
/// nobody did, so it can never leak.
pub(crate) fn detached_mount(
    path: &std::path::Path,
    writable: bool,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;

    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const MOUNT_ATTR_NOSUID: u64 = 0x2;
    const MOUNT_ATTR_NODEV: u64 = 0x4;

    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint;
    // SAFETY: open_tree reads the NUL-terminated path, which lives across
    // the call, and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, cpath.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut attr = MountAttr {
        attr_set: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    if !writable {
        attr.attr_set |= MOUNT_ATTR_RDONLY;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: mount_setattr reads `attr` (size passed), which outlives the
    // call; the empty path with AT_EMPTY_PATH names the descriptor itself.
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
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}
