//! The `process` backend: each sandbox is a plain child process running the
//! Python runtime, in its own process group, with no isolation. It is for
//! development without root; `sock` is the isolated backend.
//!
//! Each sandbox gets a scratch dir (see [`crate::scratch`]) with its logs
//! and a pid file, so a later worker can find and kill what a crashed one
//! left behind.

use std::fs;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::lambda_logs::LogTag;
use crate::logs::LogPipes;
use crate::pids::process_rss_bytes;
use crate::scratch::{Scratch, cleanup_scratch};
use crate::supervise::{RUNTIME_FD, describe_exit, finish_command, spawn_with_runtime_fd};
use crate::{
    CommandOutput, CommandSpec, NewSandbox, Sandbox, SandboxError, SandboxPool, SandboxSpec, io_err,
};

/// Where the runtime lives and how to start it.
#[derive(Debug, Clone)]
pub struct RuntimeCommand {
    /// The real Python interpreter (never a pyenv shim).
    pub python: PathBuf,
    /// The runtime script (`ol_runtime.py`).
    pub script: PathBuf,
    /// The installed packages (`DIR/packages`).
    pub packages: PathBuf,
}

/// Makes `process` sandboxes.
#[derive(Debug)]
pub struct ProcessPool {
    runtime: RuntimeCommand,
    scratch_root: PathBuf,
    next_id: AtomicU64,
}

impl ProcessPool {
    /// A pool whose sandboxes keep their scratch dirs under `scratch_root`.
    pub fn new(runtime: RuntimeCommand, scratch_root: PathBuf) -> Result<Self, SandboxError> {
        fs::create_dir_all(&scratch_root)
            .map_err(io_err("cannot create scratch dir", &scratch_root))?;
        Ok(Self {
            runtime,
            scratch_root,
            next_id: AtomicU64::new(1),
        })
    }

    fn spawn(
        &self,
        spec: &SandboxSpec,
        id: &str,
        scratch: &Scratch,
    ) -> Result<NewSandbox, SandboxError> {
        let logs = scratch.log_pipes(spec.limits.log_kb)?;
        let dir = scratch.path();
        logs.tag.route(spec.log_sink(id));
        let log_tag = logs.tag.clone();
        let (ours, theirs) =
            UnixStream::pair().map_err(io_err("cannot create socket pair for", &dir))?;

        let mut cmd = Command::new(&self.runtime.python);
        // -B: no __pycache__ in the lambda's code dir (the user's, for a
        // local registry), whose check by size and whole-second mtime
        // would serve stale code after a quick same-size edit.
        cmd.arg("-I")
            .arg("-S")
            .arg("-B")
            .arg(&self.runtime.script)
            .arg("--fd")
            .arg(RUNTIME_FD.to_string())
            .arg("--code")
            .arg(&spec.code_dir)
            .arg("--name")
            .arg(&spec.lambda);
        if !spec.packages.is_empty() {
            let dirs: Vec<PathBuf> = spec
                .packages
                .iter()
                .map(|p| self.runtime.packages.join(p))
                .collect();
            let joined = std::env::join_paths(&dirs).map_err(|e| {
                SandboxError::StartFailed(format!("bad package dir in {dirs:?}: {e}"))
            })?;
            cmd.arg("--packages").arg(joined);
        }
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .env("HOME", &dir)
            .env("TMPDIR", &dir)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&spec.code_dir);
        let child = spawn_with_runtime_fd(&mut cmd, logs.stdout, logs.stderr, theirs)?;
        let mut sandbox = ProcessSandbox {
            id: id.to_string(),
            pid: child.id(),
            child,
            scratch: scratch.clone(),
            destroyed: false,
            log_tag,
        };
        if let Err(e) = scratch.record_pid(sandbox.pid) {
            let _ = sandbox.destroy();
            return Err(e);
        }
        Ok(NewSandbox {
            sandbox: Box::new(sandbox),
            conn: ours,
            forked_from: None,
        })
    }
}

impl SandboxPool for ProcessPool {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn create(&self, spec: &SandboxSpec) -> Result<NewSandbox, SandboxError> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", spec.lambda);
        let scratch = Scratch::create(&self.scratch_root, &id)?;
        self.spawn(spec, &id, &scratch)
            .inspect_err(|_| scratch.remove())
    }

    fn cleanup_leftovers(&self) -> Result<usize, SandboxError> {
        cleanup_scratch(&self.scratch_root)
    }

    /// Runs the command as a plain child process (no isolation, like every
    /// `process` sandbox), in its own process group.
    fn run_command(&self, spec: &CommandSpec) -> Result<CommandOutput, SandboxError> {
        let Some((program, args)) = spec.argv.split_first() else {
            return Err(SandboxError::StartFailed("empty command".into()));
        };
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let scratch = Scratch::create(&self.scratch_root, &format!("{}-{n}", spec.name))?;
        let LogPipes {
            stdout,
            stderr,
            drained,
            ..
        } = scratch.log_pipes(spec.limits.log_kb)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        let spawned = cmd.spawn().map_err(|source| SandboxError::Spawn {
            program: PathBuf::from(program),
            source,
        });
        // The command holds our copies of the log pipes' write ends: they
        // must close, or the output is never drained to its end.
        drop(cmd);
        let output = spawned.and_then(|mut child| {
            let pid = child.id();
            let _ = scratch.record_pid(pid);
            let kill = || {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            };
            finish_command(
                &mut child,
                &spec.limits,
                &scratch.path(),
                &drained,
                kill,
                || false,
            )
        });
        scratch.remove();
        output
    }
}

/// A runtime process and its process group.
#[derive(Debug)]
struct ProcessSandbox {
    id: String,
    pid: u32,
    child: Child,
    scratch: Scratch,
    destroyed: bool,
    log_tag: LogTag,
}

impl ProcessSandbox {
    fn signal_group(&self, sig: Signal) -> Result<(), SandboxError> {
        killpg(Pid::from_raw(self.pid as i32), sig).map_err(|source| SandboxError::Signal {
            pid: self.pid,
            source,
        })
    }
}

impl Sandbox for ProcessSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn log_tag(&self) -> Option<&LogTag> {
        Some(&self.log_tag)
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    fn pause(&self) -> Result<(), SandboxError> {
        self.signal_group(Signal::SIGSTOP)
    }

    fn unpause(&self) -> Result<(), SandboxError> {
        self.signal_group(Signal::SIGCONT)
    }

    fn destroy(&mut self) -> Result<(), SandboxError> {
        if self.destroyed {
            return Ok(());
        }
        self.destroyed = true;
        // ESRCH: the whole group is already gone, which is what we want.
        match killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL) {
            Ok(()) | Err(nix::Error::ESRCH) => {}
            Err(source) => {
                return Err(SandboxError::Signal {
                    pid: self.pid,
                    source,
                });
            }
        }
        let _ = self.child.wait();
        self.scratch.remove();
        Ok(())
    }

    fn mem_usage(&self) -> Result<u64, SandboxError> {
        process_rss_bytes(self.pid)
            .ok_or_else(|| SandboxError::Dead(self.id.clone(), format!("no process {}", self.pid)))
    }

    fn exit_reason(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(describe_exit(status)),
            _ => None,
        }
    }
}

impl Drop for ProcessSandbox {
    fn drop(&mut self) {
        let _ = self.destroy();
    }
}
