//! The sandbox init: the first code that runs in a new `sock` sandbox, as
//! one readable sequence where each step's failure names the step.
//!
//! The worker starts the `ol` binary itself with [`INIT_ARG`] and an
//! [`InitSpec`]; `main` hands over to [`run_if_init`] before anything else.
//! The init (single-threaded, so forking is safe):
//! 1. joins the sandbox's cgroups;
//! 2. unshares mount, pid, ipc, uts, network and cgroup namespaces;
//! 3. forks; the parent stays outside as the worker's handle and passes the
//!    child's exit on; the child is pid 1 of the new pid namespace;
//! 4. pid 1 makes every mount of the [`MountPlan`] in its private mount
//!    namespace (so nothing is ever visible on the host, and everything
//!    vanishes with the namespace), pivots into the root, sets the
//!    hostname and brings loopback up;
//! 5. drops privileges: capability sets, groups, uid/gid, no_new_privs,
//!    then the precompiled seccomp filter;
//! 6. forks the runtime, which execs Python; pid 1 reaps orphans and exits
//!    with the runtime's status, which ends the namespace.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, chdir, execve, getpid, pivot_root, sethostname};
use seccompiler::sock_filter;
use serde::{Deserialize, Serialize};

use super::rootfs::{MountOp, MountPlan};
use crate::sys;

/// First argument that makes the `ol` binary act as a sandbox init.
pub const INIT_ARG: &str = "__ol_sandbox_init";
/// Exit status of an init that failed before the runtime started.
pub const INIT_FAILED: i32 = 125;

/// Everything the init needs, passed as JSON in its second argument.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitSpec {
    /// `cgroup.procs` files to join.
    pub cgroup_procs: Vec<PathBuf>,
    /// Mounts to make, then the root to pivot into.
    pub plan: MountPlan,
    /// Host name inside the sandbox.
    pub hostname: String,
    /// Uid and gid to run as.
    pub uid: u32,
    /// Gid to run as.
    pub gid: u32,
    /// File holding the precompiled seccomp program, if any.
    pub seccomp: Option<PathBuf>,
    /// Program and arguments to exec.
    pub argv: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(String, String)>,
    /// Its working directory (inside the sandbox).
    pub cwd: String,
    /// A zygote: the runtime keeps root and its capabilities (its forked
    /// children drop them), and pid 1 lives on while any child of it does,
    /// so sandboxes forked from a zygote survive the zygote's death.
    #[serde(default)]
    pub zygote: bool,
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
    let err = run(&spec);
    eprintln!("ol sandbox init: {err}");
    std::process::exit(INIT_FAILED);
}

/// A failed step.
#[derive(Debug)]
struct StepError {
    step: String,
    source: std::io::Error,
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.source)
    }
}

fn step<T, E: Into<std::io::Error>>(
    what: impl Into<String>,
    r: Result<T, E>,
) -> Result<T, StepError> {
    r.map_err(|e| StepError {
        step: what.into(),
        source: e.into(),
    })
}

/// Only returns on failure.
fn run(spec: &InitSpec) -> StepError {
    match outer(spec) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

fn outer(spec: &InitSpec) -> Result<Never, StepError> {
    // Read the filter now: its file is on the host, out of reach once the
    // sandbox has pivoted into its root.
    let seccomp = match &spec.seccomp {
        Some(path) => {
            let bytes = step(format!("read {}", path.display()), std::fs::read(path))?;
            Some(step(
                "decode seccomp program",
                super::seccomp::from_bytes(&bytes).map_err(std::io::Error::other),
            )?)
        }
        None => None,
    };
    let me = std::process::id().to_string();
    for procs in &spec.cgroup_procs {
        step(
            format!("join cgroup {}", procs.display()),
            std::fs::write(procs, &me),
        )?;
    }
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWCGROUP;
    if spec.share_network {
        flags.remove(CloneFlags::CLONE_NEWNET);
    }
    step("unshare namespaces", unshare(flags))?;
    match step("fork pid 1", sys::fork())? {
        ForkResult::Parent { child } => pass_on_exit(child),
        ForkResult::Child => {
            let e = pid_one(spec, seccomp.as_deref());
            eprintln!("ol sandbox init: {e}");
            std::process::exit(INIT_FAILED);
        }
    }
}

fn pid_one(spec: &InitSpec, seccomp: Option<&[sock_filter]>) -> StepError {
    match pid_one_steps(spec, seccomp) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn pid_one_steps(spec: &InitSpec, seccomp: Option<&[sock_filter]>) -> Result<Never, StepError> {
    make_root(&spec.plan)?;
    step("set hostname", sethostname(&spec.hostname))?;
    if !spec.share_network {
        step("bring loopback up", sys::loopback_up())?;
    }
    if !spec.zygote {
        drop_privileges(spec, seccomp)?;
    }
    // If the outer process (the worker's handle) dies, the whole sandbox
    // must go with it; pid 1 dying ends the namespace. Set after the uid
    // change, which clears it.
    step(
        "set parent-death signal",
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL),
    )?;
    // (getppid() cannot tell whether the outer process is already gone: it
    // lives outside this pid namespace, so it reads 0 either way.)
    match step("fork runtime", sys::fork())? {
        ForkResult::Parent { child } => reap_until(child, spec.zygote),
        ForkResult::Child => {
            let e = exec_runtime(spec);
            eprintln!("ol sandbox init: {e}");
            std::process::exit(INIT_FAILED);
        }
    }
}

fn make_root(plan: &MountPlan) -> Result<(), StepError> {
    let none: Option<&str> = None;
    step(
        "make mounts private",
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none),
    )?;
    let root = &plan.root;
    step(
        format!("bind root {}", root.display()),
        mount(
            Some(root),
            root,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        ),
    )?;
    for op in &plan.ops {
        match op {
            MountOp::Bind {
                source,
                target,
                writable,
            } => {
                // A command's dirs may need mount points (in the base, or
                // in the fresh /tmp).
                if !target.exists() {
                    step(
                        format!("make mount point {}", target.display()),
                        std::fs::create_dir_all(target),
                    )?;
                }
                step(
                    format!("bind {} on {}", source.display(), target.display()),
                    mount(
                        Some(source),
                        target,
                        none,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        none,
                    ),
                )?;
                if !writable {
                    remount_read_only(target)?;
                }
            }
            MountOp::Tmpfs { target, options } => step(
                format!("mount tmpfs on {}", target.display()),
                mount(
                    Some("tmpfs"),
                    target,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(options.as_str()),
                ),
            )?,
            MountOp::Proc { target } => step(
                format!("mount proc on {}", target.display()),
                mount(
                    Some("proc"),
                    target,
                    Some("proc"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    none,
                ),
            )?,
            MountOp::ReadOnlyRoot => remount_read_only(root)?,
        }
    }
    step(format!("chdir {}", root.display()), chdir(root))?;
    // pivot_root(".", ".") stacks the old root under the new one; unmounting
    // "." then drops it, with no put_old directory needed.
    step("pivot_root", pivot_root(".", "."))?;
    step("detach old root", umount2(".", MntFlags::MNT_DETACH))?;
    step("chdir /", chdir("/"))?;
    Ok(())
}

fn remount_read_only(target: &Path) -> Result<(), StepError> {
    let none: Option<&str> = None;
    step(
        format!("remount {} read-only", target.display()),
        mount(
            none,
            target,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID,
            none,
        ),
    )
}

fn drop_privileges(spec: &InitSpec, seccomp: Option<&[sock_filter]>) -> Result<(), StepError> {
    step("drop capability sets", sys::drop_capability_sets())?;
    step("clear groups", nix::unistd::setgroups(&[]))?;
    let (uid, gid) = (Uid::from_raw(spec.uid), Gid::from_raw(spec.gid));
    step("set gid", nix::unistd::setresgid(gid, gid, gid))?;
    step("set uid", nix::unistd::setresuid(uid, uid, uid))?;
    step("set no_new_privs", nix::sys::prctl::set_no_new_privs())?;
    if let Some(prog) = seccomp {
        step(
            "install seccomp filter",
            seccompiler::apply_filter(prog).map_err(std::io::Error::other),
        )?;
    }
    Ok(())
}

fn exec_runtime(spec: &InitSpec) -> StepError {
    if let Err(e) = step(format!("chdir {}", spec.cwd), chdir(spec.cwd.as_str())) {
        return e;
    }
    let cstrings = |items: Vec<String>| -> Result<Vec<CString>, StepError> {
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
    let argv = match cstrings(spec.argv.clone()) {
        Ok(a) => a,
        Err(e) => return e,
    };
    let env = match cstrings(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()) {
        Ok(e) => e,
        Err(e) => return e,
    };
    let Some(program) = argv.first() else {
        return StepError {
            step: "exec".into(),
            source: std::io::Error::other("empty argv"),
        };
    };
    match execve(program, &argv, &env) {
        Ok(never) => match never {},
        Err(e) => StepError {
            step: format!("exec {}", spec.argv[0]),
            source: e.into(),
        },
    }
}

/// pid 1: reaps every process until `runtime` exits (with `outlive`:
/// until no child at all is left), then exits the way the runtime did,
/// which ends the pid namespace and kills whatever is left.
fn reap_until(runtime: Pid, outlive: bool) -> Result<Never, StepError> {
    let mut runtime_exit = None;
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == runtime => {
                runtime_exit = Some(Ok(code));
                if !outlive {
                    std::process::exit(code);
                }
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == runtime => {
                runtime_exit = Some(Err(sig));
                if !outlive {
                    die_by(sig);
                }
            }
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(nix::Error::ECHILD) if runtime_exit.is_some() => match runtime_exit {
                Some(Ok(code)) => std::process::exit(code),
                Some(Err(sig)) => die_by(sig),
                None => unreachable!("checked above"),
            },
            Err(e) => return step("wait for runtime", Err::<Never, _>(e)),
        }
    }
}

/// The outer process: waits for pid 1 and exits the same way, so the
/// worker sees the runtime's own exit status or signal.
fn pass_on_exit(child: Pid) -> Result<Never, StepError> {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => die_by(sig),
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return step("wait for pid 1", Err::<Never, _>(e)),
        }
    }
}

fn die_by(sig: Signal) -> ! {
    // Restoring the default action and raising the signal makes our
    // parent see the same death.
    let _ = sys::default_signal(sig);
    let _ = kill(getpid(), sig);
    std::process::exit(128 + sig as i32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_as_json() {
        let spec = InitSpec {
            cgroup_procs: vec!["/sys/fs/cgroup/memory/ol-x/a/cgroup.procs".into()],
            plan: MountPlan {
                root: "/w/base".into(),
                ops: vec![MountOp::ReadOnlyRoot],
            },
            hostname: "ol-sandbox".into(),
            uid: 65534,
            gid: 65534,
            seccomp: None,
            argv: vec!["/usr/bin/python3".into(), "-I".into()],
            env: vec![("PATH".into(), "/usr/bin".into())],
            cwd: "/handler".into(),
            zygote: false,
            share_network: false,
        };
        let json = serde_json::to_string(&spec).expect("encode");
        let back: InitSpec = serde_json::from_str(&json).expect("decode");
        assert_eq!(back.plan, spec.plan);
        assert_eq!(back.argv, spec.argv);
    }
}
