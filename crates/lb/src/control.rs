//! `ol lb up -d`, `ol lb down` and `ol lb status`: the balancer of a
//! state dir, found by the state file its supervisor writes once it
//! serves ([`LbState`], `DIR/lb.json`) and the engine's pid file
//! (`DIR/haproxy.pid`, written as soon as the engine starts, so `down`
//! finds the engine even when the supervisor was killed).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ol_worker::access::AdminKey;
use ol_worker::{StopOutcome, client, launch, stop_process};

use crate::haproxy;
use crate::policy::Policy;
use crate::runtime_api::{RuntimeApi, ServerState};
use crate::{LbError, Server};

/// How long a detached balancer may take to serve.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the supervisor may take to stop (the engine finishes the
/// calls in flight for up to its `hard-stop-after`, 5 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `status` waits for a worker's `/stats`.
const STATS_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the workers come from, as given to `ol lb up` (kept in the
/// state file so `status` reports the same).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceSpec {
    /// `--workers URL,...`.
    Workers(Vec<String>),
    /// `--cluster DIR`.
    Cluster(PathBuf),
}

/// What a running balancer wrote about itself (`DIR/lb.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LbState {
    /// The supervisor's pid (`ol lb up`).
    pub pid: u32,
    /// The engine's pid.
    pub engine_pid: u32,
    /// The address it listens on.
    pub host: String,
    /// The port it listens on.
    pub port: u16,
    /// Its policy.
    pub policy: Policy,
    /// Where its workers come from.
    pub source: SourceSpec,
}

impl LbState {
    /// The state file of the balancer of `dir`.
    pub fn file(dir: &Path) -> PathBuf {
        dir.join("lb.json")
    }

    /// The state `dir` holds, if any.
    pub fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(Self::file(dir)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes it (atomically: `status` may read it at any time).
    pub fn write(&self, dir: &Path) -> Result<(), LbError> {
        let file = Self::file(dir);
        let tmp = dir.join("lb.json.tmp");
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| LbError::Usage(format!("cannot write the balancer's state: {e}")))?;
        std::fs::write(&tmp, text).map_err(LbError::io("cannot write", &tmp))?;
        std::fs::rename(&tmp, &file).map_err(LbError::io("cannot write", &file))
    }

    /// Its URL from this machine.
    pub fn url(&self) -> String {
        let host = match self.host.as_str() {
            "0.0.0.0" | "" => "127.0.0.1".to_string(),
            "::" => "[::1]".to_string(),
            h if h.contains(':') => format!("[{h}]"),
            h => h.to_string(),
        };
        format!("http://{host}:{}", self.port)
    }
}

/// The engine's pid file in `dir`.
pub fn engine_pid_file(dir: &Path) -> PathBuf {
    dir.join("haproxy.pid")
}

/// Whether `pid` is alive and its command line holds each of `marks`
/// (so a pid reused by another process is never taken for ours).
fn alive_with(pid: u32, marks: &[&str]) -> bool {
    if ol_sandbox::pids::process_start_time(pid).is_none() {
        return false;
    }
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
    marks.iter().all(|m| cmdline.contains(m))
}

/// The balancer running in `dir`: its state, when its supervisor lives.
pub fn running(dir: &Path) -> Option<LbState> {
    LbState::read(dir).filter(|s| alive_with(s.pid, &[" lb ", "up"]))
}

/// The engine pid `dir` names, when that engine still runs (on this
/// dir's config).
pub fn running_engine(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(engine_pid_file(dir))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let config = dir.join("haproxy.cfg");
    alive_with(pid, &[&config.to_string_lossy()]).then_some(pid)
}

/// `ol lb up -d`: starts `ol ARGS...` (an `ol lb up` in the foreground
/// for `dir`) in the background, its output appended to `log`, and waits
/// until it serves. When it does not, nothing of it is left running.
pub fn start_detached(dir: &Path, log: &Path, args: &[OsString]) -> Result<LbState, LbError> {
    if let Some(s) = running(dir) {
        return Err(LbError::AlreadyRunning {
            dir: dir.to_path_buf(),
            pid: s.pid,
            port: s.port,
        });
    }
    std::fs::create_dir_all(dir).map_err(LbError::io("cannot create", dir))?;
    let starting = launch::spawn_detached_with("the balancer", args, &[], log)?;
    let pid = starting.pid();
    match starting.wait_until(START_TIMEOUT, || {
        LbState::read(dir).filter(|s| s.pid == pid)
    }) {
        Ok(state) => Ok(state),
        Err(e) => {
            // A supervisor killed while starting leaves its engine.
            if let Some(engine) = running_engine(dir) {
                let _ = stop_process(engine, Duration::from_secs(5));
            }
            Err(e.into())
        }
    }
}

/// `ol lb down`: stops the balancer of `dir` (the supervisor, which
/// stops its engine; the engine itself if the supervisor is gone) and
/// removes its state. A line saying what was done.
pub fn stop(dir: &Path) -> Result<String, LbError> {
    let mut said = match running(dir) {
        None => format!("no balancer runs in {}", dir.display()),
        Some(s) => match stop_process(s.pid, STOP_TIMEOUT)? {
            StopOutcome::NotRunning => format!("no balancer runs in {}", dir.display()),
            StopOutcome::Stopped { pid } => format!("balancer stopped (pid {pid})"),
            StopOutcome::Killed { pid } => {
                format!("balancer killed (pid {pid}) after not stopping within {STOP_TIMEOUT:?}")
            }
        },
    };
    if let Some(engine) = running_engine(dir) {
        stop_process(engine, Duration::from_secs(5))?;
        let _ = write!(
            said,
            "; its engine was left running and is stopped (pid {engine})"
        );
    }
    remove_state(dir)?;
    Ok(said)
}

/// Removes the files that say a balancer runs in `dir`.
pub fn remove_state(dir: &Path) -> Result<(), LbError> {
    for file in [
        LbState::file(dir),
        engine_pid_file(dir),
        haproxy::admin_socket(dir),
    ] {
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(LbError::io("cannot remove", &file)(e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// One worker in `status`: the engine's view and the worker's own.
#[derive(Debug, Clone)]
pub struct WorkerReport {
    /// The engine's view: health and load.
    pub engine: ServerState,
    /// The lambdas it has sandboxes of (warm), sorted, or why unknown.
    pub lambdas: Result<Vec<String>, String>,
    /// Its sandboxes: (busy, idle, paused).
    pub sandboxes: Option<(usize, usize, usize)>,
}

/// `ol lb status`: the balancer of `dir` and each of its workers' health,
/// load and the lambdas it holds (from the worker's `/stats`, with `key`
/// when its admin routes need one).
pub fn status(dir: &Path, key: Option<&AdminKey>) -> Result<(LbState, Vec<WorkerReport>), LbError> {
    let state = running(dir).ok_or_else(|| LbError::NotRunning(dir.to_path_buf()))?;
    let servers = RuntimeApi::new(&haproxy::admin_socket(dir)).servers()?;
    let reports = servers
        .into_iter()
        .map(|engine| {
            let url = engine
                .addr
                .parse()
                .map(|a| Server(a).url())
                .unwrap_or_else(|_| format!("http://{}", engine.addr));
            let stats = client::stats_with_key(&url, key, STATS_TIMEOUT);
            let (lambdas, sandboxes) = match stats {
                Ok(s) => {
                    let layer = s.lambda_layer;
                    let mut names: Vec<String> =
                        layer.sandboxes.iter().map(|sb| sb.lambda.clone()).collect();
                    names.sort();
                    names.dedup();
                    let by = layer.sandboxes_by_state;
                    (Ok(names), Some((by.busy, by.idle, by.paused)))
                }
                Err(e) => (Err(e.to_string()), None),
            };
            WorkerReport {
                engine,
                lambdas,
                sandboxes,
            }
        })
        .collect();
    Ok((state, reports))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyKind;

    #[test]
    fn state_round_trips_and_names_a_reachable_url() -> Result<(), LbError> {
        let tmp = tempfile::tempdir().map_err(LbError::io("tempdir", Path::new("/tmp")))?;
        let state = LbState {
            pid: 1,
            engine_pid: 2,
            host: "0.0.0.0".into(),
            port: 8080,
            policy: Policy::new(PolicyKind::Name, 0.25, None)?,
            source: SourceSpec::Cluster("/c".into()),
        };
        state.write(tmp.path())?;
        let back = LbState::read(tmp.path()).expect("state");
        assert_eq!(back.source, state.source);
        assert_eq!(back.policy, state.policy);
        assert_eq!(back.url(), "http://127.0.0.1:8080");
        // pid 1 is not an `ol lb up`: nothing runs there.
        assert!(running(tmp.path()).is_none());
        remove_state(tmp.path())?;
        assert!(LbState::read(tmp.path()).is_none());
        Ok(())
    }
}
