//! `ol lb up` in the foreground: starts the engine on a config written
//! for the workers found now, restarts it if it dies (giving up when it
//! dies over and over), keeps its servers in step with the
//! [`WorkerSource`] every second through the runtime API, and on SIGTERM
//! or Ctrl-C lets it finish the calls in flight and stops it, leaving no
//! process behind.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

use crate::LbError;
use crate::control::{self, LbState, SourceSpec};
use crate::haproxy::{self, EngineSettings};
use crate::runtime_api::RuntimeApi;
use crate::workers::{Changes, Server, WorkerSource};

/// How often the workers are looked up again.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How often the engine is checked on.
const TICK: Duration = Duration::from_millis(100);
/// How long the engine may take to answer on its admin socket.
const ENGINE_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Restarts within [`RESTART_WINDOW`] after which the supervisor gives up.
const MAX_RESTARTS: usize = 5;
/// See [`MAX_RESTARTS`].
const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How long the engine may take to finish calls in flight when stopping
/// (its `hard-stop-after` is 5 s).
const ENGINE_STOP_TIMEOUT: Duration = Duration::from_secs(7);

/// Runs the balancer until SIGTERM or SIGINT.
pub fn run(
    settings: EngineSettings,
    source: Box<dyn WorkerSource>,
    spec: SourceSpec,
) -> Result<(), LbError> {
    ol_worker::launch::leave_session_if_detached();
    let dir = settings.dir.clone();
    std::fs::create_dir_all(&dir).map_err(LbError::io("cannot create", &dir))?;
    if let Some(s) = control::running(&dir) {
        return Err(LbError::AlreadyRunning {
            dir,
            pid: s.pid,
            port: s.port,
        });
    }
    // An engine a killed supervisor left would hold the port.
    if let Some(stale) = control::running_engine(&dir) {
        tracing::warn!(pid = stale, "stopping the engine an earlier balancer left");
        ol_worker::stop_process(stale, Duration::from_secs(5))?;
    }
    let binary = haproxy::find_binary()?;
    // Workers may come later (a Deployment's pods before the workers'
    // are ready): until then, /status and calls answer 503.
    let servers = match source.servers() {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "no worker found yet; waiting for them");
            BTreeSet::new()
        }
    };
    if servers.is_empty() {
        tracing::warn!(workers = %source.describe(), "no worker yet: calls get 503 until one appears");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(LbError::io(
            "cannot start the supervisor's runtime in",
            &dir,
        ))?;
    let result = runtime.block_on(supervise(
        &settings,
        &binary,
        source.as_ref(),
        spec,
        servers,
    ));
    control::remove_state(&dir)?;
    result
}

/// A running engine.
#[derive(Debug)]
pub struct Engine {
    child: Child,
    api: RuntimeApi,
}

impl Engine {
    /// Writes the error pages and the config for `servers`, checks it,
    /// starts the engine and waits until its admin socket answers.
    pub fn start(
        settings: &EngineSettings,
        binary: &Path,
        servers: &BTreeSet<Server>,
    ) -> Result<Self, LbError> {
        haproxy::write_error_pages(settings)?;
        let config = settings.config_file();
        let text = haproxy::render_config(settings, servers);
        std::fs::write(&config, text).map_err(LbError::io("cannot write", &config))?;
        haproxy::check_config(binary, &config)?;
        // A socket left by an engine that was killed would answer nothing.
        let _ = std::fs::remove_file(settings.admin_socket());
        let mut child = haproxy::spawn(binary, &config)?;
        let pid_file = control::engine_pid_file(&settings.dir);
        std::fs::write(&pid_file, format!("{}\n", child.id()))
            .map_err(LbError::io("cannot write", &pid_file))?;
        let api = RuntimeApi::new(&settings.admin_socket());
        let deadline = Instant::now() + ENGINE_READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(LbError::EngineNotStarted {
                    status: status.to_string(),
                    port: settings.port,
                });
            }
            if api.servers().is_ok() {
                return Ok(Self { child, api });
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LbError::Usage(format!(
                    "haproxy did not open its admin socket {} within {ENGINE_READY_TIMEOUT:?}",
                    settings.admin_socket().display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its runtime API.
    pub fn api(&self) -> &RuntimeApi {
        &self.api
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Soft stop (SIGUSR1): the listener closes, calls in flight finish;
    /// killed if it is still there after [`ENGINE_STOP_TIMEOUT`].
    pub fn stop(mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGUSR1);
        let deadline = Instant::now() + ENGINE_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Engine {
    /// An engine is never left running by an error or a panic of the
    /// process that started it (a test's, or the supervisor's).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn supervise(
    settings: &EngineSettings,
    binary: &Path,
    source: &dyn WorkerSource,
    spec: SourceSpec,
    mut servers: BTreeSet<Server>,
) -> Result<(), LbError> {
    let mut term = signal(SignalKind::terminate())
        .map_err(LbError::io("cannot catch SIGTERM in", &settings.dir))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(LbError::io("cannot catch SIGINT in", &settings.dir))?;
    let mut engine = Engine::start(settings, binary, &servers)?;
    let mut state = LbState {
        pid: std::process::id(),
        engine_pid: engine.child.id(),
        host: settings.host.clone(),
        port: settings.port,
        policy: settings.policy.clone(),
        source: spec,
    };
    state.write(&settings.dir)?;
    tracing::info!(
        url = %state.url(),
        policy = %settings.policy,
        workers = %source.describe(),
        servers = servers.len(),
        engine_pid = state.engine_pid,
        "balancer serving"
    );
    let mut restarts: VecDeque<Instant> = VecDeque::new();
    let mut last_sync = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {}
        }
        if let Ok(Some(status)) = engine.child.try_wait() {
            let now = Instant::now();
            restarts.push_back(now);
            while restarts
                .front()
                .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
            {
                restarts.pop_front();
            }
            if restarts.len() > MAX_RESTARTS {
                return Err(LbError::EngineDied {
                    status: status.to_string(),
                    restarts: restarts.len() - 1,
                });
            }
            tracing::warn!(%status, "haproxy exited; restarting it");
            if let Ok(found) = source.servers()
                && !found.is_empty()
            {
                servers = found;
            }
            engine = Engine::start(settings, binary, &servers)?;
            state.engine_pid = engine.child.id();
            state.write(&settings.dir)?;
            continue;
        }
        if last_sync.elapsed() >= SYNC_EVERY {
            last_sync = Instant::now();
            if let Err(e) = sync(&engine.api, source, &mut servers) {
                tracing::warn!(error = %e, "cannot bring the workers up to date");
            }
        }
    }
    tracing::info!("stopping: the calls in flight finish first");
    engine.stop();
    Ok(())
}

/// Adds the workers `source` has that the engine lacks and removes those
/// it no longer has; `servers` follows.
fn sync(
    api: &RuntimeApi,
    source: &dyn WorkerSource,
    servers: &mut BTreeSet<Server>,
) -> Result<(), LbError> {
    let want = source.servers()?;
    let have: BTreeSet<Server> = api
        .servers()?
        .iter()
        .filter_map(|s| s.addr.parse().ok().map(Server))
        .collect();
    let changes = Changes::between(&have, &want);
    for s in &changes.add {
        api.add_server(s)?;
        tracing::info!(worker = %s.name(), "worker added");
    }
    for s in &changes.remove {
        api.remove_server(s)?;
        tracing::info!(worker = %s.name(), "worker removed");
    }
    if !changes.is_empty() {
        *servers = want;
    }
    Ok(())
}

/// The state dir as an absolute path (the engine's config names files
/// in it, and `down` finds the engine by it).
pub fn absolute_dir(dir: &Path) -> Result<PathBuf, LbError> {
    std::fs::create_dir_all(dir).map_err(LbError::io("cannot create", dir))?;
    dir.canonicalize()
        .map_err(LbError::io("cannot resolve", dir))
}
