//! A worker's life: [`run_worker`] (start, serve until SIGTERM/SIGINT,
//! shut down cleanly), [`stop_worker`] (`ol worker down`) and
//! [`force_cleanup`] (after a crash).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ol_base::{Python, build_base};
use ol_lambda::import_cache::ImportCacheMode;
use ol_lambda::packages::{PackagePuller, PackageSettings};
use ol_lambda::{LambdaManager, LambdaSettings, PackageLayer};
use ol_registry::{DirRegistry, HttpRegistry, Monitored, Registry, S3Registry, cache_dir_for};
use ol_sandbox::pids::process_start_time;
use ol_sandbox::{Features, Limits, Paths, SandboxPool, Settings};
use ol_triggers::{TriggerManager, TriggerSettings};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::WorkerError;
use crate::access::{AdminGates, is_loopback_ip};
use crate::config::{Config, ImportCache, presize_fd_table, raise_fd_limit};
use crate::conn::ConnLimits;
use crate::metrics::WorkerMetrics;
use crate::server;
use crate::state::{AppState, HttpCounters};
use crate::workdir::WorkerDir;

/// How long open requests may run on after a stop is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs the worker of `dir` with `config` (read from `dir`'s config file,
/// overrides applied) in this process until SIGTERM or SIGINT. Blocks.
pub fn run_worker(dir: &WorkerDir, config: &Config) -> Result<(), WorkerError> {
    ol_obs::phase::set_log_latency(config.trace.latency);
    check_startable(dir, config)?;
    // A config may name a state dir nobody made yet (`ol cluster worker-exec`).
    std::fs::create_dir_all(dir.state()).map_err(|source| WorkerError::Io {
        what: "cannot create",
        path: dir.state(),
        source,
    })?;
    // Before the pool exists: it starts sandboxes (a zygote) of its own.
    let leftovers = cleanup_dir(dir)?;
    if leftovers > 0 {
        tracing::warn!(
            leftovers,
            "cleaned up sandboxes an earlier worker left behind"
        );
    }
    // Before anything holds descriptors: http.max_connections was checked
    // against the raised limit.
    let fds = raise_fd_limit();
    // Before any thread exists (no tokio runtime, no pool yet): growing
    // the table later would stall the worker's threads (see the function).
    let presized = presize_fd_table(fds);
    tracing::debug!(fds, ?presized, "descriptor limit; descriptor table grown");
    let python = ol_base::python::resolve_cached(
        config.base,
        &dir.base(),
        &config.python,
        &dir.python_probe(),
    )?;
    let pool = open_pool(dir, config, &python)?;
    let packages = package_layer(dir, config, &python, &pool)?;
    let threads = std::env::var("OL_WORKER_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| thread::available_parallelism().map_or(2, |n| n.get()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|source| WorkerError::Io {
            what: "cannot start the async runtime for",
            path: dir.root().to_path_buf(),
            source,
        })?;
    let result = rt.block_on(serve_until_signal(dir, config, Arc::clone(&pool), packages));
    drop(rt);
    drop(pool);
    // Backstop: anything still alive after the graceful shutdown goes now,
    // and the worker's parent cgroup with it.
    if let Err(e) = cleanup_dir(dir) {
        tracing::warn!("final cleanup failed: {e}");
    }
    result
}

/// Fails unless a worker can start in `dir` with `config`: none runs
/// there yet, its base is of the kind the config says and its admin key
/// (if any) can be read. Checked again
/// by [`run_worker`]; callers that start one in the background check
/// first, so the error shows where the user is, not in a log file.
pub fn check_startable(dir: &WorkerDir, config: &Config) -> Result<(), WorkerError> {
    if let Some(running) = dir.running() {
        return Err(WorkerError::Usage(format!(
            "a worker already runs in {} (pid {}); stop it first (`ol worker down -p {}`, or `ol cluster kill` for a cluster's worker)",
            dir.state().display(),
            running.pid,
            dir.root().display()
        )));
    }
    dir.check_base(config)?;
    config.admin.load_key(&dir.config_file())?;
    Ok(())
}

/// The sandbox backend `config` asks for, over the base (built first when
/// the backend runs on one).
fn open_pool(
    dir: &WorkerDir,
    config: &Config,
    python: &Python,
) -> Result<Arc<dyn SandboxPool>, WorkerError> {
    if config.sandbox.uses_base() {
        build_base(&dir.base(), config.base, &python.prefix).map_err(|source| WorkerError::Io {
            what: "cannot build the base root file system in",
            path: dir.base(),
            source,
        })?;
    }
    let settings = Settings {
        paths: sandbox_paths(dir),
        base_kind: config.base,
        python: python.executable.clone(),
        python_prefix: python.prefix.clone(),
        features: Features {
            seccomp: config.features.enable_seccomp,
            zygotes: config.features.import_cache != ImportCache::Off,
            downsize_paused_mem: config.features.downsize_paused_mem,
            reuse_cgroups: config.features.reuse_cgroups,
        },
        limits: config.limits.clone(),
        blanks: config.scaling.blanks,
    };
    if !config.sandbox.uses_base() {
        tracing::warn!(
            sandbox = config.sandbox.name(),
            "lambdas run as plain processes: no isolation, and limits.mem_mb, procs, \
             cpu_percent and disk_mb are not enforced (sandbox \"sock\", as root, enforces them)"
        );
    }
    Ok(config.sandbox.open(&settings)?)
}

/// Where the sandboxes of the worker in `dir` find what they are made from
/// and leave what they make.
fn sandbox_paths(dir: &WorkerDir) -> Paths {
    Paths {
        // The one dir no two workers share (several may share the rest).
        worker_dir: dir.state(),
        base: dir.base(),
        packages: dir.packages(),
        runtime: dir.runtime(),
        scratch: dir.scratch(),
    }
}

/// The package puller and import cache `config` asks for.
fn package_layer(
    dir: &WorkerDir,
    config: &Config,
    python: &Python,
    pool: &Arc<dyn SandboxPool>,
) -> Result<PackageLayer, WorkerError> {
    let mode = match config.features.import_cache {
        ImportCache::Off => None,
        ImportCache::Tree => Some(ImportCacheMode::Tree),
        ImportCache::MultiTree => Some(ImportCacheMode::MultiTree),
    };
    let import_cache = mode
        .map(|mode| {
            ol_lambda::import_cache::ImportCache::from_config(&config.import_cache_tree, mode)
        })
        .transpose()
        .map_err(|e| WorkerError::Usage(e.to_string()))?;
    let cache_dir = dir.cache();
    let puller = PackagePuller::new(
        Arc::clone(pool),
        PackageSettings {
            packages_dir: dir.packages(),
            cache_dir: cache_dir.clone(),
            shared_cache: !config.package_cache_dir.is_empty(),
            tools_dir: tools_dir(config, &cache_dir),
            python: python.executable.clone(),
            python_version: python.version,
            python_prefix: python.prefix.clone(),
            // Where the installer sandbox's system (and so uv or pip) is.
            system_root: if config.base.is_self_contained() {
                dir.base()
            } else {
                PathBuf::from("/")
            },
            index_url: (!config.pip_index_url.is_empty()).then(|| config.pip_index_url.clone()),
            limits: installer_sandbox_limits(config),
            source_builds: config.features.source_builds,
        },
    );
    Ok(PackageLayer {
        puller: Some(Arc::new(puller)),
        import_cache,
    })
}

/// Where the package puller installs uv when the host has none: beside a
/// shared package cache (`package_cache_dir` set), so that the workers
/// sharing it share uv; else, for a worker run as root, in the machine's
/// cache (`$XDG_CACHE_HOME/ol`, else `/var/cache/ol`, where debootstrap
/// bases are kept too), so that a new worker dir does not fetch it again
/// (about 1 s of its first install); else in its own package cache.
fn tools_dir(config: &Config, cache_dir: &Path) -> PathBuf {
    if config.package_cache_dir.is_empty() && nix::unistd::geteuid().is_root() {
        ol_base::debootstrap::default_cache_dir().join("tools")
    } else {
        cache_dir.join("tools")
    }
}

/// The limits of the package installer's sandbox: `installer_limits`, the
/// lambdas' limits for the rest.
fn installer_sandbox_limits(config: &Config) -> Limits {
    Limits {
        mem_mb: config.installer_limits.mem_mb,
        runtime_sec: config.installer_limits.runtime_sec,
        // Builds of source distributions run compilers in parallel.
        procs: 256,
        // pip and uv unpack wheels in /tmp (pip installing uv itself, a
        // numpy wheel): a lambda's /tmp is far too small. Its pages count
        // against mem_mb, which bounds it anyway.
        disk_mb: config.installer_limits.mem_mb,
        ..config.limits.clone()
    }
}

async fn serve_until_signal(
    dir: &WorkerDir,
    config: &Config,
    pool: Arc<dyn SandboxPool>,
    packages: PackageLayer,
) -> Result<(), WorkerError> {
    let key = config.admin.load_key(&dir.config_file())?;
    let addr = format!("{}:{}", config.worker_host, config.worker_port);
    // A (host, port) pair: an IPv6 literal needs no brackets there.
    let listener = TcpListener::bind((config.bind_host(), config.worker_port))
        .await
        .map_err(|source| WorkerError::Bind {
            hint: if source.kind() == std::io::ErrorKind::AddrInUse {
                "; the port is taken: stop what uses it or pick another with -o worker_port=N"
            } else {
                ""
            },
            addr: addr.clone(),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| WorkerError::Bind {
        addr: addr.clone(),
        source,
        hint: "",
    })?;
    let port = bound.port();
    let Opened { code, local } = open_registry(dir, config)?;
    let registry = Arc::new(Monitored::new(code));
    tracing::info!(kind = registry.kind(), location = %registry.location(), "registry");
    let lambda_logs = Arc::new(ol_sandbox::lambda_logs::LambdaLogs::new(
        dir.lambda_logs(),
        config.limits.log_kb,
    ));
    let settings = LambdaSettings {
        limits: config.limits.clone(),
        lambda_logs: Some(Arc::clone(&lambda_logs)),
        pause_after_idle: (config.pause_after_idle_ms > 0)
            .then(|| Duration::from_millis(config.pause_after_idle_ms)),
        mem_pool_mb: config.mem_pool_mb,
        registry_cache: Duration::from_millis(config.registry_cache_ms),
        max_instances: config.scaling.max_instances,
        max_queue: config.scaling.max_queue,
        idle_timeout: (config.scaling.idle_timeout_ms > 0)
            .then(|| Duration::from_millis(config.scaling.idle_timeout_ms)),
        ..LambdaSettings::default()
    };
    // Decided again from the address bound: a name that passed the config
    // check as loopback (localhost) must really be bound there.
    let admin = AdminGates::new(
        &config.admin,
        key,
        &config.worker_host,
        is_loopback_ip(bound.ip()),
        local.is_some(),
    )?;
    let lambdas = LambdaManager::new(
        pool,
        Arc::clone(&registry) as Arc<dyn Registry>,
        settings,
        packages,
    );
    lambdas.start_background();
    let t = &config.triggers;
    let triggers = TriggerManager::new(
        Arc::clone(&lambdas),
        Arc::clone(&registry) as Arc<dyn Registry>,
        TriggerSettings {
            allowed_brokers: t.allowed_brokers.clone(),
            max_concurrency: t.max_concurrency,
            max_retries: t.max_retries,
            connect_timeout: Duration::from_millis(t.connect_timeout_ms),
            ack_wait: Duration::from_millis(t.ack_wait_ms),
            rescan: Duration::from_millis(config.registry_cache_ms.max(100)),
            worker_id: Some(dir.worker_id()?),
        },
    );
    triggers.start();
    let idle_timeout = Duration::from_millis(config.http.idle_timeout_ms);
    let state = Arc::new(AppState {
        lambdas: Arc::clone(&lambdas),
        registry: local,
        registry_health: registry,
        upload_dir: dir.state().join("uploads"),
        max_body_bytes: usize::try_from(config.limits.max_body_mb.saturating_mul(1 << 20))
            .unwrap_or(usize::MAX),
        body_stall: idle_timeout,
        counters: HttpCounters::default(),
        metrics: WorkerMetrics::new(Arc::clone(&lambdas), Arc::clone(&triggers)),
        triggers: Arc::clone(&triggers),
        admin,
        tracebacks: config.tracebacks,
        lambda_logs: Some(lambda_logs),
        lambda_limits: config.limits.clone(),
    });
    let mut term = signal(SignalKind::terminate()).map_err(signal_err(dir))?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_err(dir))?;
    dir.write_pid()?;
    dir.write_port(port)?;
    tracing::info!(port, config = %dir.config_file().display(), "worker ready");
    let stop = async {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    };
    let limits = ConnLimits {
        header_timeout: Duration::from_millis(config.http.header_timeout_ms),
        idle_timeout,
        max_connections: config.http.max_connections,
    };
    server::serve(listener, state, limits, stop, SHUTDOWN_GRACE).await;
    // Consumers first: their calls in flight finish and are acknowledged
    // while the lambda layer still runs them.
    let unsettled = triggers.shutdown(SHUTDOWN_GRACE).await;
    if unsettled > 0 {
        tracing::warn!(
            unsettled,
            "trigger consumers still busy after the grace period; their messages will be redelivered"
        );
    }
    let left = lambdas.shutdown(SHUTDOWN_GRACE).await;
    if left > 0 {
        tracing::warn!(
            left,
            "sandboxes still busy after the grace period; killing them"
        );
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// The registry a worker reads lambdas from.
struct Opened {
    code: Arc<dyn Registry>,
    /// The same registry when it is local: it then also gets the registry
    /// API (a remote one is read only here).
    local: Option<Arc<DirRegistry>>,
}

/// The registry `config` names. Remote ones unpack into
/// `DIR/worker/registry-cache/`, one dir per store.
fn open_registry(dir: &WorkerDir, config: &Config) -> Result<Opened, WorkerError> {
    let cache = dir.state().join("registry-cache");
    let remote = |code: Arc<dyn Registry>| Opened { code, local: None };
    if let Some(s3) = config.registry_s3_config()? {
        let s3 = S3Registry::new(&s3, cache_dir_for(&cache, &s3.location()))
            .map_err(|e| WorkerError::Usage(e.to_string()))?;
        return Ok(remote(Arc::new(s3)));
    }
    if config.registry_is_http() {
        let cache = cache_dir_for(&cache, &config.registry);
        return Ok(remote(Arc::new(HttpRegistry::new(&config.registry, cache))));
    }
    let local = Arc::new(DirRegistry::with_cache(
        config.registry_dir(dir.root()),
        cache,
    ));
    Ok(Opened {
        code: Arc::clone(&local) as Arc<dyn Registry>,
        local: Some(local),
    })
}

fn signal_err(dir: &WorkerDir) -> impl FnOnce(std::io::Error) -> WorkerError + '_ {
    move |source| WorkerError::Io {
        what: "cannot install signal handlers for",
        path: dir.root().to_path_buf(),
        source,
    }
}

/// What [`stop_worker`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// No worker ran in the directory.
    NotRunning,
    /// The worker stopped on SIGTERM.
    Stopped {
        /// Its pid.
        pid: u32,
    },
    /// The worker ignored SIGTERM for `timeout` and was killed.
    Killed {
        /// Its pid.
        pid: u32,
    },
}

/// `ol worker down`: asks the worker to stop (SIGTERM), waits for it (and
/// kills it after `timeout`), then removes anything it left behind.
pub fn stop_worker(dir: &WorkerDir, timeout: Duration) -> Result<StopOutcome, WorkerError> {
    let outcome = match dir.running() {
        None => StopOutcome::NotRunning,
        Some(running) => stop_process(running.pid, timeout)?,
    };
    cleanup_dir(dir)?;
    Ok(outcome)
}

/// Asks the process `pid` to stop (SIGTERM) and waits for it, killing it
/// after `timeout`.
pub fn stop_process(pid: u32, timeout: Duration) -> Result<StopOutcome, WorkerError> {
    let started = process_start_time(pid);
    if started.is_none() {
        return Ok(StopOutcome::NotRunning);
    }
    signal_pid(pid, Signal::SIGTERM)?;
    if wait_gone(pid, started, timeout) {
        return Ok(StopOutcome::Stopped { pid });
    }
    signal_pid(pid, Signal::SIGKILL)?;
    wait_gone(pid, started, Duration::from_secs(10));
    Ok(StopOutcome::Killed { pid })
}

/// `ol worker force-cleanup`: kills the worker if it still runs, then every
/// sandbox process it left, and removes its runtime state. Returns how many
/// leftover sandboxes were found.
pub fn force_cleanup(dir: &WorkerDir) -> Result<usize, WorkerError> {
    if let Some(running) = dir.running() {
        let started = process_start_time(running.pid);
        signal_pid(running.pid, Signal::SIGKILL)?;
        wait_gone(running.pid, started, Duration::from_secs(10));
    }
    cleanup_dir(dir)
}

/// Removes every process, cgroup and scratch dir a worker in `dir` made
/// (the worker itself must be gone).
fn cleanup_dir(dir: &WorkerDir) -> Result<usize, WorkerError> {
    let found = ol_sandbox::cleanup(&sandbox_paths(dir))?;
    dir.clear_running();
    Ok(found)
}

fn signal_pid(pid: u32, sig: Signal) -> Result<(), WorkerError> {
    match kill(Pid::from_raw(pid as i32), sig) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(e) => Err(WorkerError::Usage(format!(
            "cannot send {sig} to pid {pid}: {e}"
        ))),
    }
}

/// Waits until the process `pid` that started at `started` is gone.
fn wait_gone(pid: u32, started: Option<u64>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if started.is_none() || process_start_time(pid) != started {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installer_gets_a_tmp_as_large_as_its_memory_not_a_lambdas() {
        let mut config = Config::default();
        config.limits.disk_mb = 8;
        config.installer_limits.mem_mb = 300;
        let l = installer_sandbox_limits(&config);
        assert_eq!((l.mem_mb, l.disk_mb), (300, 300));
        assert_eq!(l.runtime_sec, config.installer_limits.runtime_sec);
        assert_eq!(l.log_kb, config.limits.log_kb);
    }
}
