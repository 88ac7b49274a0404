//! Namespaces, sessions, the host name and loopback.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use nix::unistd::Pid;

use crate::{Result, step, sys};

/// Which new namespaces a sandbox gets. Mount, uts, ipc, pid and cgroup
/// namespaces always; a network namespace unless it shares the host's (the
/// package installer fetching wheels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespaces {
    /// A network namespace of its own (only loopback).
    pub network: bool,
}

impl Namespaces {
    /// Every namespace, the network included.
    pub const ALL: Self = Self { network: true };

    fn flags(self) -> CloneFlags {
        let mut flags = CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWCGROUP;
        if self.network {
            flags |= CloneFlags::CLONE_NEWNET;
        }
        flags
    }

    /// The namespaces a fork into new namespaces
    /// ([`crate::process::fork_into`]) makes: all but the cgroup one, which
    /// the child takes once in its cgroups ([`unshare_cgroup`]).
    pub(crate) fn fork_flags(self) -> CloneFlags {
        self.flags() - CloneFlags::CLONE_NEWCGROUP
    }
}

/// Gives the calling process a new cgroup namespace, rooted at the cgroups
/// it is in.
pub fn unshare_cgroup() -> Result<()> {
    step(
        "unshare the cgroup namespace",
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP),
    )
}

/// Moves the calling process into new namespaces (the pid namespace is its
/// children's: the next fork makes its pid 1). Done after joining the
/// cgroups, so the new cgroup namespace's root is the sandbox's cgroup.
pub fn unshare(ns: Namespaces) -> Result<()> {
    step("unshare namespaces", nix::sched::unshare(ns.flags()))
}

/// Makes the calling process the leader of a new session with no
/// controlling terminal: nothing in a sandbox can reach the terminal of
/// whoever started the worker.
pub fn new_session() -> Result<()> {
    step("start a new session", nix::unistd::setsid()).map(drop)
}

/// Sets the host name of the sandbox's uts namespace.
pub fn set_hostname(name: &str) -> Result<()> {
    step("set hostname", nix::unistd::sethostname(name))
}

/// A socket of the calling process's network namespace, to hand to the
/// worker, which brings that namespace's loopback up with it
/// ([`crate::outside::loopback_up_via`]).
pub fn netns_handle() -> Result<OwnedFd> {
    step(
        "open a socket of the sandbox's network",
        socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        ),
    )
}

/// Brings loopback up in the calling process's network namespace (needs
/// CAP_NET_ADMIN over it: the sandbox init, which is still root).
pub fn loopback_up() -> Result<()> {
    let sock = netns_handle()?;
    step("bring loopback up", sys::loopback_up_via(sock.as_fd()))
}

/// The calling process's pid namespace, to hand to the worker, which
/// mounts a proc of it for the sandbox ([`crate::outside::proc_of`]).
pub fn pidns_handle() -> Result<OwnedFd> {
    let path = Path::new("/proc/self/ns/pid");
    step(
        "open the sandbox's pid namespace",
        std::fs::File::open(path).map(OwnedFd::from),
    )
}

/// Moves the calling process into a new user namespace, where it holds
/// every capability until it changes identity; its id maps are written
/// from outside ([`write_id_maps`]).
pub fn enter_user_namespace() -> Result<()> {
    step(
        "enter a user namespace",
        nix::sched::unshare(CloneFlags::CLONE_NEWUSER),
    )
}

/// Writes the uid and gid maps of process `pid`'s user namespace (the
/// writer needs CAP_SETUID and CAP_SETGID where `pid` came from): root
/// inside is [`crate::ZYGOTE_HOST_ID`] on the host, and
/// [`crate::SANDBOX_ID`] is itself; no other id exists inside.
pub fn write_id_maps(pid: Pid) -> Result<()> {
    let map = format!(
        "0 {zygote} 1\n{sandbox} {sandbox} 1\n",
        zygote = crate::ZYGOTE_HOST_ID,
        sandbox = crate::SANDBOX_ID
    );
    for file in ["uid_map", "gid_map"] {
        let path = format!("/proc/{pid}/{file}");
        step(format!("write {path}"), std::fs::write(&path, &map))?;
    }
    Ok(())
}
