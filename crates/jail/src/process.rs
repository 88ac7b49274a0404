//! Processes of a sandbox: forking its pid 1, reaping, and passing an exit
//! status on unchanged.

use std::os::fd::OwnedFd;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, getpid};

use crate::ns::Namespaces;
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

/// Forks the calling process into new namespaces (`ns`, the cgroup
/// namespace excepted: see [`crate::ns::unshare_cgroup`]): the child is pid
/// 1 of a new pid namespace. Only for single-threaded callers (zygotes).
pub fn fork_into(ns: Namespaces, what: &str) -> Result<Fork> {
    match step(format!("fork {what}"), sys::fork_into(ns.fork_flags()))? {
        ForkResult::Parent { child } => Ok(Fork::Parent(child)),
        ForkResult::Child => Ok(Fork::Child),
    }
}

/// Whether the calling process has a single thread (`false` when it
/// cannot tell: no proc).
pub fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/stat").is_ok_and(|stat| threads_in_stat(&stat) == Some(1))
}

/// The thread count of a `/proc/<pid>/stat` line (its 20th field; the
/// second, the command, is in parentheses and may hold anything).
fn threads_in_stat(stat: &str) -> Option<u64> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    // Fields from the 3rd on; the thread count is the 20th.
    after_comm.split_whitespace().nth(17)?.parse().ok()
}

/// A pidfd of pid 1 of the calling process's pid namespace, to hand to
/// the worker, which reads how the sandbox ended through it
/// ([`crate::outside::pid1_end`]).
pub fn pid1_handle() -> Result<OwnedFd> {
    step("open a pidfd of the sandbox's pid 1", sys::pidfd_open(1))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_is_read_past_any_command_name() {
        let stat = "42 (a) b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 7 0 5 100 50";
        assert_eq!(threads_in_stat(stat), Some(7));
        assert_eq!(threads_in_stat("42 (x) S 1"), None);
        assert_eq!(threads_in_stat("no parenthesis"), None);
        // This test's own process: the harness runs tests on threads.
        let own = std::fs::read_to_string("/proc/self/stat").expect("stat");
        assert!(threads_in_stat(&own).is_some_and(|n| n >= 1));
    }
}
