//! Starting a worker process, one way for every command that starts one:
//! [`serve_here`] runs a worker in this process (`ol worker up`, `ol
//! cluster worker-exec`): its log, its trace file, its own session when
//! it was started in the background; [`spawn_detached`] starts such a
//! process in the background (`ol worker up -d`, `ol cluster workers`)
//! and [`Starting::wait_ready`] waits until it serves, or says why not
//! with the end of its log.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::Config;
use crate::trace_file::{TraceWriter, chrome_trace};
use crate::workdir::WorkerDir;
use crate::{WorkerError, client, lifecycle};

/// Set in the environment of a process [`spawn_detached`] starts.
const DETACHED_ENV: &str = "OL_DETACHED";
/// Lines of a worker's log an error about its start quotes.
const LOG_TAIL_LINES: usize = 20;

/// Where a worker run by [`serve_here`] logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTo {
    /// Standard error (`ol worker up`).
    Stderr,
    /// Standard output (`ol cluster worker-exec`, as OpenLambda's
    /// `admin worker-exec`).
    Stdout,
}

/// Runs the worker of `dir` with `config` in this process until SIGTERM
/// or SIGINT, logging to `log_to` (filtered by `OL_LOG`) and to its trace
/// file if the config names one, finished when the worker stops. A
/// process [`spawn_detached`] started leaves the terminal's session first,
/// so its hangup never reaches the worker.
pub fn serve_here(dir: &WorkerDir, config: &Config, log_to: LogTo) -> Result<(), WorkerError> {
    let detached = leave_session_if_detached();
    let ansi = !detached
        && match log_to {
            LogTo::Stderr => std::io::stderr().is_terminal(),
            LogTo::Stdout => std::io::stdout().is_terminal(),
        };
    let trace = init_logging(log_to, ansi, config.trace_file(dir.root()).as_deref())?;
    let served = lifecycle::run_worker(dir, config);
    // The worker has stopped: every call's spans are closed.
    if let Some(trace) = trace {
        trace.finish()?;
        tracing::info!(file = %trace.path().display(), "trace written");
    }
    served
}

/// Whether this process was started by [`spawn_detached`]; if so, it
/// leaves the session it was started in, so a hangup of the terminal that
/// started it never reaches it.
pub fn leave_session_if_detached() -> bool {
    let detached = std::env::var_os(DETACHED_ENV).is_some();
    if detached {
        let _ = nix::unistd::setsid();
    }
    detached
}

/// Logs to `log_to`, filtered by `OL_LOG`; with `trace_file`, also writes
/// the phase spans there (whatever `OL_LOG` says).
fn init_logging(
    log_to: LogTo,
    ansi: bool,
    trace_file: Option<&Path>,
) -> Result<Option<TraceWriter>, WorkerError> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = tracing_subscriber::fmt::layer().with_ansi(ansi);
    let log = match log_to {
        LogTo::Stderr => log.with_writer(std::io::stderr).boxed(),
        LogTo::Stdout => log.with_writer(std::io::stdout).boxed(),
    };
    let (trace_layer, writer) = match trace_file {
        Some(path) => {
            let (layer, writer) = chrome_trace(path)?;
            (Some(layer), Some(writer))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .with(trace_layer)
        .try_init();
    Ok(writer)
}

/// Starts `ol args...` (this very binary) in the background: its own
/// session, no input, its output appended to `log`. The process is meant
/// to end in [`serve_here`].
pub fn spawn_detached(args: &[OsString], log: &Path) -> Result<Starting, WorkerError> {
    spawn_detached_with("the worker", args, &[], log)
}

/// [`spawn_detached`] for any long-running `ol` command (`what` names it
/// in errors: "the registry"), with `envs` added to its environment (keys
/// that must not show in its command line).
pub fn spawn_detached_with(
    what: &'static str,
    args: &[OsString],
    envs: &[(&str, &str)],
    log: &Path,
) -> Result<Starting, WorkerError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| WorkerError::Io { what, path, source }
    };
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
    }
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io("cannot open", log))?;
    let log_start = out.metadata().map_or(0, |m| m.len());
    let err = out.try_clone().map_err(io("cannot share", log))?;
    let exe = std::env::current_exe().map_err(io("cannot find the ol binary for", log))?;
    let child = Command::new(&exe)
        .args(args)
        .envs(envs.iter().copied())
        .env(DETACHED_ENV, "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(io("cannot start", &exe))?;
    Ok(Starting {
        what,
        child,
        log: log.to_path_buf(),
        log_start,
    })
}

/// A worker process started by [`spawn_detached`], not known to serve yet.
#[derive(Debug)]
pub struct Starting {
    what: &'static str,
    child: Child,
    log: PathBuf,
    log_start: u64,
}

impl Starting {
    /// Its pid (the worker's: the process runs the worker itself).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the worker of `dir` (this process) answers `/status`
    /// with `ready` at the address `config` binds, and returns its port.
    /// Fails, quoting what its log says since it started, when it exits
    /// first or is not ready within `timeout` (it is killed then).
    pub fn wait_ready(
        self,
        dir: &WorkerDir,
        config: &Config,
        timeout: Duration,
    ) -> Result<u16, WorkerError> {
        self.wait_until(timeout, || {
            let port = dir.running().and_then(|r| r.port)?;
            let url = format!("{}/status", config.local_url(port));
            client::get(&url, Duration::from_secs(2))
                .is_ok_and(|a| a.status == 200 && a.body == "ready")
                .then_some(port)
        })
    }

    /// Waits until `ready` (asked every few milliseconds) gives a value,
    /// while the process runs. Fails, quoting what its log says since it
    /// started, when it exits first or `ready` gives nothing within
    /// `timeout` (it is killed then).
    pub fn wait_until<T>(
        mut self,
        timeout: Duration,
        mut ready: impl FnMut() -> Option<T>,
    ) -> Result<T, WorkerError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    return Err(self.failed(format!("exited ({status}) before it was ready")));
                }
                Ok(None) => {}
                Err(e) => return Err(self.failed(format!("cannot be waited for: {e}"))),
            }
            if let Some(value) = ready() {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(self.failed(format!("was not ready within {timeout:?} (killed)")));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn failed(&self, why: String) -> WorkerError {
        WorkerError::NotStarted {
            what: self.what,
            why,
            log: self.log.clone(),
            tail: log_tail(&self.log, self.log_start),
        }
    }
}

/// The last [`LOG_TAIL_LINES`] lines `log` got since it was `start`
/// bytes long.
fn log_tail(log: &Path, start: u64) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let since = usize::try_from(start)
        .ok()
        .and_then(|s| text.get(s..))
        .unwrap_or(&text);
    let since = String::from_utf8_lossy(since);
    let lines: Vec<&str> = since.trim_end().lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_what_the_log_got_since_the_start_at_most_its_last_lines() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let log = tmp.path().join("w.log");
        std::fs::write(&log, "old run\n").expect("write");
        let start = 8;
        let new: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, format!("old run\n{new}")).expect("write");
        let tail = log_tail(&log, start);
        assert!(!tail.contains("old run"), "{tail}");
        assert!(
            tail.starts_with("line 11\n") && tail.ends_with("line 30"),
            "{tail}"
        );
        assert_eq!(log_tail(&tmp.path().join("missing"), 0), "");
    }
}
