//! Processes of a sandbox: forking its pid 1, reaping, and passing an exit
//! status on unchanged.

use std::io::Write;
use std::os::fd::OwnedFd;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, getpid};

use crate::{Result, step, sys};

/// Exit status of a sandbox process that failed before its program ran.
pub const FAILED: i32 = 125;

/// Which side of a fork the caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fork {
    /// The parent, with the child's pid.
    Parent(Pid),
    /// The child.
    Child,
}

/// Forks (only for single-threaded callers: the sandbox init and zygote
/// children).
pub fn fork(what: &str) -> Result<Fork> {
    match step(format!("fork {what}"), sys::fork())? {
        ForkResult::Parent { child } => Ok(Fork::Parent(child)),
        ForkResult::Child => Ok(Fork::Child),
    }
}

/// Ends the process at once with `code` (no atexit handlers, no stdio
/// flushing: the right exit for a forked copy of another program).
pub fn exit_now(code: i32) -> ! {
    sys::exit_now(code)
}

/// Ends the process the way `sig` would, so its parent sees the same death.
pub fn die_by(sig: Signal) -> ! {
    let _ = sys::default_signal(sig);
    let _ = kill(getpid(), sig);
    exit_now(128 + sig as i32)
}

/// A sandbox's pid 1: reaps every process until `main` exits (with
/// `outlive`: until no child at all is left, so sandboxes forked from a
/// zygote outlive it), then exits the way `main` did, which ends the pid
/// namespace and kills whatever is left.
pub fn reap_until(main: Pid, outlive: bool) -> Result<std::convert::Infallible> {
    let mut main_exit = None;
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == main => {
                main_exit = Some(Ok(code));
                if !outlive {
                    exit_now(code);
                }
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == main => {
                main_exit = Some(Err(sig));
                if !outlive {
                    die_by(sig);
                }
            }
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(nix::Error::ECHILD) if main_exit.is_some() => match main_exit {
                Some(Ok(code)) => exit_now(code),
                Some(Err(sig)) => die_by(sig),
                None => {}
            },
            Err(e) => return step("wait for the sandbox's processes", Err(e)),
        }
    }
}

/// Waits for `child` and exits the same way, so our parent sees the
/// child's own exit status or signal.
pub fn pass_on_exit(child: Pid) -> Result<std::convert::Infallible> {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => exit_now(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => die_by(sig),
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return step("wait for pid 1", Err(e)),
        }
    }
}

/// Waits for `child` and writes its raw wait status (decimal, newline) to
/// `exit`, then exits: the middle process between a zygote and a
/// sandbox's pid 1, through which the worker learns how the sandbox ended.
pub fn report_exit(child: Pid, exit: OwnedFd) -> ! {
    let mut status: libc::c_int = -1;
    loop {
        match nix::sys::wait::waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => {
                status = (code & 0xff) << 8;
                break;
            }
            Ok(WaitStatus::Signaled(_, sig, core)) => {
                status = sig as i32 | if core { 0x80 } else { 0 };
                break;
            }
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => break,
        }
    }
    let _ = std::fs::File::from(exit).write_all(format!("{status}\n").as_bytes());
    exit_now(0)
}
