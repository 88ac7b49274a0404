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
