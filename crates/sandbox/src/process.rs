//! The `process` backend: each sandbox is a plain child process running the
//! Python runtime, in its own process group, with no isolation. It is for
//! development without root; `sock` is the isolated backend.
//!
//! Each sandbox gets a scratch dir `<scratch_root>/<id>/` with its `stdout`,
//! `stderr` (see [`crate::logs`]) and a `pid` file (`<pid> <start time>`),
//! so a later worker can find and kill what a crashed one left behind
//! without hitting a recycled pid. The dir goes with the sandbox.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::logs::{self, LogPipes};
use crate::{
    CommandOutput, CommandSpec, NewSandbox, Sandbox, SandboxError, SandboxPool, SandboxSpec, io_err,
};

/// Descriptor number of the runtime connection inside the child.
pub(crate) const RUNTIME_FD: i32 = crate::sock::init::RUNTIME_FD;
/// How long, after a command exits, its output may take to be drained.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const PID_FILE: &str = "pid";

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
        scratch: &Path,
    ) -> Result<NewSandbox, SandboxError> {
        fs::create_dir_all(scratch).map_err(io_err("cannot create scratch dir", scratch))?;
        let logs = logs::pipes(scratch, spec.limits.log_kb)?;
        let (ours, theirs) =
            UnixStream::pair().map_err(io_err("cannot create socket pair for", scratch))?;

        let mut cmd = Command::new(&self.runtime.python);
        cmd.arg("-I")
            .arg("-S")
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
            .env("HOME", scratch)
            .env("TMPDIR", scratch)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&spec.code_dir);
        let child = spawn_with_runtime_fd(&mut cmd, logs.stdout, logs.stderr, theirs)?;
        let mut sandbox = ProcessSandbox {
            id: id.to_string(),
            pid: child.id(),
            child,
            scratch: scratch.to_path_buf(),
            destroyed: false,
        };
        let pid_path = scratch.join(PID_FILE);
        if let Err(source) = fs::write(&pid_path, pid_record(sandbox.pid)) {
            let _ = sandbox.destroy();
            return Err(SandboxError::Io {
                what: "cannot write",
                path: pid_path,
                source,
            });
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
        let scratch = self.scratch_root.join(&id);
        self.spawn(spec, &id, &scratch).inspect_err(|_| {
            let _ = fs::remove_dir_all(&scratch);
        })
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
        let scratch = self.scratch_root.join(format!("{}-{n}", spec.name));
        fs::create_dir_all(&scratch).map_err(io_err("cannot create scratch dir", &scratch))?;
        let LogPipes {
            stdout,
            stderr,
            drained,
        } = logs::pipes(&scratch, spec.limits.log_kb)?;
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
        let output = spawned.and_then(|mut child| {
            let pid = child.id();
            let _ = fs::write(scratch.join(PID_FILE), pid_record(pid));
            let kill = || {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            };
            finish_command(&mut child, &spec.limits, &scratch, &drained, kill, || false)
        });
        let _ = fs::remove_dir_all(&scratch);
        output
    }
}

/// Waits for a command's `child` until it exits or its `runtime_sec` is
/// up (then calls `kill`), and collects its output from `scratch` once
/// it is `drained`.
pub(crate) fn finish_command(
    child: &mut Child,
    limits: &crate::Limits,
    scratch: &Path,
    drained: &logs::Drained,
    kill: impl Fn(),
    oom_killed: impl Fn() -> bool,
) -> Result<CommandOutput, SandboxError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(limits.runtime_sec);
    let mut nap = std::time::Duration::from_millis(1);
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() >= deadline => {
                timed_out = true;
                kill();
                let _ = child.kill();
                match child.wait() {
                    Ok(status) => break status,
                    Err(source) => {
                        return Err(SandboxError::Io {
                            what: "cannot wait for the command in",
                            path: scratch.to_path_buf(),
                            source,
                        });
                    }
                }
            }
            Ok(None) => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(std::time::Duration::from_millis(50));
            }
            Err(source) => {
                return Err(SandboxError::Io {
                    what: "cannot wait for the command in",
                    path: scratch.to_path_buf(),
                    source,
                });
            }
        }
    };
    // Processes the command left behind may hold its pipes: they were
    // killed with it (its cgroup or process group), and the pipes end soon.
    if !drained.wait(DRAIN_TIMEOUT) {
        kill();
        drained.wait(DRAIN_TIMEOUT);
    }
    let read = |name: &str| {
        let rotated = fs::read(scratch.join(format!("{name}.1"))).unwrap_or_default();
        let newest = fs::read(scratch.join(name)).unwrap_or_default();
        String::from_utf8_lossy(&[rotated, newest].concat()).into_owned()
    };
    Ok(CommandOutput {
        success: status.success(),
        status: describe_exit(status),
        timed_out,
        oom_killed: oom_killed(),
        stdout: read("stdout"),
        stderr: read("stderr"),
    })
}

/// Kills every sandbox process recorded under `scratch_root` (checking each
/// pid's start time, so a recycled pid is never hit) and removes the scratch
/// dirs. Returns how many sandboxes were found. Works without a running
/// worker: it is `ol worker force-cleanup`'s part for this backend.
pub fn cleanup_scratch(scratch_root: &Path) -> Result<usize, SandboxError> {
    let entries = match fs::read_dir(scratch_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(SandboxError::Io {
                what: "cannot list",
                path: scratch_root.to_path_buf(),
                source,
            });
        }
    };
    let mut found = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        if let Some((pid, started)) = read_pid_record(&dir.join(PID_FILE)) {
            found += 1;
            if process_start_time(pid) == Some(started) {
                // The runtime leads its own process group: kill it all.
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        fs::remove_dir_all(&dir).map_err(|source| SandboxError::Io {
            what: "cannot remove",
            path: dir.clone(),
            source,
        })?;
    }
    Ok(found)
}

/// Starts `cmd` in its own process group with no stdin, `stdout` and
/// `stderr` (log pipes) as its output and `theirs` (the runtime's end of
/// its socket) as descriptor [`RUNTIME_FD`].
pub(crate) fn spawn_with_runtime_fd(
    cmd: &mut Command,
    stdout: std::os::fd::OwnedFd,
    stderr: std::os::fd::OwnedFd,
    theirs: UnixStream,
) -> Result<Child, SandboxError> {
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    ol_jail::inherit_fd_as(cmd, theirs.as_raw_fd(), RUNTIME_FD);
    let child = cmd.spawn().map_err(|source| SandboxError::Spawn {
        program: PathBuf::from(cmd.get_program()),
        source,
    })?;
    // Our copy of the runtime's end must go, or its death is never seen as
    // EOF.
    drop(theirs);
    Ok(child)
}

/// A runtime process and its process group.
#[derive(Debug)]
struct ProcessSandbox {
    id: String,
    pid: u32,
    child: Child,
    scratch: PathBuf,
    destroyed: bool,
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
        let _ = fs::remove_dir_all(&self.scratch);
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

/// How a process ended, in words (`exited with status 3`, `was killed by
/// signal 9 (SIGKILL)`).
pub(crate) fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("was killed by signal {sig} ({})", s.as_str()),
            Err(_) => format!("was killed by signal {sig}"),
        },
        (None, None) => "exited".to_string(),
    }
}

/// The record that names process `pid` for good: `<pid> <start time>`
/// (pid files of workers and sandboxes).
pub fn pid_record(pid: u32) -> String {
    format!("{pid} {}\n", process_start_time(pid).unwrap_or(0))
}

/// Reads a [`pid_record`] back: `(pid, start time)`.
pub fn read_pid_record(path: &Path) -> Option<(u32, u64)> {
    let text = fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    let pid = parts.next()?.parse().ok()?;
    let started = parts.next()?.parse().ok()?;
    Some((pid, started))
}

/// Resident memory of process `pid` in bytes (/proc/PID/statm).
pub fn process_rss_bytes(pid: u32) -> Option<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Start time of a live process in clock ticks since boot (field 22 of
/// /proc/PID/stat); with the pid it names one process for good. `None` when
/// no such process runs (zombies count as gone: they run nothing).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_is_stable_and_absent_for_unused_pid() {
        let me = std::process::id();
        let a = process_start_time(me).expect("own start time");
        assert_eq!(process_start_time(me), Some(a));
        assert_eq!(process_start_time(u32::MAX - 1), None);
    }

    #[test]
    fn pid_record_round_trip_and_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("pid");
        fs::write(&p, "123 456\n").expect("write");
        assert_eq!(read_pid_record(&p), Some((123, 456)));
        fs::write(&p, "nonsense").expect("write");
        assert_eq!(read_pid_record(&p), None);
        assert_eq!(read_pid_record(&dir.path().join("missing")), None);
    }
}
