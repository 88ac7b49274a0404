//! A sandbox's scratch dir on the host, `<scratch_root>/<id>/`: its logs
//! (`stdout`, `stderr`, see [`crate::logs`]) and a `pid` file naming its
//! outermost process for good ([`crate::pids`]), so that a later worker
//! finds and kills what a crashed one left ([`cleanup_scratch`]) without
//! hitting a recycled pid. Nothing in it is visible to a `sock` sandbox,
//! which writes only to its log pipes and its tmpfs scratch. The dir goes
//! with its sandbox.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, killpg};
use nix::sys::stat::Mode;
use nix::unistd::Pid;

use crate::logs::{self, LogPipes};
use crate::pids::{group_runs, pid_record, process_start_time, read_pid_record};
use crate::{SandboxError, io_err};

/// How long [`cleanup_scratch`] waits for the sandboxes it killed to go.
const GROUP_EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The pid file in a scratch dir.
pub(crate) const PID_FILE: &str = "pid";

/// A sandbox's scratch dir, shared by the sandbox and the drains of its
/// log pipes. A dir made with [`Scratch::later`] is made on first use (a
/// stream's first bytes), so a sandbox that prints nothing costs no inode:
/// on this project's ext4, after a burst of deletions, `mkdir` took
/// 0.1–0.3 ms (docs/benchmarks.md). Once removed it is never made again,
/// even by output that arrives after its sandbox is gone.
#[derive(Debug, Clone)]
pub(crate) struct Scratch(Arc<Mutex<State>>);

#[derive(Debug)]
struct State {
    path: PathBuf,
    /// It exists on disk.
    made: bool,
    /// Its descriptor, once opened (files are made relative to it, so a
    /// renamed dir keeps its streams).
    fd: Option<Arc<OwnedFd>>,
    removed: bool,
}

impl Scratch {
    /// Makes the scratch dir of sandbox `id` under `root` now (its pid
    /// file needs it).
    pub(crate) fn create(root: &Path, id: &str) -> Result<Self, SandboxError> {
        let dir = root.join(id);
        fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
        Ok(Self::with(dir, true))
    }

    /// The scratch dir of sandbox `id` under `root`, made on first use.
    pub(crate) fn later(root: &Path, id: &str) -> Self {
        Self::with(root.join(id), false)
    }

    fn with(path: PathBuf, made: bool) -> Self {
        Self(Arc::new(Mutex::new(State {
            path,
            made,
            fd: None,
            removed: false,
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where it is (or will be).
    pub(crate) fn path(&self) -> PathBuf {
        self.state().path.clone()
    }

    /// A descriptor of the dir, made now if it does not exist yet; an
    /// error once it was removed.
    pub(crate) fn open(&self) -> io::Result<Arc<OwnedFd>> {
        let mut state = self.state();
        if state.removed {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "scratch dir removed",
            ));
        }
        if let Some(fd) = &state.fd {
            return Ok(Arc::clone(fd));
        }
        if !state.made {
            match fs::create_dir(&state.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            state.made = true;
        }
        let fd = nix::fcntl::open(
            &state.path,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let fd = Arc::new(fd);
        state.fd = Some(Arc::clone(&fd));
        Ok(fd)
    }

    /// Moves it to `to` (on disk only if it was made already).
    pub(crate) fn rename(&self, to: PathBuf) -> io::Result<()> {
        let mut state = self.state();
        if state.made {
            fs::rename(&state.path, &to)?;
        }
        state.path = to;
        Ok(())
    }

    /// Removes it with everything in it, for good.
    pub(crate) fn remove(&self) {
        let mut state = self.state();
        state.removed = true;
        state.fd = None;
        if state.made {
            let _ = fs::remove_dir_all(&state.path);
        }
    }

    /// Log pipes drained into it, at most `cap_kb` KiB per stream.
    pub(crate) fn log_pipes(&self, cap_kb: u64) -> Result<LogPipes, SandboxError> {
        logs::pipes(self, cap_kb)
    }

    /// Records `pid` as the sandbox's process (in a dir made by
    /// [`Scratch::create`]).
    pub(crate) fn record_pid(&self, pid: u32) -> Result<(), SandboxError> {
        let path = self.path().join(PID_FILE);
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
