//! Zygotes (docs/architecture.md §3.4), worker side: a Python process with the runtime
//! (and, for the import cache, packages) imported that forks new sandboxes
//! on request (runtimes/python/ol_zygote.py). A zygote is confined like
//! any sandbox and more: root only of a user namespace of its own, whose
//! root is an unprivileged host uid, with a few capabilities there,
//! no_new_privs and the zygote seccomp filter. So whatever a package does
//! at import, it does without host privilege.
//!
//! What a child needs comes as file descriptors (SCM_RIGHTS): its runtime
//! socket, its cgroups' join files (v1 `tasks`, v2 `cgroup.procs`), and
//! detached mounts the worker made (its `/tmp`; with its lambda, its code,
//! `/host` and proc), so the zygote never mounts a file system itself and
//! nothing is ever mounted on the host. Each new sandbox first sends its
//! pid namespace, a socket of its network namespace and a pidfd of its pid
//! 1; the worker brings its loopback up and makes its proc from outside
//! ([`ol_jail::outside`]), and reads how the sandbox ended through the
//! pidfd. The
//! child enters its sandbox through the jail's shared library, with the
//! same Rust steps as the sandbox init.

use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessage, MsgFlags, recv, sendmsg};
use ol_jail::outside::PidfdEnd;
use serde_json::json;

use super::cgroup::pool::CgroupPool;
use super::cgroup::{Cgroup, CgroupLimits};
use super::enclosure::{Enclosure, release_cgroup};
use super::rootfs::{host_scratch, tmp_scratch};
use crate::logs::LogPipes;
use crate::protocol::{encode_frame, read_frame_blocking};
use crate::scratch::Scratch;
use crate::supervise::describe_exit;
use crate::{Sandbox, SandboxError};

/// How long a zygote may take to import and say ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fork request, or a new sandbox's first frame, may take.
const FORK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long destroying a sandbox waits for its pid 1 to end before it
/// removes the cgroup anyway (retrying while processes remain).
const END_WAIT: Duration = Duration::from_secs(2);

/// A running zygote and its control connection.
#[derive(Debug)]
pub(crate) struct Zygote {
    sandbox: Mutex<Box<dyn Sandbox>>,
    control: Mutex<UnixStream>,
    alive: AtomicBool,
    /// When a sandbox was last forked from it (for eviction).
    last_used: Mutex<Instant>,
    /// Its cgroup, and whether it is `cpu.idle` now: idle while it forks
    /// blanks ahead, so that a fork nothing waits for (~1.5 ms of `clone`)
    /// never takes a CPU from a cold start's lambda; normal whenever a
    /// call waits for it ([`Zygote::prioritize`]).
    priority: Mutex<(Cgroup, bool)>,
    /// Forks that calls wait for, under way ([`Zygote::awaited`]).
    awaited: AtomicUsize,
}

/// A pre-forked sandbox waiting for its lambda: it already sits in its
/// cgroup and namespaces, with its `/tmp` attached.
#[derive(Debug)]
pub(crate) struct Blank {
    /// Its cgroup (named `sb-<n>`, after the pool slot).
    pub(crate) cgroup: Cgroup,
    /// The worker's end of its runtime socket.
    pub(crate) conn: UnixStream,
    /// A pidfd of its pid 1 (how it ended: [`ol_jail::outside::pid1_end`]).
    pub(crate) pid1: OwnedFd,
    /// The proc of its pid namespace, to hand it with its lambda.
    pub(crate) proc: OwnedFd,
    /// OOM kills its cgroup counted before it (a reused cgroup).
    pub(crate) oom_baseline: u64,
    /// Where its cgroup goes for reuse (else it is removed).
    pub(crate) recycle: Option<Arc<CgroupPool>>,
    /// Its scratch dir (made at its first output) and log pipes, made
    /// ahead: the dir is renamed after the sandbox when it is assigned.
    pub(crate) scratch: Option<(Scratch, LogPipes)>,
    /// The limits its cgroup has now.
    pub(crate) limits: Option<CgroupLimits>,
    /// Its `/host` file system, made ahead, and its size in MiB: a lambda
    /// with that `limits.disk_mb` takes it (making one takes ~0.1–0.2 ms).
    pub(crate) host: Option<(OwnedFd, u64)>,
    /// Its cgroup is `cpu.idle` (a blank made ahead warms up only on CPU
    /// time nothing else wants, so it never slows a cold start down).
    pub(crate) idle: bool,
}

impl Blank {
    /// Kills an unused blank and frees its cgroup and scratch dir.
    pub(crate) fn discard(self) {
        if self.idle {
            // Its cgroup may be reused.
            let _ = self.cgroup.set_cpu_idle(false);
        }
        let _ = release_cgroup(&self.cgroup, self.recycle.as_deref());
        if let Some((scratch, _)) = self.scratch {
            scratch.remove();
        }
    }
}

/// The lambda a blank becomes, on the host side.
pub(crate) struct Assignment<'a> {
    pub(crate) code_dir: &'a Path,
    /// Size of its `/host` in MiB.
    pub(crate) disk_mb: u64,
    /// Its `/host`, made ahead with that size; else one is made now.
    pub(crate) host: Option<OwnedFd>,
    /// Its log pipes (the write ends go to the sandbox).
    pub(crate) logs: LogPipes,
    pub(crate) env: &'a [(String, String)],
    /// Package dirs for its `sys.path`, as seen inside the sandbox.
    pub(crate) packages: &'a [String],
}

/// A child zygote of the import cache, on the host side.
pub(crate) struct ChildZygote<'a> {
    pub(crate) id: &'a str,
    pub(crate) enclosure: Enclosure,
    /// Its log pipes.
    pub(crate) logs: LogPipes,
    /// Size of its `/tmp` in MiB.
    pub(crate) disk_mb: u64,
    /// Package dirs for its `sys.path`, as seen inside the sandbox.
    pub(crate) packages: &'a [String],
    /// Modules it imports.
    pub(crate) imports: &'a [String],
}

/// Hands `what` to `blank` over its own socket: one frame with its code,
/// `/host` and proc mounts and its log pipes attached.
pub(crate) fn assign(blank: &Blank, what: Assignment<'_>) -> Result<(), SandboxError> {
    // Our copies of the mounts and pipes close on return: the sandbox holds
    // its own by then.
    let code = ol_jail::outside::bind(what.code_dir, false).map_err(jail_err)?;
    let host = match what.host {
        Some(host) => host,
        None => ol_jail::outside::scratch(host_scratch(what.disk_mb)).map_err(jail_err)?,
    };
    let fds = [
        code.as_raw_fd(),
        host.as_raw_fd(),
        blank.proc.as_raw_fd(),
        what.logs.stdout.as_raw_fd(),
        what.logs.stderr.as_raw_fd(),
    ];
    let frame = encode_frame(&json!({
        "type": "assign",
        "env": what.env,
        "packages": what.packages,
    }))
    .map_err(|e| start_err("cannot encode the assignment", e))?;
    sendmsg::<()>(
        blank.conn.as_raw_fd(),
        &[IoSlice::new(&frame)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| start_err("cannot hand the lambda to a blank sandbox", e))?;
    Ok(())
}

fn start_err(what: &str, e: impl std::fmt::Display) -> SandboxError {
    SandboxError::StartFailed(format!("zygote: {what}: {e}"))
}

fn jail_err(e: ol_jail::JailError) -> SandboxError {
    SandboxError::StartFailed(e.to_string())
}

impl Zygote {
    /// Waits for the zygote started as `sandbox` to say ready on `control`.
    pub(crate) fn start(
        mut sandbox: Box<dyn Sandbox>,
        control: UnixStream,
        cgroup: Cgroup,
    ) -> Result<Self, SandboxError> {
        control
            .set_read_timeout(Some(READY_TIMEOUT))
            .map_err(|e| start_err("cannot set a timeout", e))?;
        let mut reader = &control;
        match read_frame_blocking(&mut reader) {
            Ok((meta, _)) if meta.kind.as_deref() == Some("ready") => {}
            Ok((meta, _)) => {
                let _ = sandbox.destroy();
                let why = meta.error.clone().unwrap_or_else(|| format!("{meta:?}"));
                return Err(start_err("did not start", why));
            }
            Err(e) => {
                let why = sandbox.exit_reason().unwrap_or_else(|| e.to_string());
                let _ = sandbox.destroy();
                return Err(start_err("did not start", why));
            }
        }
        control
            .set_read_timeout(Some(FORK_TIMEOUT))
            .map_err(|e| start_err("cannot set a timeout", e))?;
        tracing::info!(zygote = sandbox.id(), "zygote ready");
        Ok(Self {
            sandbox: Mutex::new(sandbox),
            control: Mutex::new(control),
            alive: AtomicBool::new(true),
            last_used: Mutex::new(Instant::now()),
            priority: Mutex::new((cgroup, false)),
            awaited: AtomicUsize::new(0),
        })
    }

    /// Runs `fork`, a fork a call waits for, at normal priority (and
    /// keeps the refill's forks from going idle meanwhile: a burst of
    /// cold starts forks one after the other, and each change of
    /// priority is a cgroup write).
    pub(crate) fn awaited<T>(&self, fork: impl FnOnce() -> T) -> T {
        self.awaited.fetch_add(1, Ordering::AcqRel);
        self.prioritize(|| false);
        let forked = fork();
        self.awaited.fetch_sub(1, Ordering::AcqRel);
        forked
    }

    /// Whether a fork a call waits for is under way.
    pub(crate) fn is_awaited(&self) -> bool {
        self.awaited.load(Ordering::Acquire) > 0
    }

    /// Makes its CPU priority idle if `idle()` says so, normal otherwise
    /// (a write only when that changes it; best effort: without
    /// `cpu.idle` it stays normal). `idle` is asked under the priority's
    /// lock, so a caller that makes a call wait for this zygote and then
    /// asks for normal priority is never overtaken by an older decision.
    pub(crate) fn prioritize(&self, idle: impl FnOnce() -> bool) {
        let mut priority = self.priority.lock().unwrap_or_else(PoisonError::into_inner);
        let want = idle();
        if priority.1 != want && priority.0.set_cpu_idle(want).is_ok() {
            priority.1 = want;
        }
    }

    /// Records a use, for least-recently-used eviction.
    pub(crate) fn touch(&self) {
        *self
            .last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// When it was last used.
    pub(crate) fn last_used(&self) -> Instant {
        *self
            .last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the zygote still answers. A zygote's control socket has
    /// exactly one other end, the zygote's own (nothing else keeps a copy),
    /// so its death shows at once as end of file; checked without waiting
    /// (and skipped while a request holds the socket: that one will find
    /// out).
    pub(crate) fn is_alive(&self) -> bool {
        if !self.alive.load(Ordering::Acquire) {
            return false;
        }
        if let Ok(control) = self.control.try_lock() {
            let mut byte = [0u8; 1];
            let peeked = recv(
                control.as_raw_fd(),
                &mut byte,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
            );
            // 0 bytes: end of file. EAGAIN: alive and quiet. A zygote never
            // speaks unasked, so anything else is a broken stream too.
            if !matches!(peeked, Err(nix::Error::EAGAIN)) {
                tracing::warn!("a zygote died");
                self.alive.store(false, Ordering::Release);
                return false;
            }
        }
        true
    }

    /// Forks a blank sandbox into `cgroup` (created by the caller) with a
    /// `/tmp` of `disk_mb`, and prepares its network and proc once its
    /// namespaces arrive. A `warm` blank also does ahead what every
    /// lambda's start does (worth it for a blank made ahead, not for one a
    /// cold start waits for). Any failure of the zygote itself marks it
    /// dead (the pool starts another).
    pub(crate) fn prefork(
        &self,
        id: &str,
        cgroup: Cgroup,
        disk_mb: u64,
        warm: bool,
    ) -> Result<Blank, SandboxError> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| start_err("socket pair", e))?;
        let tmp = ol_jail::outside::scratch(tmp_scratch(disk_mb)).map_err(jail_err)?;
        let cgroup_files = open_join_files(&cgroup)?;
        let mut fds: Vec<RawFd> = vec![theirs.as_raw_fd(), tmp.as_raw_fd()];
        fds.extend(cgroup_files.iter().map(|f| f.as_raw_fd()));
        self.request_fork(&json!({ "type": "prefork", "id": id, "warm": warm }), &fds)?;
        // `theirs`, the mount and the cgroup files go now: the child holds
        // its own copies.
        drop((theirs, tmp, cgroup_files));
        let new = receive_namespaces(&ours)?;
        Ok(Blank {
            cgroup,
            conn: ours,
            pid1: new.pid1,
            proc: new.proc,
            oom_baseline: 0,
            recycle: None,
            scratch: None,
            limits: None,
            host: None,
            idle: false,
        })
    }

    /// Forks a child zygote that imports `child.imports` in namespaces of
    /// its own, and waits until it is ready.
    pub(crate) fn fork_zygote(&self, child: ChildZygote<'_>) -> Result<Zygote, SandboxError> {
        // A cold start waits for it.
        self.awaited(|| self.fork_zygote_now(child))
    }

    fn fork_zygote_now(&self, child: ChildZygote<'_>) -> Result<Zygote, SandboxError> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| start_err("socket pair", e))?;
        let tmp = ol_jail::outside::scratch(tmp_scratch(child.disk_mb)).map_err(jail_err)?;
        let cgroup_files = open_join_files(&child.enclosure.cgroup)?;
        let mut fds: Vec<RawFd> = vec![
            theirs.as_raw_fd(),
            child.logs.stdout.as_raw_fd(),
            child.logs.stderr.as_raw_fd(),
            tmp.as_raw_fd(),
        ];
        fds.extend(cgroup_files.iter().map(|f| f.as_raw_fd()));
        let meta = json!({
            "type": "zygote",
            "id": child.id,
            "packages": child.packages,
            "imports": child.imports,
        });
        let mut sandbox = ForkedSandbox {
            id: child.id.to_string(),
            pid: OnceLock::new(),
            enclosure: child.enclosure,
            pid1: None,
            exit_reason: None,
            destroyed: false,
            _zygote: None,
            log_tag: None,
        };
        // On failure, dropping `sandbox` kills whatever was forked.
        self.request_fork(&meta, &fds)?;
        drop((theirs, tmp, cgroup_files, child.logs));
        let new = receive_namespaces(&ours)?;
        sandbox.pid1 = Some(new.pid1);
        ol_jail::outside::send_proc(ours.as_fd(), new.proc.as_fd()).map_err(jail_err)?;
        let cgroup = sandbox.enclosure.cgroup.clone();
        Zygote::start(Box::new(sandbox), ours, cgroup)
    }

    /// Sends one fork request with its descriptors and reads the answer.
    fn request_fork(&self, meta: &serde_json::Value, fds: &[RawFd]) -> Result<(), SandboxError> {
        let frame = encode_frame(meta).map_err(|e| start_err("cannot encode the request", e))?;
        let control = self.control.lock().unwrap_or_else(PoisonError::into_inner);
        let sent = sendmsg::<()>(
            control.as_raw_fd(),
            &[IoSlice::new(&frame)],
            &[ControlMessage::ScmRights(fds)],
            MsgFlags::empty(),
            None,
        );
        if let Err(e) = sent {
            self.alive.store(false, Ordering::Release);
            return Err(start_err("cannot send the fork request", e));
        }
        let mut reader = &*control;
        let reply = read_frame_blocking(&mut reader);
        drop(control);
        match reply {
            Ok((meta, _)) if meta.kind.as_deref() == Some("forked") => Ok(()),
            Ok((meta, _)) => Err(start_err(
                "refused the request",
                meta.error.clone().unwrap_or_else(|| format!("{meta:?}")),
            )),
            Err(e) => {
                self.alive.store(false, Ordering::Release);
                Err(start_err("did not answer", e))
            }
        }
    }
}

/// Reads a new sandbox's namespaces from its socket (bounded by
/// [`FORK_TIMEOUT`]), brings its loopback up and returns its proc and the
/// pidfd of its pid 1.
fn receive_namespaces(conn: &UnixStream) -> Result<ol_jail::outside::NewSandbox, SandboxError> {
    conn.set_read_timeout(Some(FORK_TIMEOUT))
        .map_err(|e| start_err("cannot set a timeout", e))?;
    let new = ol_jail::outside::receive_namespaces(conn.as_fd()).map_err(jail_err)?;
    conn.set_read_timeout(None)
        .map_err(|e| start_err("cannot clear a timeout", e))?;
    Ok(new)
}

/// The join file ([`Cgroup::join_files`]) of each of `cgroup`'s
/// hierarchies, open for writing: a forked child joins the cgroup by
/// writing `0` to them (the kernel checks the opener's, our, credentials).
fn open_join_files(cgroup: &Cgroup) -> Result<Vec<File>, SandboxError> {
    cgroup
        .join_files()
        .into_iter()
        .map(|procs| {
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&procs)
                .map_err(|source| SandboxError::Io {
                    what: "cannot open",
                    path: procs.clone(),
                    source,
                })
        })
        .collect()
}

impl Drop for Zygote {
    fn drop(&mut self) {
        let sandbox = self
            .sandbox
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let _ = sandbox.destroy();
    }
}

/// A sandbox forked from a zygote. It is not our child: it is tracked by
/// its cgroup, and its exit status comes through the pidfd of its pid 1.
#[derive(Debug)]
pub(crate) struct ForkedSandbox {
    pub(crate) id: String,
    pub(crate) pid: OnceLock<u32>,
    pub(crate) enclosure: Enclosure,
    /// A pidfd of its pid 1 (none until it sent it).
    pub(crate) pid1: Option<OwnedFd>,
    pub(crate) exit_reason: Option<String>,
    pub(crate) destroyed: bool,
    /// The zygote it was forked from: held so that a zygote with live
    /// children is never evicted.
    pub(crate) _zygote: Option<Arc<Zygote>>,
    /// Routes its output to its lambda's log (none for a zygote).
    pub(crate) log_tag: Option<crate::lambda_logs::LogTag>,
}

impl ForkedSandbox {
    /// Host pid of the runtime: the process of the cgroup that is pid 1 of
    /// the innermost pid namespace (`NSpid` ends in 1).
    fn find_runtime_pid(&self) -> Option<u32> {
        let pids = self.enclosure.cgroup.pids().ok()?;
        pids.into_iter().find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .is_some_and(|ns| {
                        let levels: Vec<&str> = ns.split_whitespace().collect();
                        levels.len() >= 3 && levels.last() == Some(&"1")
                    })
            })
        })
    }
}

impl Sandbox for ForkedSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn log_tag(&self) -> Option<&crate::lambda_logs::LogTag> {
        self.log_tag.as_ref()
    }

    fn pid(&self) -> u32 {
        if let Some(pid) = self.pid.get() {
            return *pid;
        }
        // Its runtime is its pid 1: the pidfd names it in one ioctl, where
        // reading /proc took ~0.1 ms of each cold start.
        let from_pidfd = self
            .pid1
            .as_ref()
            .and_then(|pid1| ol_jail::outside::pid1_pid(pid1.as_fd()));
        match from_pidfd.or_else(|| self.find_runtime_pid()) {
            Some(pid) => *self.pid.get_or_init(|| pid),
            None => 0,
        }
    }

    fn pause(&self) -> Result<(), SandboxError> {
        self.enclosure.pause()
    }

    fn unpause(&self) -> Result<(), SandboxError> {
        self.enclosure.unpause()
    }

    fn destroy(&mut self) -> Result<(), SandboxError> {
        if self.destroyed {
            return Ok(());
        }
        self.destroyed = true;
        if let Some(pid1) = &self.pid1 {
            // Killed, pid 1 ends only once the kernel has killed and
            // waited for the rest of its pid namespace: wait for that on
            // its pidfd, asleep, so that the cgroup's removal then
            // succeeds at once, rather than retrying it (each try an rmdir
            // and a read of its processes) while the kernel tears the
            // processes down: with 100 sandboxes going at once those
            // retries were most of the worker's CPU.
            self.enclosure.kill();
            let _ = ol_jail::outside::wait_pid1_end(pid1.as_fd(), END_WAIT);
        }
        self.enclosure.tear_down()
    }

    fn mem_usage(&self) -> Result<u64, SandboxError> {
        self.enclosure.mem_usage()
    }

    fn exit_reason(&mut self) -> Option<String> {
        if self.exit_reason.is_none() {
            // Known once pid 1 has ended and its zygote has reaped it.
            let pid1 = self.pid1.as_ref()?;
            self.exit_reason = match ol_jail::outside::pid1_end(pid1.as_fd()) {
                Ok(PidfdEnd::Status(raw)) => Some(describe_exit(ExitStatus::from_raw(raw))),
                Ok(PidfdEnd::Unknown) => {
                    Some("ended (this kernel keeps no exit status for pidfds)".to_string())
                }
                Ok(PidfdEnd::Running) | Err(_) => None,
            };
        }
        self.exit_reason.clone()
    }

    fn cgroup(&self) -> Option<String> {
        self.enclosure.cgroup_name()
    }

    fn oom_killed(&self) -> bool {
        self.enclosure.oom_killed()
    }
}

impl Drop for ForkedSandbox {
    fn drop(&mut self) {
        let _ = self.destroy();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_wait_statuses_read_like_the_process_backend() {
        let says = |raw| describe_exit(ExitStatus::from_raw(raw));
        assert_eq!(says(3 << 8), "exited with status 3");
        assert_eq!(says(0), "exited with status 0");
        assert_eq!(says(9), "was killed by signal 9 (SIGKILL)");
    }
}
