//! Zygotes (DESIGN.md §3.4): a privileged sandbox running `ol_zygote.py`,
//! a Python with the runtime already imported, that forks new lambda
//! sandboxes on request. The worker sends what a child needs as file
//! descriptors (SCM_RIGHTS): its runtime socket, detached mounts of its code
//! and scratch dir (so no mount is ever made on the host), its log files,
//! an exit pipe and its cgroups' `cgroup.procs` files. The child enters its
//! own namespaces, cgroup and root (see runtimes/python/ol_zygote.py).

use std::fs::{self, File, OpenOptions};
use std::io::{IoSlice, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use serde_json::json;

use super::cgroup::{Cgroup, CgroupLimits};
use super::cgroup_pool::CgroupPool;
use super::{Enclosure, release_cgroup};
use crate::process::describe_exit;
use crate::protocol::{encode_frame, read_frame_blocking};
use crate::{Sandbox, SandboxError, sys};

/// How long a zygote may take to import and say ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fork request may take to be answered.
const FORK_TIMEOUT: Duration = Duration::from_secs(10);

/// A running zygote and its control connection.
#[derive(Debug)]
pub(crate) struct Zygote {
    sandbox: Mutex<Box<dyn Sandbox>>,
    control: Mutex<UnixStream>,
    alive: AtomicBool,
    /// When a sandbox was last forked from it (for eviction).
    last_used: Mutex<Instant>,
}

/// A pre-forked sandbox waiting for its lambda: it already sits in its
/// cgroup and namespaces (see runtimes/python/ol_zygote.py).
#[derive(Debug)]
pub(crate) struct Blank {
    /// Its cgroup (named `sb-<n>`, after the pool slot).
    pub(crate) cgroup: Cgroup,
    /// The worker's end of its runtime socket.
    pub(crate) conn: UnixStream,
    /// Read end of its exit pipe.
    pub(crate) exit: File,
    /// OOM kills its cgroup counted before it (a reused cgroup).
    pub(crate) oom_baseline: u64,
    /// Where its cgroup goes for reuse (else it is removed).
    pub(crate) recycle: Option<Arc<CgroupPool>>,
    /// Its scratch dir and log files, made ahead (renamed after the
    /// sandbox when it is assigned).
    pub(crate) scratch: Option<(PathBuf, File, File)>,
    /// The limits its cgroup has now.
    pub(crate) limits: Option<CgroupLimits>,
}

impl Blank {
    /// Kills an unused blank and frees its cgroup and scratch dir.
    pub(crate) fn discard(self) {
        let _ = release_cgroup(&self.cgroup, self.recycle.as_deref());
        if let Some((dir, _, _)) = self.scratch {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// The lambda a blank becomes, on the host side.
pub(crate) struct Assignment<'a> {
    pub(crate) code_dir: &'a Path,
    pub(crate) host_dir: &'a Path,
    pub(crate) stdout: File,
    pub(crate) stderr: File,
    pub(crate) uid: u32,
    pub(crate) env: &'a [(String, String)],
    /// Package dirs for its `sys.path`, as seen inside the sandbox.
    pub(crate) packages: &'a [String],
}

/// A child zygote of the import cache, on the host side.
pub(crate) struct ChildZygote<'a> {
    pub(crate) id: &'a str,
    pub(crate) enclosure: Enclosure,
    pub(crate) stdout: File,
    pub(crate) stderr: File,
    /// Package dirs for its `sys.path`, as seen inside the sandbox.
    pub(crate) packages: &'a [String],
    /// Modules it imports.
    pub(crate) imports: &'a [String],
}

/// Sends `what` to a blank over its own socket, as one frame with the
/// mounts and log files attached.
pub(crate) fn assign(blank_conn: &UnixStream, what: &Assignment<'_>) -> Result<(), SandboxError> {
    let mount_of = |path: &Path, writable| {
        sys::detached_mount(path, writable).map_err(|source| SandboxError::Io {
            what: "cannot clone the mount of",
            path: path.to_path_buf(),
            source,
        })
    };
    let code = mount_of(what.code_dir, false)?;
    let host = mount_of(what.host_dir, true)?;
    let fds = [
        code.as_raw_fd(),
        host.as_raw_fd(),
        what.stdout.as_raw_fd(),
        what.stderr.as_raw_fd(),
    ];
    let frame = encode_frame(&json!({
        "type": "assign",
        "uid": what.uid,
        "gid": what.uid,
        "env": what.env,
        "packages": what.packages,
    }))
    .map_err(|e| start_err("cannot encode the assignment", e))?;
    sendmsg::<()>(
        blank_conn.as_raw_fd(),
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

impl Zygote {
    /// Waits for the zygote started as `sandbox` to say ready on `control`.
    pub(crate) fn start(
        mut sandbox: Box<dyn Sandbox>,
        control: UnixStream,
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
        })
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

    /// Whether the zygote still answers.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Forks a blank sandbox into `cgroup` (created by the caller); a
    /// `warm` one also does ahead what every lambda's start does (worth it
    /// for a blank made ahead, not for one a cold start waits for). Any
    /// failure of the zygote itself marks it dead (the pool starts another).
    pub(crate) fn prefork(
        &self,
        id: &str,
        cgroup: Cgroup,
        warm: bool,
    ) -> Result<Blank, SandboxError> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| start_err("socket pair", e))?;
        let (exit_r, exit_w) = exit_pipe()?;
        let cgroup_files = open_procs_files(&cgroup)?;
        let mut fds: Vec<RawFd> = vec![theirs.as_raw_fd(), exit_w.as_raw_fd()];
        fds.extend(cgroup_files.iter().map(|f| f.as_raw_fd()));
        self.request_fork(&json!({ "type": "prefork", "id": id, "warm": warm }), &fds)?;
        // `theirs`, the exit pipe's write end and the cgroup files close
        // when this returns: the child holds its own copies now.
        Ok(Blank {
            cgroup,
            conn: ours,
            exit: File::from(exit_r),
            oom_baseline: 0,
            recycle: None,
            scratch: None,
            limits: None,
        })
    }

    /// Forks a child zygote that imports `child.imports` and waits until it
    /// is ready.
    pub(crate) fn fork_zygote(&self, child: ChildZygote<'_>) -> Result<Zygote, SandboxError> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| start_err("socket pair", e))?;
        let (exit_r, exit_w) = exit_pipe()?;
        let cgroup_files = open_procs_files(&child.enclosure.cgroup)?;
        let mut fds: Vec<RawFd> = vec![
            theirs.as_raw_fd(),
            exit_w.as_raw_fd(),
            child.stdout.as_raw_fd(),
            child.stderr.as_raw_fd(),
        ];
        fds.extend(cgroup_files.iter().map(|f| f.as_raw_fd()));
        let meta = json!({
            "type": "zygote",
            "id": child.id,
            "packages": child.packages,
            "imports": child.imports,
        });
        let sandbox = ForkedSandbox {
            id: child.id.to_string(),
            pid: OnceLock::new(),
            enclosure: child.enclosure,
            exit: File::from(exit_r),
            exit_reason: None,
            destroyed: false,
            _zygote: None,
        };
        // On failure, dropping `sandbox` kills whatever was forked.
        self.request_fork(&meta, &fds)?;
        drop(theirs);
        Zygote::start(Box::new(sandbox), ours)
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

/// A pipe whose write end a forked process keeps until it exits.
fn exit_pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), SandboxError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|e| start_err("exit pipe", e))
}

/// `cgroup.procs` of each of `cgroup`'s hierarchies, open for writing: a
/// forked child joins the cgroup by writing to them.
fn open_procs_files(cgroup: &Cgroup) -> Result<Vec<File>, SandboxError> {
    cgroup
        .procs_files()
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
/// its cgroup, and its exit status comes through its exit pipe.
#[derive(Debug)]
pub(crate) struct ForkedSandbox {
    pub(crate) id: String,
    pub(crate) pid: OnceLock<u32>,
    pub(crate) enclosure: Enclosure,
    pub(crate) exit: File,
    pub(crate) exit_reason: Option<String>,
    pub(crate) destroyed: bool,
    /// The zygote it was forked from: held so that a zygote with live
    /// children is never evicted.
    pub(crate) _zygote: Option<Arc<Zygote>>,
}

impl ForkedSandbox {
    /// Host pid of the runtime: the process of the cgroup that is pid 1 of
    /// the innermost pid namespace (`NSpid` ends in 1).
    fn find_runtime_pid(&self) -> Option<u32> {
        let pids = self.enclosure.cgroup.pids().ok()?;
        pids.into_iter().find(|pid| {
            fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
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

    fn pid(&self) -> u32 {
        if let Some(pid) = self.pid.get() {
            return *pid;
        }
        match self.find_runtime_pid() {
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
        self.enclosure.tear_down()
    }

    fn mem_usage(&self) -> Result<u64, SandboxError> {
        self.enclosure.mem_usage()
    }

    fn exit_reason(&mut self) -> Option<String> {
        if self.exit_reason.is_none() {
            // The middle process writes the runtime's raw wait status.
            let mut buf = [0u8; 32];
            self.exit_reason = match self.exit.read(&mut buf) {
                Ok(0) => Some("was killed".to_string()),
                Ok(n) => String::from_utf8_lossy(&buf[..n])
                    .trim()
                    .parse()
                    .ok()
                    .map(|raw| describe_exit(ExitStatus::from_raw(raw))),
                Err(_) => None,
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
