//! Who a sandboxed process is and what it may do: its uid and gid, its
//! capabilities, no_new_privs, and its seccomp filter.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid};

use crate::{Result, refuse, step, sys};

/// A set of capabilities, one bit per capability number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps(pub u64);

impl Caps {
    /// No capability at all.
    pub const NONE: Self = Self(0);
    /// What a zygote keeps, in its own user namespace only (it holds none
    /// on the host): enough to make its children's namespaces and attach
    /// the mounts the worker prepared (CAP_SYS_ADMIN), to turn them into
    /// the sandbox user (CAP_SETUID, CAP_SETGID) and to empty their
    /// bounding set (CAP_SETPCAP). Not CAP_NET_ADMIN (the worker brings
    /// each sandbox's loopback up), not CAP_SYS_PTRACE, CAP_DAC_OVERRIDE or
    /// anything else.
    pub const ZYGOTE: Self =
        Self(1 << CAP_SYS_ADMIN | 1 << CAP_SETUID | 1 << CAP_SETGID | 1 << CAP_SETPCAP);
}

// Capability numbers (linux/capability.h; the libc crate has none).
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SETPCAP: u32 = 8;
const CAP_SYS_ADMIN: u32 = 21;

/// A uid and gid (the same number for both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity(pub u32);

/// Becomes `who` with no supplementary groups, keeping at most `keep` in
/// the bounding set (what a later exec can gain) and nothing ambient.
/// Changing to a non-zero uid clears the permitted and effective sets;
/// staying uid 0 (root of a user namespace) keeps them, bounded by `keep`
/// from the next exec on.
pub fn become_user(who: Identity, keep: Caps) -> Result<()> {
    if who.0 != 0 && keep != Caps::NONE {
        return refuse("drop privileges", "only root keeps capabilities");
    }
    // Emptied already (a blank, at its warm-up): a bounding set never
    // grows back, and checking it again is one syscall per capability
    // (41 here) on a cold start's path.
    if !(keep == Caps::NONE && BOUNDING_SET_EMPTY.load(Ordering::Acquire)) {
        step(
            "drop capabilities from the bounding set",
            sys::drop_bounding_set(keep.0),
        )?;
    }
    step("clear ambient capabilities", sys::clear_ambient_caps())?;
    step("clear groups", nix::unistd::setgroups(&[]))?;
    let (uid, gid) = (Uid::from_raw(who.0), Gid::from_raw(who.0));
    step("set gid", nix::unistd::setresgid(gid, gid, gid))?;
    step("set uid", nix::unistd::setresuid(uid, uid, uid))?;
    Ok(())
}

/// Empties the bounding set ahead of time (a blank keeps its zygote's
/// capabilities until its lambda arrives, but nothing it execs can ever
/// gain one).
pub fn empty_bounding_set() -> Result<()> {
    step(
        "drop capabilities from the bounding set",
        sys::drop_bounding_set(Caps::NONE.0),
    )?;
    BOUNDING_SET_EMPTY.store(true, Ordering::Release);
    Ok(())
}

/// This process emptied its bounding set ([`empty_bounding_set`]); a
/// process forked after inherits the flag with the empty set.
static BOUNDING_SET_EMPTY: AtomicBool = AtomicBool::new(false);

/// Sets no_new_privs: no exec can raise privileges again (setuid bits,
/// file capabilities), and an unprivileged process may install seccomp.
pub fn no_new_privs() -> Result<()> {
    step("set no_new_privs", nix::sys::prctl::set_no_new_privs())
}

/// Installs `program` (a compiled seccomp filter, 8 bytes an instruction)
/// for the process and everything it starts.
pub fn seccomp(program: &[u8]) -> Result<()> {
    step("install seccomp filter", sys::install_seccomp(program))
}

/// The process dies with SIGKILL when its parent does (set after every
/// identity change, which clears it).
pub fn die_with_parent() -> Result<()> {
    step(
        "set parent-death signal",
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL),
    )
}

/// Makes the process non-dumpable: other processes of the same uid can
/// neither ptrace it nor read its memory through /proc.
pub fn not_dumpable() -> Result<()> {
    step("make non-dumpable", nix::sys::prctl::set_dumpable(false))
}
