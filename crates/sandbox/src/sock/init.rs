//! The sandbox init: the first code that runs in a new `sock` sandbox that
//! no zygote forked (the root zygote, lambdas started without a zygote,
//! the package installer), as one readable sequence of the jail's steps
//! (crates/jail), each failing with an error that names it.
//!
//! The worker starts the `ol` binary itself with [`INIT_ARG`] and an
//! [`InitSpec`]; `main` hands over to [`run_if_init`] before anything else.
//! The init (single-threaded, so forking is safe):
//! 1. joins the sandbox's cgroups and unshares mount, uts, ipc, pid,
//!    cgroup and (unless it shares the host's) network namespaces;
//! 2. forks pid 1 of the new pid namespace; the outer process stays behind
//!    as the worker's handle, keeping no descriptor, and passes pid 1's
//!    exit on;
//! 3. pid 1 starts a session of its own, makes every mount of the
//!    [`MountPlan`] in its private mount namespace (nothing is ever visible
//!    on the host, everything vanishes with the namespace), pivots into
//!    the root, sets the host name and brings loopback up;
//! 4. pid 1 forks the runtime. A zygote's runtime enters a user namespace
//!    whose root is an unprivileged host uid (pid 1 writes its id maps) and
//!    keeps only the zygote capabilities there; any other runtime becomes
//!    the sandbox user with none. Either sets no_new_privs, installs its
//!    seccomp filter, keeps only its stdio and runtime socket, and execs;
//! 5. pid 1 drops every privilege too and reaps until the runtime exits
//!    (a zygote's pid 1: until no process is left), then exits the same
//!    way, which ends the namespace.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::unistd::{Pid, chdir, execve};
use ol_jail::creds::{self, Caps, Identity};
use ol_jail::mounts::{self, MountPlan};
use ol_jail::ns::{self, Namespaces};
use ol_jail::process::{self, Fork};
use ol_jail::{JailError, Result, fds, step};
use serde::{Deserialize, Serialize};

use crate::supervise::RUNTIME_FD;

/// First argument that makes the `ol` binary act as a sandbox init.
pub const INIT_ARG: &str = "__ol_sandbox_init";
/// Exit status of an init that failed before the runtime started.
pub const INIT_FAILED: i32 = process::FAILED;

/// Everything the init needs, passed as JSON in its second argument.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitSpec {
    /// Files to write `0` to, to join the cgroups (see
    /// `Cgroup::join_files`): the init has one thread when it does.
    pub cgroup_procs: Vec<PathBuf>,
    /// Mounts to make, then the root to pivot into.
    pub plan: MountPlan,
    /// Host name inside the sandbox.
    pub hostname: String,
    /// File holding the precompiled seccomp program of the runtime, if
    /// any (the zygote profile for a zygote).
    pub seccomp: Option<PathBuf>,
    /// Program and arguments to exec.
    pub argv: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(String, String)>,
    /// Its working directory (inside the sandbox).
    pub cwd: String,
    /// A zygote: the runtime is root of a user namespace of its own with
    /// the zygote capabilities there, and pid 1 lives on while any process
    /// does, so sandboxes forked from a zygote survive its death.
    #[serde(default)]
    pub zygote: bool,
    /// Whether the runtime gets its socket as descriptor [`RUNTIME_FD`]
    /// (a command has none).
    #[serde(default)]
    pub runtime_fd: bool,
    /// Stay in the host's network namespace (the package installer only).
    #[serde(default)]
    pub share_network: bool,
}

/// Runs the sandbox init and exits if this process was started as one;
/// returns otherwise. Call it first thing in `main`.
pub fn run_if_init() {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_none_or(|a| a != INIT_ARG) {
        return;
    }
    let spec = args
        .next()
        .and_then(|a| serde_json::from_str::<InitSpec>(&a.to_string_lossy()).ok());
    let Some(spec) = spec else {
        eprintln!("ol sandbox init: missing or malformed spec");
        std::process::exit(INIT_FAILED);
    };
    fail(outer(&spec));
}

/// Reports a failed step on stderr and exits with [`INIT_FAILED`].
fn fail(r: Result<std::convert::Infallible>) -> ! {
    match r {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("ol sandbox init: {e}");
            process::exit_now(INIT_FAILED)
        }
    }
}

fn outer(spec: &InitSpec) -> Result<std::convert::Infallible> {
    // Read the filter now: its file is on the host, out of reach once the
    // sandbox has pivoted into its root.
    let filter = match &spec.seccomp {
        Some(path) => step(format!("read {}", path.display()), std::fs::read(path))?,
        None => Vec::new(),
    };
    fds::join_cgroup_paths(&spec.cgroup_procs)?;
    ns::unshare(Namespaces {
        network: !spec.share_network,
    })?;
    match process::fork("pid 1")? {
        Fork::Parent(pid1) => {
            // The worker's handle keeps nothing of the sandbox's (its
            // stderr only, for this init's own errors).
            fds::close_all_except(&[2])?;
            process::pass_on_exit(pid1)
        }
        Fork::Child => fail(pid_one(spec, &filter)),
    }
}

fn pid_one(spec: &InitSpec, filter: &[u8]) -> Result<std::convert::Infallible> {
    ns::new_session()?;
    mounts::make_root(&spec.plan)?;
    ns::set_hostname(&spec.hostname)?;
    if !spec.share_network {
        ns::loopback_up()?;
    }
    // No supplementary group of root's may follow the runtime anywhere.
    step("clear groups", nix::unistd::setgroups(&[]))?;
    let sync = if spec.zygote {
        Some(IdMapSync::new()?)
    } else {
        None
    };
    match process::fork("the runtime")? {
        Fork::Parent(runtime) => {
            if let Some(sync) = sync {
                sync.map_ids_of(runtime)?;
            }
            // Pid 1 only reaps from now on: it needs no privilege at all.
            confine(Identity(ol_jail::SANDBOX_ID), Caps::NONE, filter)?;
            fds::close_all_except(&[2])?;
            process::reap_until(runtime, spec.zygote)
        }
        Fork::Child => fail(runtime(spec, filter, sync)),
    }
}

fn runtime(
    spec: &InitSpec,
    filter: &[u8],
    sync: Option<IdMapSync>,
) -> Result<std::convert::Infallible> {
    match sync {
        Some(sync) => {
            ns::enter_user_namespace()?;
            sync.wait_for_maps()?;
            confine(Identity(0), Caps::ZYGOTE, filter)?;
        }
        None => confine(Identity(ol_jail::SANDBOX_ID), Caps::NONE, filter)?,
    }
    let keep: &[i32] = if spec.runtime_fd {
        &[0, 1, 2, RUNTIME_FD]
    } else {
        &[0, 1, 2]
    };
    fds::close_all_except(keep)?;
    step(format!("chdir {}", spec.cwd), chdir(spec.cwd.as_str()))?;
    exec(spec)
}

/// Becomes `who` keeping at most `keep`, dies with its parent, sets
/// no_new_privs and installs `filter` (none when empty).
fn confine(who: Identity, keep: Caps, filter: &[u8]) -> Result<()> {
    creds::become_user(who, keep)?;
    creds::die_with_parent()?;
    creds::no_new_privs()?;
    if !filter.is_empty() {
        creds::seccomp(filter)?;
    }
    Ok(())
}

fn exec(spec: &InitSpec) -> Result<std::convert::Infallible> {
    let cstrings = |items: Vec<String>| -> Result<Vec<CString>> {
        items
            .into_iter()
            .map(|s| {
                step(
                    "encode exec arguments",
                    CString::new(s).map_err(std::io::Error::other),
                )
            })
            .collect()
    };
    let argv = cstrings(spec.argv.clone())?;
    let env = cstrings(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect())?;
    let Some(program) = argv.first() else {
        return Err(JailError {
            step: "exec".into(),
            source: std::io::Error::other("empty argv"),
        });
    };
    step(
        format!("exec {}", spec.argv[0]),
        execve(program, &argv, &env),
    )
}

/// The hand-shake by which a zygote's pid 1 writes the id maps of the user
/// namespace its runtime just entered (only a process privileged where
/// the namespace was made may).
struct IdMapSync {
    /// Runtime → pid 1: "I am in the new user namespace".
    entered: (OwnedFd, OwnedFd),
    /// Pid 1 → runtime: "your maps are written".
    mapped: (OwnedFd, OwnedFd),
}

impl IdMapSync {
    fn new() -> Result<Self> {
        let pipe = || {
            step(
                "make a pipe",
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC),
            )
        };
        Ok(Self {
            entered: pipe()?,
            mapped: pipe()?,
        })
    }

    /// In pid 1: waits for the runtime to enter its user namespace, writes
    /// its maps and lets it go on.
    fn map_ids_of(self, runtime: Pid) -> Result<()> {
        let Self { entered, mapped } = self;
        drop(entered.1);
        wait_byte(entered.0, "wait for the runtime's user namespace")?;
        ns::write_id_maps(runtime)?;
        step(
            "let the runtime go on",
            std::fs::File::from(mapped.1).write_all(b"m"),
        )
    }

    /// In the runtime, just inside its user namespace: tells pid 1 and
    /// waits for the maps.
    fn wait_for_maps(self) -> Result<()> {
        let Self { entered, mapped } = self;
        drop(mapped.1);
        step(
            "tell pid 1 about the user namespace",
            std::fs::File::from(entered.1).write_all(b"e"),
        )?;
        drop(entered.0);
        wait_byte(mapped.0, "wait for the user namespace's maps")
    }
}

fn wait_byte(fd: OwnedFd, what: &str) -> Result<()> {
    let raw = fd.as_raw_fd();
    let mut byte = [0u8; 1];
    match std::fs::File::from(fd).read(&mut byte) {
        Ok(1) => Ok(()),
        Ok(_) => Err(JailError {
            step: what.to_string(),
            source: std::io::Error::other(format!("the other side went away (fd {raw})")),
        }),
        Err(e) => step(what, Err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ol_jail::mounts::MountOp;

    #[test]
    fn spec_round_trips_as_json() {
        let spec = InitSpec {
            cgroup_procs: vec!["/sys/fs/cgroup/memory/ol-x/a/cgroup.procs".into()],
            plan: MountPlan {
                root: "/w/base".into(),
                ops: vec![MountOp::ReadOnlyRoot],
            },
            hostname: "ol-sandbox".into(),
            seccomp: None,
            argv: vec!["/usr/bin/python3".into(), "-I".into()],
            env: vec![("PATH".into(), "/usr/bin".into())],
            cwd: "/handler".into(),
            zygote: false,
            runtime_fd: true,
            share_network: false,
        };
        let json = serde_json::to_string(&spec).expect("encode");
        let back: InitSpec = serde_json::from_str(&json).expect("decode");
        assert_eq!(back.plan, spec.plan);
        assert_eq!(back.argv, spec.argv);
        assert!(back.runtime_fd);
    }
}
