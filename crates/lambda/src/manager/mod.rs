//! [`LambdaManager`], the lambda layer's core: finds a lambda's code, picks
//! or creates a sandbox for each call, and retires sandboxes that died, ran
//! too long or sat idle.
//!
//! It needs no worker and no HTTP: a [`SandboxPool`], a [`Registry`],
//! [`LambdaSettings`] and a [`Clock`] make one ([`LambdaManager::with_clock`]),
//! and [`LambdaManager::invoke`] runs a call.
//!
//! One file per job: `call` (the call path: checks, an idle sandbox or a new
//! one, the call, what its outcome means for the sandbox), `create` (a new
//! sandbox: its spec, packages and zygotes), `code_puller` (a lambda's code
//! from the registry, and noticing it changed), `admission` (memory for a
//! new sandbox, evicting idle ones), `idle` (pausing and expiring idle
//! sandboxes) and `stats`. This file holds the state they share and a
//! sandbox's way out (released for reuse, or retired).

mod admission;
mod call;
mod code_puller;
mod create;
mod idle;
mod stats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use ol_registry::Registry;
use ol_sandbox::mem_pool::MemPool;
use ol_sandbox::{Invocation, Limits, Reply, SandboxPool};

pub use call::Trigger;
pub use stats::{LambdaStats, SandboxInfo, SandboxesByState, Stats};

use crate::InvokeError;
use crate::clock::{Clock, SystemClock};
use crate::cron::{self, CronTarget};
use crate::function::{Instance, LambdaFunction};
use crate::import_cache::ImportCache;
use crate::packages::PackagePuller;
use stats::Counters;

/// Settings of the lambda layer.
#[derive(Debug, Clone)]
pub struct LambdaSettings {
    /// Limits every sandbox gets.
    pub limits: Limits,
    /// Most sandboxes one lambda may have at once.
    pub max_instances: usize,
    /// Most calls of one lambda that may wait for a sandbox; more fail with
    /// [`InvokeError::QueueFull`].
    pub max_queue: usize,
    /// Destroy a sandbox idle this long (scale down); `None`: never.
    pub idle_timeout: Option<Duration>,
    /// How long a new runtime may take to load the lambda's code.
    pub ready_timeout: Duration,
    /// Pause a sandbox idle this long; `None`: never.
    pub pause_after_idle: Option<Duration>,
    /// Memory all sandboxes together may reserve, in MiB.
    pub mem_pool_mb: u64,
    /// How long a new sandbox may wait for memory before the call fails.
    pub admission_timeout: Duration,
    /// How long fetched code is trusted before the registry is asked again
    /// (`registry_cache_ms`).
    pub registry_cache: Duration,
    /// Busy sandboxes of one lambda beyond which short calls wait for one
    /// to free up rather than start another. Default: twice the CPUs
    /// (measured with `ol bench hot` on 2 vCPUs: 1×CPUs lost 25% at 16
    /// connections, 2× matched creating freely while keeping the sandbox
    /// count down).
    pub busy_before_waiting: usize,
    /// Where each lambda's output is kept after its sandboxes are gone
    /// (`None`: only in their scratch dirs).
    pub lambda_logs: Option<Arc<ol_sandbox::lambda_logs::LambdaLogs>>,
}

impl Default for LambdaSettings {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_instances: 8,
            max_queue: 256,
            idle_timeout: Some(Duration::from_secs(300)),
            ready_timeout: Duration::from_secs(60),
            pause_after_idle: Some(Duration::from_millis(500)),
            mem_pool_mb: 4096,
            admission_timeout: Duration::from_secs(10),
            registry_cache: Duration::from_millis(5000),
            busy_before_waiting: 2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
            lambda_logs: None,
        }
    }
}

/// Packages and the import cache, for [`LambdaManager::new`].
#[derive(Debug, Default)]
pub struct PackageLayer {
    /// Installs lambdas' requirements; `None`: requirements are ignored.
    pub puller: Option<Arc<PackagePuller>>,
    /// The zygote tree; `None`: lambdas fork from the root zygote.
    pub import_cache: Option<ImportCache>,
}

/// The lambda layer: every lambda called so far and its sandboxes.
pub struct LambdaManager {
    pool: Arc<dyn SandboxPool>,
    registry: Arc<dyn Registry>,
    settings: LambdaSettings,
    /// What time it is, for the cron scheduler.
    clock: Arc<dyn Clock>,
    functions: RwLock<HashMap<String, Arc<LambdaFunction>>>,
    sandboxes: Mutex<HashMap<String, SandboxInfo>>,
    mem: Arc<MemPool>,
    /// Calls waiting for memory; releases nudge them only when non-zero.
    mem_waiters: AtomicUsize,
    /// Memory of retired sandboxes being destroyed (it returns to the pool
    /// when they are gone): a call short of memory does not evict another
    /// sandbox for memory already on its way back.
    releasing_mb: Arc<AtomicU64>,
    counters: Counters,
    packages: PackageLayer,
    closed: AtomicBool,
}

impl LambdaManager {
    /// A manager creating sandboxes from `pool` for code from `registry`,
    /// with packages from `packages`, on the system clock.
    pub fn new(
        pool: Arc<dyn SandboxPool>,
        registry: Arc<dyn Registry>,
        settings: LambdaSettings,
        packages: PackageLayer,
    ) -> Arc<Self> {
        Self::with_clock(pool, registry, settings, packages, Arc::new(SystemClock))
    }

    /// [`Self::new`] telling the time by `clock` (tests: a
    /// [`crate::TokioClock`] on a paused runtime).
    pub fn with_clock(
        pool: Arc<dyn SandboxPool>,
        registry: Arc<dyn Registry>,
        settings: LambdaSettings,
        packages: PackageLayer,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        Arc::new(Self {
            pool,
            registry,
            clock,
            functions: RwLock::new(HashMap::new()),
            sandboxes: Mutex::new(HashMap::new()),
            mem: MemPool::new(settings.mem_pool_mb),
            mem_waiters: AtomicUsize::new(0),
            releasing_mb: Arc::new(AtomicU64::new(0)),
            counters: Counters::default(),
            packages,
            closed: AtomicBool::new(false),
            settings,
        })
    }

    /// Starts the background work: pausing and expiring idle sandboxes, and
    /// the cron scheduler. Call once, inside the async runtime; it stops
    /// when the manager is dropped or shut down.
    pub fn start_background(self: &Arc<Self>) {
        tokio::spawn(cron::run(
            Arc::downgrade(self),
            Arc::clone(&self.registry),
            Arc::clone(&self.clock),
        ));
        self.start_idle_loop();
    }

    /// The lambdas known now, so that no lock is held while working on them.
    fn functions_now(&self) -> Vec<Arc<LambdaFunction>> {
        self.read_functions().values().cloned().collect()
    }

    fn read_functions(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<LambdaFunction>>> {
        self.functions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_sandboxes(&self) -> std::sync::MutexGuard<'_, HashMap<String, SandboxInfo>> {
        self.sandboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the manager refuses new calls (shutting down).
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Puts a sandbox back for the next call of its lambda, or destroys it
    /// if the worker is shutting down or the lambda's code changed.
    fn release(&self, function: &LambdaFunction, inst: Instance) {
        if self.is_closed() {
            self.retire(inst, "worker shutting down");
        } else if function.is_retired() {
            self.retire(inst, "code changed");
        } else {
            function.release(inst);
            if self.mem_waiters.load(Ordering::SeqCst) > 0 {
                self.mem.nudge();
            }
        }
    }

    /// Destroys an instance off the async threads (kill + reap block).
    fn retire(&self, inst: Instance, reason: &'static str) {
        self.lock_sandboxes().remove(inst.sandbox.id());
        let destroyed = Arc::clone(&self.counters.destroyed);
        let releasing = Arc::clone(&self.releasing_mb);
        let mb = inst.memory_mb();
        releasing.fetch_add(mb, Ordering::SeqCst);
        tokio::task::spawn_blocking(move || {
            // The whole instance moves here (a closure would capture only
            // the field it names): its memory reservation and its slot are
            // freed after the sandbox is gone, never before.
            let mut inst = inst;
            inst.sandbox.destroy_now(reason);
            destroyed.fetch_add(1, Ordering::Relaxed);
            releasing.fetch_sub(mb, Ordering::SeqCst);
            drop(inst);
        });
    }

    /// Refuses new calls, destroys idle sandboxes, and waits up to `grace`
    /// for busy ones to finish their calls (they are destroyed as they do).
    /// Returns how many sandboxes were still alive when `grace` ran out.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.closed.store(true, Ordering::Release);
        for f in self.functions_now() {
            for inst in f.close() {
                self.retire(inst, "worker shutting down");
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let live = self.counters.created.load(Ordering::Relaxed)
                - self.counters.destroyed.load(Ordering::Relaxed);
            if live == 0 || tokio::time::Instant::now() >= deadline {
                return live as usize;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Cron calls are calls like any other, but not restricted by ol.yaml's
/// HTTP methods.
impl CronTarget for LambdaManager {
    fn is_closed(&self) -> bool {
        LambdaManager::is_closed(self)
    }

    async fn call(self: Arc<Self>, name: String, event: Invocation) -> Result<Reply, InvokeError> {
        self.invoke_by(&name, event, Trigger::Cron).await
    }
}
