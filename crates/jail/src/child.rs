//! Zygote children: what a Python zygote's forked child runs to enter its
//! sandbox, one native call per stage (the C ABI is in `sys`; the caller
//! is runtimes/python/ol_zygote.py). Together with the sandbox init these
//! are the only ways into a sandbox, and they share every step.
//!
//! A zygote runs as root of a user namespace whose root is an unprivileged
//! host uid ([`crate::ZYGOTE_HOST_ID`]), with [`Caps::ZYGOTE`] there,
//! no_new_privs and the zygote seccomp filter. Its children:
//! - [`blank`]: a sandbox made ahead, waiting for its lambda. The zygote
//!   forks it straight into new namespaces (one `clone`: it is pid 1 of its
//!   pid namespace, and the zygote's child). It joins its cgroups, takes a
//!   cgroup namespace rooted there, starts a session, attaches its private
//!   `/tmp`, sends the worker its pid namespace, a socket of its network
//!   namespace (the worker mounts its proc and brings its loopback up from
//!   outside) and a pidfd of itself (through which the worker learns how
//!   it ended), empties its bounding set and keeps only its runtime socket
//!   and stdio.
//! - [`assign`]: a blank becomes its lambda's sandbox: it attaches the
//!   code, `/host` and proc mounts, takes the lambda's log pipes as stdout
//!   and stderr, keeps only its socket, becomes the sandbox user with no
//!   capability, sets no_new_privs and installs the lambda seccomp filter.
//! - [`zygote`]: a child zygote of the import cache, forked into namespaces
//!   of its own like a blank (so the packages it imports see none of its
//!   siblings); that pid 1 only reaps (so sandboxes forked from the child
//!   zygote outlive it) and forks the zygote, with its privileges and
//!   filter unchanged.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use crate::creds::{self, Caps, Identity};
use crate::mounts::attach;
use crate::ns::{self, Namespaces};
use crate::process::{self, Fork};
use crate::sys::Stdio;
use crate::{Result, fds, refuse, step, sys};

/// Meta of the frame a new sandbox sends the worker, with its pid
/// namespace, a socket of its network namespace and a pidfd of its pid 1
/// attached.
pub const NS_META: &str = r#"{"type":"ns"}"#;
/// Meta of the worker's answer to a new child zygote, with the proc mount
/// of its pid namespace attached.
pub const PROC_META: &str = r#"{"type":"proc"}"#;
/// Host name inside every sandbox.
pub const HOSTNAME: &str = "ol-sandbox";

/// A frame of docs/protocol.md with `meta` and no body.
pub fn frame(meta: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + meta.len());
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(meta.as_bytes());
    out
}

/// What every new sandbox a zygote forks (blank or child zygote) is made
/// with.
#[derive(Debug)]
pub struct Entry<'a> {
    /// Its socket: a blank's runtime socket, a child zygote's control
    /// socket (the caller keeps owning it).
    pub conn: BorrowedFd<'a>,
    /// Its private `/tmp` (a detached scratch file system).
    pub tmp: OwnedFd,
    /// Its cgroups' join files (v1 `tasks`, v2 `cgroup.procs`).
    pub cgroups: Vec<OwnedFd>,
}

/// How a zygote forked a new sandbox's first process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// Straight into its new namespaces ([`process::fork_into`]): it is
    /// pid 1 of its pid namespace. For a single-threaded zygote.
    IntoNamespaces,
    /// With libc's `fork`, in the zygote's namespaces. A zygote with
    /// threads (a package may start some at import: OpenBLAS does) forks
    /// this way, so the fork handlers that make a threaded process's child
    /// sane run; the child then unshares and forks pid 1, and stays as
    /// the middle process that passes pid 1's exit on.
    Plain,
}

impl Forked {
    /// How the calling zygote forks now: into the namespaces when it has
    /// a single thread (or cannot tell: then with libc's fork).
    pub fn now() -> Self {
        if process::single_threaded() {
            Self::IntoNamespaces
        } else {
            Self::Plain
        }
    }
}

/// Turns the calling process, just forked by `ol_jail_fork_blank` as
/// `forked` says, into a blank sandbox. Returns only in the blank (pid 1
/// of its pid namespace).
pub fn blank(f: Entry<'_>, forked: Forked) -> Result<()> {
    let Entry { conn, tmp, cgroups } = f;
    enter(cgroups, forked)?;
    new_sandbox(conn, tmp)?;
    creds::empty_bounding_set()?;
    fds::close_all_except(&[0, 1, 2, conn.as_raw_fd()])
}

/// Joins the cgroups and, after that (so that its root is there), a new
/// cgroup namespace. The other namespaces came with the fork, or (a plain
/// fork) are unshared now, and pid 1 forked with the calling process left
/// as the middle one. Returns only in the sandbox's pid 1.
fn enter(cgroups: Vec<OwnedFd>, forked: Forked) -> Result<()> {
    fds::join_cgroups(cgroups)?;
    if forked == Forked::IntoNamespaces {
        return ns::unshare_cgroup();
    }
    ns::unshare(Namespaces::ALL)?;
    match process::fork("the sandbox's pid 1")? {
        Fork::Parent(pid1) => {
            let _ = fds::close_all_except(&[]);
            let _ = process::pass_on_exit(pid1);
            process::exit_now(process::FAILED)
        }
        Fork::Child => Ok(()),
    }
}

/// In a new sandbox's first process (or, in a child zygote, its second):
/// a session of its own, the host name, its `/tmp`, and its namespaces and
/// a pidfd of its pid 1 handed to the worker over `conn`.
fn new_sandbox(conn: BorrowedFd<'_>, tmp: OwnedFd) -> Result<()> {
    ns::new_session()?;
    ns::set_hostname(HOSTNAME)?;
    attach(tmp, "/tmp")?;
    let pidns = ns::pidns_handle()?;
    let netns = ns::netns_handle()?;
    let pid1 = process::pid1_handle()?;
    send(
        conn,
        NS_META,
        &[pidns.as_fd(), netns.as_fd(), pid1.as_fd()],
        "send the sandbox's namespaces to the worker",
    )
}

/// Sends one frame with `meta` and `fds` attached on `conn`.
pub(crate) fn send(
    conn: BorrowedFd<'_>,
    meta: &str,
    fds: &[BorrowedFd<'_>],
    what: &str,
) -> Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    step(what, sys::send_with_fds(conn, &frame(meta), &raw))
}

/// Reads from `conn` one frame that must be exactly `meta` (no body) with
/// exactly `nfds` descriptors, and returns them.
pub(crate) fn receive(
    conn: BorrowedFd<'_>,
    meta: &str,
    nfds: usize,
    what: &str,
) -> Result<Vec<OwnedFd>> {
    let want = frame(meta);
    let mut buf = vec![0u8; want.len()];
    let (mut got, fds) = step(what, sys::recv_with_fds(conn, &mut buf))?;
    // A stream socket may split the frame; descriptors come with the first
    // byte.
    if got > 0 && got < want.len() {
        let mut sock = std::fs::File::from(step(what, conn.try_clone_to_owned())?);
        while got < want.len() {
            let n = step(what, sock.read(&mut buf[got..]))?;
            if n == 0 {
                break;
            }
            got += n;
        }
    }
    if got == 0 {
        return refuse(what, "the other side closed the connection");
    }
    if buf != want || fds.len() != nfds {
        return refuse(what, "the other side sent something else");
    }
    Ok(fds)
}

/// What a blank receives with its lambda.
#[derive(Debug)]
pub struct AssignFds<'a> {
    /// Its runtime socket (the caller keeps owning it).
    pub conn: BorrowedFd<'a>,
    /// The lambda's code, read-only.
    pub code: OwnedFd,
    /// Its `/host` scratch file system.
    pub host: OwnedFd,
    /// The proc of its pid namespace.
    pub proc: OwnedFd,
    /// Write end of its stdout log pipe.
    pub stdout: OwnedFd,
    /// Write end of its stderr log pipe.
    pub stderr: OwnedFd,
}

/// Turns a blank into the sandbox of its lambda, for good: after this it
/// holds no capability, only its socket and stdio, and runs under
/// `filter` (the lambda seccomp filter; empty: none).
pub fn assign(f: AssignFds<'_>, filter: &[u8]) -> Result<()> {
    let AssignFds {
        conn,
        code,
        host,
        proc,
        stdout,
        stderr,
    } = f;
    attach(code, "/handler")?;
    attach(host, "/host")?;
    attach(proc, "/proc")?;
    redirect(stdout, Stdio::Out, "stdout")?;
    redirect(stderr, Stdio::Err, "stderr")?;
    fds::close_all_except(&[0, 1, 2, conn.as_raw_fd()])?;
    // No parent-death signal: its parent is the zygote (or a middle
    // process), and a sandbox outlives the zygote it came from.
    creds::become_user(Identity(crate::SANDBOX_ID), Caps::NONE)?;
    creds::no_new_privs()?;
    if !filter.is_empty() {
        creds::seccomp(filter)?;
    }
    Ok(())
}

fn redirect(from: OwnedFd, to: Stdio, name: &str) -> Result<()> {
    step(format!("redirect {name}"), sys::redirect(from.as_fd(), to))
}

/// Turns the calling process, just forked by `ol_jail_fork_zygote` as
/// `forked` says, into a child zygote logging to `stdout` and `stderr`:
/// once pid 1 of its namespaces, it forks the zygote and stays as the pid
/// 1 that only reaps. Returns only in the new zygote.
pub fn zygote(f: Entry<'_>, forked: Forked, stdout: OwnedFd, stderr: OwnedFd) -> Result<()> {
    let Entry { conn, tmp, cgroups } = f;
    enter(cgroups, forked)?;
    match process::fork("the zygote")? {
        Fork::Parent(zygote) => {
            drop((stdout, stderr, tmp));
            let _ = fds::close_all_except(&[]);
            let _ = process::reap_until(zygote, true);
            process::exit_now(crate::process::FAILED)
        }
        Fork::Child => {}
    }
    redirect(stdout, Stdio::Out, "stdout")?;
    redirect(stderr, Stdio::Err, "stderr")?;
    new_sandbox(conn, tmp)?;
    attach(receive_proc(conn)?, "/proc")?;
    fds::close_all_except(&[0, 1, 2, conn.as_raw_fd()])
}

/// Reads the worker's proc frame from `conn` and returns the mount.
fn receive_proc(conn: BorrowedFd<'_>) -> Result<OwnedFd> {
    let what = "receive the sandbox's proc";
    match receive(conn, PROC_META, 1, what)?.pop() {
        Some(proc) => Ok(proc),
        None => refuse(what, "no mount came"),
    }
}

/// Checks that the calling zygote is confined as a zygote must be before
/// it imports any package: in a user namespace whose root is not the
/// host's, no_new_privs set, capabilities within [`Caps::ZYGOTE`], and
/// (when `seccomp`) a seccomp filter installed; then makes it
/// non-dumpable.
pub fn check_zygote(seccomp: bool) -> Result<()> {
    let status = step(
        "read /proc/self/status",
        std::fs::read_to_string("/proc/self/status"),
    )?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or("")
    };
    if field("NoNewPrivs") != "1" {
        return refuse("check the zygote", "no_new_privs is not set");
    }
    if seccomp && field("Seccomp") != "2" {
        return refuse("check the zygote", "no seccomp filter is installed");
    }
    for set in ["CapPrm", "CapEff", "CapBnd", "CapAmb", "CapInh"] {
        let caps = u64::from_str_radix(field(set), 16).unwrap_or(u64::MAX);
        if caps & !Caps::ZYGOTE.0 != 0 {
            return refuse(
                "check the zygote",
                "it holds capabilities beyond a zygote's",
            );
        }
    }
    let uid_map = step(
        "read /proc/self/uid_map",
        std::fs::read_to_string("/proc/self/uid_map"),
    )?;
    if maps_host_root(&uid_map) {
        return refuse(
            "check the zygote",
            "it is not in a user namespace of its own (host root is mapped)",
        );
    }
    creds::not_dumpable()
}

/// Whether a `uid_map` text maps any id to host uid 0.
fn maps_host_root(uid_map: &str) -> bool {
    uid_map.lines().any(|line| {
        let n: Vec<u64> = line
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        matches!(n[..], [_, outside, count] if outside == 0 && count > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_protocol_header() {
        let f = frame(NS_META);
        assert_eq!(&f[..4], &(NS_META.len() as u32).to_be_bytes());
        assert_eq!(&f[4..8], &[0, 0, 0, 0]);
        assert_eq!(&f[8..], NS_META.as_bytes());
    }

    #[test]
    fn host_root_in_a_uid_map_is_noticed() {
        assert!(maps_host_root("         0          0 4294967295\n"));
        assert!(!maps_host_root("0 65533 1\n65534 65534 1\n"));
        assert!(maps_host_root("0 65533 1\n1 0 1\n"));
        assert!(!maps_host_root(""));
    }
}
