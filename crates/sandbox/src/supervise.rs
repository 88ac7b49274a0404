//! The host processes a backend starts and watches, whatever the backend:
//! a runtime started with its socket as descriptor [`RUNTIME_FD`]
//! ([`spawn_with_runtime_fd`]), a command waited for under its deadline
//! with its output collected ([`finish_command`]), and how a process ended,
//! in words ([`describe_exit`]).

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::logs::Drained;
use crate::{CommandOutput, Limits, SandboxError};

/// Descriptor number of the runtime's socket in the runtime.
pub const RUNTIME_FD: i32 = 3;
/// How long, after a command exits, its output may take to be drained.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts `cmd` in its own process group with no stdin, `stdout` and
/// `stderr` (log pipes) as its output and `theirs` (the runtime's end of
/// its socket) as descriptor [`RUNTIME_FD`].
pub(crate) fn spawn_with_runtime_fd(
    cmd: &mut Command,
    stdout: OwnedFd,
    stderr: OwnedFd,
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

/// Waits for a command's `child` until it exits or its `runtime_sec` is
/// up (then calls `kill`), and collects its output from `scratch` once
/// it is `drained`.
pub(crate) fn finish_command(
    child: &mut Child,
    limits: &Limits,
    scratch: &Path,
    drained: &Drained,
    kill: impl Fn(),
    oom_killed: impl Fn() -> bool,
) -> Result<CommandOutput, SandboxError> {
    let deadline = Instant::now() + Duration::from_secs(limits.runtime_sec);
    let mut nap = Duration::from_millis(1);
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
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
                nap = (nap * 2).min(Duration::from_millis(50));
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

/// How a process ended, in words (`exited with status 3`, `was killed by
/// signal 9 (SIGKILL)`).
pub(crate) fn describe_exit(status: ExitStatus) -> String {
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
