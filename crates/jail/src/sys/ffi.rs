//! The C ABI of `libol_jail.so`, which a Python zygote loads once through
//! `_ctypes` (runtimes/python/ol_zygote.py) to run [`crate::child`] in its
//! forked children. Every function returns 0 on success (in the process
//! that goes on) and -1 on failure, with a one-line reason written into
//! `err` (`errlen` bytes, NUL-terminated); [`ol_jail_fork_blank`] and
//! [`ol_jail_fork_zygote`], which fork, also return the child's pid to the
//! caller, like `fork`.
//!
//! Descriptors passed by number are taken over (closed by the jail when no
//! longer needed; the caller must not use them again), except the socket
//! `conn`, which the caller keeps owning.

use std::ffi::c_char;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::os::raw::c_int;
use std::panic::AssertUnwindSafe;

use crate::child::{self, AssignFds, Entry, Forked};
use crate::ns::Namespaces;
use crate::process::{self, Fork};
use crate::{Result, refuse};

/// Writes `msg` into the caller's buffer, truncated to fit and
/// NUL-terminated.
fn report(err: *mut c_char, errlen: usize, msg: &str) {
    if err.is_null() || errlen == 0 {
        return;
    }
    let n = msg.len().min(errlen - 1);
    // SAFETY: the caller passes a writable buffer of `errlen` bytes and we
    // write at most `errlen` (n bytes and the NUL).
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), err.cast::<u8>(), n);
        *err.add(n) = 0;
    }
}

fn run(err: *mut c_char, errlen: usize, f: impl FnOnce() -> Result<()>) -> c_int {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            report(err, errlen, &e.to_string());
            -1
        }
        Err(_) => {
            report(err, errlen, "the jail panicked");
            -1
        }
    }
}

/// Takes over descriptor `fd`.
///
/// # Safety
/// `fd` must be open and no longer used by the caller.
unsafe fn take(fd: c_int, what: &str) -> Result<OwnedFd> {
    if fd < 0 {
        return refuse(format!("take {what}"), "not a descriptor");
    }
    // SAFETY: upheld by the caller.
    Ok(unsafe { super::adopt(fd) })
}

/// Takes over `n` descriptors at `fds`.
///
/// # Safety
/// `fds` must point at `n` descriptors as [`take`] wants them.
unsafe fn take_all(fds: *const c_int, n: usize, what: &str) -> Result<Vec<OwnedFd>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if fds.is_null() {
        return refuse(format!("take {what}"), "no descriptors");
    }
    // SAFETY: the caller passes `n` readable ints at `fds`.
    let raw: &[c_int] = unsafe { std::slice::from_raw_parts(fds, n) };
    // SAFETY: each is a descriptor the caller hands over.
    raw.iter().map(|&fd| unsafe { take(fd, what) }).collect()
}

/// Borrows the caller's socket `fd` for the call.
///
/// # Safety
/// `fd` must stay open for the whole call.
unsafe fn borrow<'a>(fd: RawFd) -> Result<BorrowedFd<'a>> {
    if fd < 0 {
        return refuse("use the sandbox's socket", "not a descriptor");
    }
    // SAFETY: upheld by the caller.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// What every new sandbox is made with ([`Entry`]).
///
/// # Safety
/// `conn` stays open during the call; `tmp` and the `ncgroups` descriptors
/// at `cgroups` are handed over.
unsafe fn entry<'a>(
    conn: c_int,
    tmp: c_int,
    cgroups: *const c_int,
    ncgroups: usize,
) -> Result<Entry<'a>> {
    // SAFETY: upheld by the caller.
    unsafe {
        Ok(Entry {
            conn: borrow(conn)?,
            tmp: take(tmp, "the /tmp mount")?,
            cgroups: take_all(cgroups, ncgroups, "the cgroup files")?,
        })
    }
}

/// Forks the calling zygote for a new sandbox, into its namespaces when
/// the zygote has a single thread ([`Forked::now`]), and runs `enter` in
/// the child: returns the child's pid in the caller, what `enter` returned
/// to the sandbox (0; `enter` may fork on and return only in a
/// descendant), and -1 with `err` when the fork itself failed. A failure
/// in the child goes to its stderr and ends it with [`process::FAILED`].
fn fork_sandbox(
    what: &str,
    err: *mut c_char,
    errlen: usize,
    enter: impl FnOnce(Forked) -> Result<()>,
) -> c_int {
    let forked = Forked::now();
    let fork = || match forked {
        Forked::IntoNamespaces => process::fork_into(Namespaces::ALL, what),
        Forked::Plain => process::fork(what),
    };
    match std::panic::catch_unwind(fork) {
        Ok(Ok(Fork::Parent(child))) => child.as_raw(),
        Ok(Err(e)) => {
            report(err, errlen, &e.to_string());
            -1
        }
        Err(_) => {
            report(err, errlen, "the jail panicked");
            -1
        }
        Ok(Ok(Fork::Child)) => match std::panic::catch_unwind(AssertUnwindSafe(|| enter(forked))) {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => {
                eprintln!("ol jail: {e}");
                process::exit_now(process::FAILED)
            }
            Err(_) => {
                eprintln!("ol jail: panicked making {what}");
                process::exit_now(process::FAILED)
            }
        },
    }
}

/// Forks a blank sandbox from the calling zygote (straight into its new
/// namespaces unless the zygote has threads, [`Forked`]): returns the
/// forked child's pid in the caller, 0 in the blank (pid 1 of its pid
/// namespace, which goes on as the blank, [`child::blank`]), and -1 with
/// `err` when the fork itself failed. Nothing but the jail's
/// code runs in the child until it returns, so a Python caller's
/// interpreter state is only touched where `os.fork` would touch it: hold
/// the GIL throughout (a `ctypes.PyDLL`-style function), call
/// `PyOS_BeforeFork` before and `PyOS_AfterFork_Child` or
/// `PyOS_AfterFork_Parent` after, as `os.fork` does.
///
/// # Safety
/// The caller is single-threaded; `conn` stays open during the call; `tmp`
/// and the `ncgroups` descriptors at `cgroups` are handed over in the child
/// (the caller still owns, and closes, its own copies); `err` is a
/// writable buffer of `errlen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ol_jail_fork_blank(
    conn: c_int,
    tmp: c_int,
    cgroups: *const c_int,
    ncgroups: usize,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    fork_sandbox("a blank sandbox", err, errlen, |forked| {
        // SAFETY: the caller's promises, above.
        let entry = unsafe { entry(conn, tmp, cgroups, ncgroups)? };
        child::blank(entry, forked)
    })
}

/// Turns a blank into its lambda's sandbox ([`child::assign`]), under the
/// seccomp filter of `filter_len` bytes at `filter` (none when 0).
///
/// # Safety
/// `conn` stays open during the call; `code`, `host`, `proc`, `stdout`
/// and `stderr` are handed over; `filter` points at `filter_len` readable
/// bytes; `err` is a writable buffer of `errlen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ol_jail_assign(
    conn: c_int,
    code: c_int,
    host: c_int,
    proc: c_int,
    stdout: c_int,
    stderr: c_int,
    filter: *const u8,
    filter_len: usize,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    run(err, errlen, || {
        // SAFETY: the caller's promises, above.
        let (fds, filter) = unsafe {
            let fds = AssignFds {
                conn: borrow(conn)?,
                code: take(code, "the code mount")?,
                host: take(host, "the /host mount")?,
                proc: take(proc, "the proc mount")?,
                stdout: take(stdout, "stdout")?,
                stderr: take(stderr, "stderr")?,
            };
            let filter: &[u8] = if filter.is_null() || filter_len == 0 {
                &[]
            } else {
                std::slice::from_raw_parts(filter, filter_len)
            };
            (fds, filter)
        };
        child::assign(fds, filter)
    })
}

/// Forks a child zygote from the calling zygote, in namespaces of its own
/// ([`child::zygote`]), like [`ol_jail_fork_blank`]: returns its pid 1's
/// pid in the caller, 0 in the new zygote (that pid 1's child, which goes
/// on as the zygote), -1 with `err` when the fork failed.
///
/// # Safety
/// As [`ol_jail_fork_blank`]; `stdout` and `stderr` are handed over too.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ol_jail_fork_zygote(
    conn: c_int,
    stdout: c_int,
    stderr: c_int,
    tmp: c_int,
    cgroups: *const c_int,
    ncgroups: usize,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    fork_sandbox("a child zygote", err, errlen, |forked| {
        // SAFETY: the caller's promises, above.
        let (entry, stdout, stderr) = unsafe {
            (
                entry(conn, tmp, cgroups, ncgroups)?,
                take(stdout, "stdout")?,
                take(stderr, "stderr")?,
            )
        };
        child::zygote(entry, forked, stdout, stderr)
    })
}

/// Checks that the calling zygote is confined ([`child::check_zygote`]);
/// `seccomp` non-zero when a seccomp filter must be installed.
///
/// # Safety
/// `err` is a writable buffer of `errlen` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ol_jail_check_zygote(
    seccomp: c_int,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    run(err, errlen, || child::check_zygote(seccomp != 0))
}
