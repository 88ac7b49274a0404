//! A sandbox's scratch dir on the host, `<scratch_root>/<id>/`: its logs
//! (`stdout`, `stderr`, see [`crate::logs`]) and a `pid` file naming its
//! outermost process for good ([`crate::pids`]), so that a later worker
//! finds and kills what a crashed one left ([`cleanup_scratch`]) without
//! hitting a recycled pid. Nothing in it is visible to a `sock` sandbox,
//! which writes only to its log pipes and its tmpfs scratch. The dir goes
//! with its sandbox.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::logs::{self, LogPipes};
use crate::pids::{group_runs, pid_record, process_start_time, read_pid_record};
use crate::{SandboxError, io_err};

/// How long [`cleanup_scratch`] waits for the sandboxes it killed to go.
const GROUP_EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The pid file in a scratch dir.
pub(crate) const PID_FILE: &str = "pid";

/// A sandbox's scratch dir.
#[derive(Debug)]
pub(crate) struct Scratch {
    pub(crate) dir: PathBuf,
}

impl Scratch {
    /// Makes the scratch dir of sandbox `id` under `root`.
    pub(crate) fn create(root: &Path, id: &str) -> Result<Self, SandboxError> {
        let dir = root.join(id);
        fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
        Ok(Self { dir })
    }

    /// Log pipes drained into it, at most `cap_kb` KiB per stream.
    pub(crate) fn log_pipes(&self, cap_kb: u64) -> Result<LogPipes, SandboxError> {
        logs::pipes(&self.dir, cap_kb)
    }

    /// Records `pid` as the sandbox's process.
    pub(crate) fn record_pid(&self, pid: u32) -> Result<(), SandboxError> {
        let path = self.dir.join(PID_FILE);
        fs::write(&path, pid_record(pid)).map_err(io_err("cannot write", &path))
    }
}

/// Kills every sandbox process recorded under `scratch_root` (checking each
/// pid's start time, so a recycled pid is never hit) and removes the scratch
/// dirs. Returns how many sandboxes were found. Works without a running
/// worker: it is `ol worker force-cleanup`'s part for every backend.
pub(crate) fn cleanup_scratch(scratch_root: &Path) -> Result<usize, SandboxError> {
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
    let mut killed = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        if let Some((pid, started)) = read_pid_record(&dir.join(PID_FILE)) {
            found += 1;
            if process_start_time(pid) == Some(started) {
                // The recorded process leads its own process group: kill it
                // all.
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                killed.push(pid);
            }
        }
        fs::remove_dir_all(&dir).map_err(|source| SandboxError::Io {
            what: "cannot remove",
            path: dir.clone(),
            source,
        })?;
    }
    // SIGKILL takes a moment: once this returns, none of them runs (so
    // `ol worker force-cleanup` and `ol cluster kill` leave no process).
    let deadline = Instant::now() + GROUP_EXIT_TIMEOUT;
    while killed.iter().any(|&pgid| group_runs(pgid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(found)
}
