//! What every route shares: the lambda layer, the local registry, request
//! limits, who may use the admin routes, and the counters and metrics the
//! HTTP layer keeps.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ol_lambda::LambdaManager;
use ol_registry::{DirRegistry, Monitored};
use ol_triggers::TriggerManager;

use crate::access::AdminGates;
use crate::metrics::{self, WorkerMetrics};
use crate::stats::{RegistryStats, WorkerStats};

/// Counters the HTTP layer keeps.
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// Requests to `/run` and `/runLambda`.
    pub invocations: AtomicU64,
    /// Invocations answered with an error, by class.
    pub errors_4xx: AtomicU64,
    /// Invocations answered with a 5xx error.
    pub errors_5xx: AtomicU64,
}

/// What every request handler shares.
pub struct AppState {
    /// The lambda layer.
    pub lambdas: Arc<LambdaManager>,
    /// The queue triggers' consumers (told when a lambda is installed or
    /// removed; `/stats`, `/metrics`).
    pub triggers: Arc<TriggerManager<LambdaManager>>,
    /// The local registry, for the registry API (`None` when the registry
    /// is remote).
    pub registry: Option<Arc<DirRegistry>>,
    /// The registry the lambda layer reads (local or remote), with the
    /// health of its requests (`/stats`).
    pub registry_health: Arc<Monitored>,
    /// Where uploads are unpacked and checked before they are installed.
    pub upload_dir: PathBuf,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// A request body that stops arriving for this long fails with 408
    /// (`http.idle_timeout_ms`).
    pub body_stall: Duration,
    /// Counters.
    pub counters: HttpCounters,
    /// Latency and per-lambda metrics (`/metrics`, part of `/stats`).
    pub metrics: WorkerMetrics,
    /// Who may use the admin routes (config.json `admin`).
    pub admin: AdminGates,
    /// Whether error bodies carry the lambda's traceback (config.json
    /// `tracebacks`).
    pub tracebacks: crate::config::Tracebacks,
    /// The limits lambdas get (config.json `limits`): an upload whose
    /// ol.yaml asks for more is refused.
    pub lambda_limits: ol_sandbox::Limits,
    /// Each lambda's output and failed calls (`GET /logs/NAME`).
    pub lambda_logs: Option<Arc<ol_sandbox::lambda_logs::LambdaLogs>>,
}

impl AppState {
    /// What `GET /stats` reports, as of now.
    pub fn stats(&self) -> WorkerStats {
        let c = &self.counters;
        WorkerStats {
            invocations: c.invocations.load(Ordering::Relaxed),
            errors_4xx: c.errors_4xx.load(Ordering::Relaxed),
            errors_5xx: c.errors_5xx.load(Ordering::Relaxed),
            errors_by_status: self.metrics.errors_by_status(),
            lambda_layer: self.lambdas.stats(),
            triggers: self.triggers.stats(),
            registry: Some(RegistryStats::from(self.registry_health.health())),
            recorded: metrics::recorded_stats(),
        }
    }
}

/// A worker state for unit tests: a process-backend lambda layer whose
/// runtime does not exist (nothing can start) over an empty registry in
/// `dir`.
#[cfg(test)]
pub(crate) fn idle_state(dir: &std::path::Path) -> AppState {
    std::fs::create_dir_all(dir.join("registry")).expect("registry dir");
    let lambdas = idle_lambda_layer(dir);
    let registry = Arc::new(DirRegistry::new(dir.join("registry")));
    let triggers = TriggerManager::new(
        Arc::clone(&lambdas),
        Arc::clone(&registry) as Arc<dyn ol_registry::Registry>,
        ol_triggers::TriggerSettings::default(),
    );
    AppState {
        metrics: WorkerMetrics::new(Arc::clone(&lambdas), Arc::clone(&triggers)),
        triggers,
        lambdas,
        registry_health: Arc::new(Monitored::new(
            Arc::clone(&registry) as Arc<dyn ol_registry::Registry>
        )),
        registry: Some(registry),
        upload_dir: dir.join("uploads"),
        max_body_bytes: 1024,
        body_stall: Duration::from_secs(10),
        counters: HttpCounters::default(),
        admin: AdminGates::open(),
        tracebacks: crate::config::Tracebacks::Client,
        lambda_logs: None,
        lambda_limits: ol_sandbox::Limits::default(),
    }
}

/// The lambda layer of [`idle_state`].
#[cfg(test)]
pub(crate) fn idle_lambda_layer(dir: &std::path::Path) -> Arc<LambdaManager> {
    use ol_sandbox::process::{ProcessPool, RuntimeCommand};
    let pool = ProcessPool::new(
        RuntimeCommand {
            python: "/nonexistent/python".into(),
            script: "/nonexistent/ol_runtime.py".into(),
            packages: dir.join("packages"),
        },
        dir.join("scratch"),
    )
    .expect("process pool");
    LambdaManager::new(
        Arc::new(pool),
        Arc::new(DirRegistry::new(dir.join("registry"))),
        ol_lambda::LambdaSettings::default(),
        ol_lambda::PackageLayer::default(),
    )
}
