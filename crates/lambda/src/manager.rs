//! [`LambdaManager`]: finds a lambda's code, picks or creates a sandbox for
//! each call, and retires sandboxes that died or ran too long.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ol_obs::Phase;
use ol_registry::{Registry, RegistryError};
use ol_sandbox::mem_pool::{MemPool, Reservation};
use ol_sandbox::{
    CallError, Invocation, Limits, Reply, SafeSandbox, SandboxError, SandboxPool, SandboxSpec,
};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::function::{Acquired, Instance, LambdaFunction, NotAcquired};
use crate::import_cache::ImportCache;
use crate::ol_yaml;
use crate::packages::{PackagePuller, PackageStats};
use crate::{InvokeError, Trigger};

/// Settings of the lambda layer.
#[derive(Debug, Clone)]
pub struct LambdaSettings {
    /// Limits every sandbox gets.
    pub limits: Limits,
    /// Most sandboxes one lambda may have at once.
    pub max_instances: usize,
    /// Most calls of one lambda that may wait for a sandbox (429 above).
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
        }
    }
}

/// One live sandbox, as `ol worker status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxInfo {
    /// Sandbox id.
    pub id: String,
    /// Lambda it serves.
    pub lambda: String,
    /// Host pid of its runtime.
    pub pid: u32,
    /// Its cgroup (relative to the hierarchy roots), if any.
    pub cgroup: Option<String>,
}

/// A snapshot of the lambda layer.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Lambdas called so far, with their idle instance counts.
    pub lambdas: Vec<LambdaStats>,
    /// Every live sandbox.
    pub sandboxes: Vec<SandboxInfo>,
    /// Live sandboxes serving a call (or between calls for a moment).
    pub sandboxes_busy: usize,
    /// Live sandboxes idle and running (warm).
    pub sandboxes_idle: usize,
    /// Live sandboxes idle and paused.
    pub sandboxes_paused: usize,
    /// Sandboxes created since start.
    pub sandboxes_created: u64,
    /// Sandboxes destroyed since start.
    pub sandboxes_destroyed: u64,
    /// Sandboxes paused since start.
    pub pauses: u64,
    /// Idle sandboxes destroyed to free memory.
    pub evictions: u64,
    /// Memory reserved by sandboxes, in MiB.
    pub mem_pool_used_mb: u64,
    /// Size of the memory pool, in MiB.
    pub mem_pool_total_mb: u64,
    /// Package installs (absent without a package puller).
    pub packages: Option<PackageStats>,
    /// Sandboxes by the zygote they were forked from: `"root"`, an
    /// import-cache key, or `"none"` (a fresh interpreter).
    pub forked_from: std::collections::BTreeMap<String, u64>,
    /// Import-cache zygotes alive now.
    pub zygotes: Vec<String>,
}

/// Packages and the import cache, for [`LambdaManager::new`].
#[derive(Debug, Default)]
pub struct PackageLayer {
    /// Installs lambdas' requirements; `None`: requirements are ignored.
    pub puller: Option<Arc<PackagePuller>>,
    /// The zygote tree; `None`: lambdas fork from the root zygote.
    pub import_cache: Option<ImportCache>,
}

/// Per-lambda part of [`Stats`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LambdaStats {
    /// Lambda name.
    pub name: String,
    /// Idle (warm) instances.
    pub idle: usize,
}

/// Counters of the lambda layer.
#[derive(Debug, Default)]
struct Counters {
    created: AtomicU64,
    destroyed: Arc<AtomicU64>,
    /// Average sandbox creation time in µs (moving average).
    avg_create_us: AtomicU64,
    pauses: AtomicU64,
    evictions: AtomicU64,
    /// Sandboxes by the zygote they were forked from.
    forked_from: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// The lambda layer: every lambda called so far and its sandboxes.
pub struct LambdaManager {
    pool: Arc<dyn SandboxPool>,
    registry: Arc<dyn Registry>,
    settings: LambdaSettings,
    functions: RwLock<HashMap<String, Arc<LambdaFunction>>>,
    sandboxes: Mutex<HashMap<String, SandboxInfo>>,
    mem: Arc<MemPool>,
    /// Busy sandboxes of one lambda beyond which short calls wait for one
    /// to free up rather than start another: twice the CPUs (measured with
    /// `ol bench hot` on 2 vCPUs: 1×CPUs lost 25% at 16 connections, 2×
    /// matched creating freely while keeping the sandbox count down).
    cores: usize,
    /// Calls waiting for memory; releases nudge them only when non-zero.
    mem_waiters: AtomicUsize,
    counters: Counters,
    packages: PackageLayer,
    closed: AtomicBool,
}

impl LambdaManager {
    /// A manager creating sandboxes from `pool` for code from `registry`,
    /// with packages from `packages`.
    pub fn new(
        pool: Arc<dyn SandboxPool>,
        registry: Arc<dyn Registry>,
        settings: LambdaSettings,
        packages: PackageLayer,
    ) -> Arc<Self> {
        Arc::new(Self {
            pool,
            registry,
            functions: RwLock::new(HashMap::new()),
            sandboxes: Mutex::new(HashMap::new()),
            mem: MemPool::new(settings.mem_pool_mb),
            cores: 2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_waiters: AtomicUsize::new(0),
            counters: Counters::default(),
            packages,
            closed: AtomicBool::new(false),
            settings,
        })
    }

    /// Whether the manager refuses new calls (shutting down).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The registry lambdas come from.
    pub(crate) fn registry(&self) -> Arc<dyn Registry> {
        Arc::clone(&self.registry)
    }

    /// Starts the background work: pausing idle sandboxes and the cron
    /// scheduler. Call once, inside the async runtime; it stops when the
    /// manager is dropped or shut down.
    pub fn start_background(self: &Arc<Self>) {
        crate::cron::start(Arc::downgrade(self));
        let pause = self.settings.pause_after_idle;
        let expire = self.settings.idle_timeout;
        let shortest = match (pause, expire) {
            (None, None) => return,
            (Some(p), Some(e)) => p.min(e),
            (Some(d), None) | (None, Some(d)) => d,
        };
        let weak = Arc::downgrade(self);
        let tick = (shortest / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(this) = weak.upgrade() else { return };
                if this.closed.load(Ordering::Acquire) {
                    return;
                }
                if let Some(after) = expire {
                    this.expire_idle(after);
                }
                if let Some(after) = pause {
                    this.pause_idle(after).await;
                }
            }
        });
    }

    /// Scales down: destroys every sandbox idle for at least `after`.
    fn expire_idle(&self, after: Duration) {
        let functions: Vec<Arc<LambdaFunction>> = self.read_functions().values().cloned().collect();
        for f in functions {
            for inst in f.take_idle(usize::MAX, |i| i.idle_since.elapsed() >= after) {
                tracing::debug!(lambda = %f.name, sandbox = inst.sandbox.id(), "idle too long");
                self.retire(inst, "idle too long");
            }
        }
    }

    /// Pauses every running sandbox idle for at least `after`.
    async fn pause_idle(&self, after: Duration) {
        let functions: Vec<Arc<LambdaFunction>> = self.read_functions().values().cloned().collect();
        for f in functions {
            let stale = f.take_idle(usize::MAX, |i| {
                !i.sandbox.is_paused() && i.idle_since.elapsed() >= after
            });
            if stale.is_empty() {
                continue;
            }
            let paused = tokio::task::spawn_blocking(move || {
                stale
                    .into_iter()
                    .map(|mut inst| {
                        let ok = inst.sandbox.pause().is_ok();
                        (inst, ok)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
            let Ok(paused) = paused else { continue };
            for (inst, ok) in paused {
                if ok {
                    self.counters.pauses.fetch_add(1, Ordering::Relaxed);
                    self.release(&f, inst);
                } else {
                    self.retire(inst, "pause failed");
                }
            }
        }
    }

    /// Runs one HTTP-triggered call of lambda `name`. The call runs in its
    /// own task, so a caller that goes away never leaves a sandbox half-way
    /// through a call.
    pub async fn invoke(
        self: &Arc<Self>,
        name: &str,
        inv: Invocation,
    ) -> Result<Reply, InvokeError> {
        self.invoke_by(name, inv, Trigger::Http).await
    }

    /// Runs one call of lambda `name` caused by `trigger`.
    pub(crate) async fn invoke_by(
        self: &Arc<Self>,
        name: &str,
        inv: Invocation,
        trigger: Trigger,
    ) -> Result<Reply, InvokeError> {
        let this = Arc::clone(self);
        let name = name.to_string();
        // The call's phases belong to the caller's span (its request).
        let call = async move { this.invoke_here(&name, inv, trigger).await };
        tokio::spawn(call.instrument(tracing::Span::current()))
            .await
            .unwrap_or_else(|e| Err(InvokeError::Internal(format!("call task failed: {e}"))))
    }

    async fn invoke_here(
        &self,
        name: &str,
        inv: Invocation,
        trigger: Trigger,
    ) -> Result<Reply, InvokeError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(InvokeError::ShuttingDown);
        }
        let function = self.function(name).await?;
        // ol.yaml's http methods restrict HTTP calls only.
        if trigger == Trigger::Http && !function.config.triggers.allows(&inv.method) {
            let allowed = function
                .config
                .triggers
                .allowed_methods()
                .map(|m| m.join(", "))
                .unwrap_or_default();
            return Err(InvokeError::MethodNotAllowed(format!(
                "method {} is not allowed for lambda {name} (ol.yaml allows: {})",
                inv.method,
                if allowed.is_empty() { "none" } else { &allowed }
            )));
        }
        let max_body = function.limits.max_body_mb.saturating_mul(1 << 20);
        if inv.body.len() as u64 > max_body {
            return Err(InvokeError::BodyTooLarge(format!(
                "request body of {} bytes is over lambda {name}'s limit of {} MiB (limits.max_body_mb)",
                inv.body.len(),
                function.limits.max_body_mb
            )));
        }
        // A sandbox found dead before it got the request is replaced and the
        // call tried once more (it never reached user code).
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.call_once(&function, &inv).await {
                Err(InvokeError::NotDelivered(why)) if attempts < 2 => {
                    tracing::info!(lambda = name, "{why}; retrying on a fresh sandbox");
                }
                Err(InvokeError::NotDelivered(why)) => return Err(InvokeError::Died(why)),
                other => return other,
            }
        }
    }

    async fn call_once(
        &self,
        function: &LambdaFunction,
        inv: &Invocation,
    ) -> Result<Reply, InvokeError> {
        let name = function.name.as_str();
        let mut inst = loop {
            let create_cost =
                Duration::from_micros(self.counters.avg_create_us.load(Ordering::Relaxed));
            let waited = Phase::QueueWait
                .time(function.acquire(create_cost, self.cores))
                .await;
            let acquired = waited.map_err(|e| match e {
                NotAcquired::Closed => InvokeError::ShuttingDown,
                NotAcquired::QueueFull(n) => InvokeError::QueueFull(format!(
                    "lambda {name} has {n} calls waiting already (scaling.max_queue); try again later"
                )),
            })?;
            match acquired {
                Acquired::Idle(inst) if inst.sandbox.is_paused() => {
                    if let Some(inst) = self.unpause(inst).await {
                        break inst;
                    }
                }
                Acquired::Idle(inst) => break inst,
                Acquired::NewSlot(slot) => {
                    let memory = Phase::MemReserve
                        .time(self.reserve_memory(function.limits.mem_mb))
                        .await?;
                    let sandbox = self.create_sandbox(function).await?;
                    break Instance::new(sandbox, slot, memory);
                }
            }
        };
        let limit = Duration::from_secs(function.limits.runtime_sec);
        let started = Instant::now();
        let phase = if inst.fresh {
            Phase::FirstCall
        } else {
            Phase::Call
        };
        inst.fresh = false;
        let max_response = function.limits.max_response_bytes();
        let result = phase
            .time(inst.sandbox.call(inv, limit, max_response))
            .await;
        function.record_call(started.elapsed());
        match result {
            Ok(reply) => {
                self.release(function, inst);
                Ok(reply)
            }
            Err(CallError::Raised { error, traceback }) => {
                self.release(function, inst);
                Err(InvokeError::Raised { error, traceback })
            }
            Err(CallError::Timeout(limit)) => {
                self.retire(inst, "runtime limit exceeded");
                Err(InvokeError::Timeout(limit))
            }
            Err(CallError::OutOfMemory(why)) => {
                let msg = format!(
                    "lambda {name} exceeded its memory limit of {} MiB and was killed ({why})",
                    function.limits.mem_mb
                );
                self.retire(inst, "out of memory");
                Err(InvokeError::OutOfMemory(msg))
            }
            Err(CallError::ResponseTooLarge { claimed, .. }) => {
                let msg = format!(
                    "lambda {name} sent a response of {claimed} bytes, over its limit of {} MiB (limits.max_response_mb); its sandbox was destroyed",
                    function.limits.max_response_mb
                );
                self.retire(inst, "response too large");
                Err(InvokeError::ResponseTooLarge(msg))
            }
            Err(e @ CallError::NotDelivered(_)) => {
                let msg = format!("sandbox {} of {name}: {e}", inst.sandbox.id());
                self.retire(inst, "dead before the call");
                Err(InvokeError::NotDelivered(msg))
            }
            Err(e @ (CallError::Died(_) | CallError::Dead(_))) => {
                let msg = format!("sandbox {} of {name}: {e}", inst.sandbox.id());
                self.retire(inst, "died mid-call");
                Err(InvokeError::Died(msg))
            }
        }
    }

    /// Thaws a paused instance; `None` (and the instance retired) if that
    /// fails.
    async fn unpause(&self, mut inst: Instance) -> Option<Instance> {
        let thaw = tokio::task::spawn_blocking(move || {
            let ok = inst.sandbox.unpause().is_ok();
            (inst, ok)
        });
        let thawed = Phase::Unpause.time(thaw).await.ok()?;
        match thawed {
            (inst, true) => Some(inst),
            (inst, false) => {
                self.retire(inst, "unpause failed");
                None
            }
        }
    }

    /// Reserves one sandbox's memory, evicting idle sandboxes (paused and
    /// longest idle first) while the pool is short; waits a bounded time
    /// for busy ones to free memory.
    async fn reserve_memory(&self, mb: u64) -> Result<Reservation, InvokeError> {
        if let Some(r) = self.mem.try_reserve(mb) {
            return Ok(r);
        }
        self.mem_waiters.fetch_add(1, Ordering::SeqCst);
        let result = self.reserve_memory_slowly(mb).await;
        self.mem_waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }

    async fn reserve_memory_slowly(&self, mb: u64) -> Result<Reservation, InvokeError> {
        let deadline = tokio::time::Instant::now() + self.settings.admission_timeout;
        loop {
            // Created before the checks, so no release in between is missed.
            let freed = self.mem.freed();
            if let Some(r) = self.mem.try_reserve(mb) {
                return Ok(r);
            }
            // Evicted memory comes back once the sandbox is destroyed, and a
            // busy sandbox turning idle nudges us to evict it: wait for
            // either, up to the deadline.
            self.evict_one();
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return match self.mem.try_reserve(mb) {
                    Some(r) => Ok(r),
                    None => Err(InvokeError::NoMemory(format!(
                        "no memory for a new sandbox: {} of {} MiB stayed reserved for {:?} and nothing idle could be evicted (mem_pool_mb)",
                        self.mem.used_mb(),
                        self.mem.total_mb(),
                        self.settings.admission_timeout
                    ))),
                };
            }
        }
    }

    /// Destroys the best idle sandbox to evict, if any.
    fn evict_one(&self) -> bool {
        let functions: Vec<Arc<LambdaFunction>> = self.read_functions().values().cloned().collect();
        let best = functions
            .iter()
            .filter_map(|f| Some((f.eviction_candidate()?, f)))
            .max_by_key(|(key, _)| *key);
        let Some(((paused, idle_for), f)) = best else {
            return false;
        };
        let victim = f.take_idle(1, |i| {
            i.sandbox.is_paused() == paused && i.idle_since.elapsed() >= idle_for
        });
        let Some(inst) = victim.into_iter().next() else {
            return false;
        };
        tracing::info!(lambda = %f.name, sandbox = inst.sandbox.id(), paused, "evicting to free memory");
        self.counters.evictions.fetch_add(1, Ordering::Relaxed);
        self.retire(inst, "evicted");
        true
    }

    /// The lambda's function, looking it up in the registry the first time
    /// and again whenever the last look is older than the registry cache
    /// time: changed code replaces the function (new calls get the new
    /// code; old instances finish their calls and go).
    async fn function(&self, name: &str) -> Result<Arc<LambdaFunction>, InvokeError> {
        let cached = self.read_functions().get(name).cloned();
        let Some(current) = cached else {
            let fresh = self
                .load_function(name, None)
                .await?
                .ok_or_else(|| InvokeError::Internal(format!("{name}: no code loaded")))?;
            let mut functions = self
                .functions
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let f = functions.entry(name.to_string()).or_insert(fresh);
            return Ok(Arc::clone(f));
        };
        if !current.due_for_check(self.settings.registry_cache) {
            return Ok(current);
        }
        match self.load_function(name, Some(&current.code.version)).await {
            Ok(None) => Ok(current),
            Ok(Some(fresh)) => {
                tracing::info!(lambda = name, version = %fresh.code.version, "code changed; new calls use it");
                Ok(self
                    .replace_function(name, &current, Some(fresh))
                    .unwrap_or(current))
            }
            Err(e @ InvokeError::NotFound(_)) => {
                self.replace_function(name, &current, None);
                Err(e)
            }
            Err(e @ InvokeError::LoadFailed { .. }) => Err(e),
            Err(e) => {
                // The registry is unreachable or failing: keep serving the
                // code we have.
                tracing::warn!(
                    lambda = name,
                    "cannot check for new code, keeping the old: {e}"
                );
                Ok(current)
            }
        }
    }

    /// Swaps `old` for `new` (or removes it) if the map still holds `old`;
    /// retires `old`'s idle instances. Returns what the map holds now.
    fn replace_function(
        &self,
        name: &str,
        old: &Arc<LambdaFunction>,
        new: Option<Arc<LambdaFunction>>,
    ) -> Option<Arc<LambdaFunction>> {
        let mut functions = self
            .functions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let holds_old = functions.get(name).is_some_and(|f| Arc::ptr_eq(f, old));
        if holds_old {
            match &new {
                Some(f) => functions.insert(name.to_string(), Arc::clone(f)),
                None => functions.remove(name),
            };
        }
        let now = functions.get(name).cloned();
        drop(functions);
        if holds_old {
            for inst in old.close() {
                self.retire(inst, "code changed");
            }
        }
        now
    }

    /// Forgets lambda `name` (its code was replaced or removed through the
    /// worker): its idle sandboxes go now, busy ones when their call ends.
    pub fn forget(&self, name: &str) {
        let current = self.read_functions().get(name).cloned();
        if let Some(f) = current {
            self.replace_function(name, &f, None);
        }
    }

    /// Reads lambda `name` from the registry with its ol.yaml.
    /// `Ok(None)`: the code is still at version `known`, nothing was
    /// re-read.
    async fn load_function(
        &self,
        name: &str,
        known: Option<&str>,
    ) -> Result<Option<Arc<LambdaFunction>>, InvokeError> {
        let registry = Arc::clone(&self.registry);
        let lookup = name.to_string();
        let known = known.map(str::to_string);
        let pull = tokio::task::spawn_blocking(move || {
            let code = registry.fetch(&lookup)?;
            Ok::<_, RegistryError>(code.map(|code| {
                if known.as_deref() == Some(code.version.as_str()) {
                    return None;
                }
                let config = ol_yaml::load(&code.dir);
                let requirements = read_requirements(&code.dir);
                Some((code, config, requirements))
            }))
        });
        let found = Phase::CodePull
            .time(pull)
            .await
            .map_err(|e| InvokeError::Internal(format!("registry task failed: {e}")))?
            .map_err(|e| match e {
                RegistryError::InvalidName(_) => InvokeError::BadName(e.to_string()),
                other => InvokeError::Internal(other.to_string()),
            })?;
        let Some((code, config, requirements)) =
            found.ok_or_else(|| InvokeError::NotFound(name.to_string()))?
        else {
            return Ok(None);
        };
        // A broken ol.yaml fails the call and is not cached: the next call
        // reads it again, so a fix is picked up at once.
        let config_error = |e: ol_yaml::OlYamlError| InvokeError::LoadFailed {
            error: e.to_string(),
            traceback: String::new(),
        };
        let config = config.map_err(config_error)?;
        let limits = config
            .limits
            .apply(&self.settings.limits)
            .map_err(config_error)?;
        Ok(Some(Arc::new(LambdaFunction::new(
            name.to_string(),
            code,
            config,
            limits,
            requirements,
            self.settings.max_instances,
            self.settings.max_queue,
        ))))
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

    async fn create_sandbox(&self, function: &LambdaFunction) -> Result<SafeSandbox, InvokeError> {
        let span = Phase::SandboxCreate.span();
        Phase::SandboxCreate
            .time_in(span.clone(), self.create_sandbox_in(function, span))
            .await
    }

    async fn create_sandbox_in(
        &self,
        function: &LambdaFunction,
        span: tracing::Span,
    ) -> Result<SafeSandbox, InvokeError> {
        let started = Instant::now();
        let mut env = function.config.env_pairs();
        // Last, so that ol.yaml cannot set it: the runtime refuses results
        // over the limit itself (the worker checks every response anyway).
        env.push((
            ol_sandbox::MAX_RESPONSE_ENV.to_string(),
            function.limits.max_response_bytes().to_string(),
        ));
        let mut spec = SandboxSpec {
            lambda: function.name.clone(),
            code_dir: function.code.dir.clone(),
            env,
            limits: function.limits.clone(),
            packages: Vec::new(),
            zygote: Vec::new(),
        };
        let has_packages = self.add_packages(function, &mut spec).await?;
        let pool = Arc::clone(&self.pool);
        // The backend's own phases nest under this one.
        let parent = span.clone();
        let new = tokio::task::spawn_blocking(move || parent.in_scope(|| pool.create(&spec)))
            .await
            .map_err(|e| InvokeError::Internal(format!("sandbox task failed: {e}")))?
            .map_err(|e| self.creation_error(&function.name, e))?;
        self.count_fork(new.forked_from.as_deref(), has_packages);
        let sandbox = SafeSandbox::start(new, self.settings.ready_timeout)
            .await
            .map_err(|e| self.creation_error(&function.name, e))?;
        self.counters.created.fetch_add(1, Ordering::Relaxed);
        span.record("sandbox", sandbox.id());
        let us = started.elapsed().as_micros().min(u64::MAX as u128) as u64;
        let old = self.counters.avg_create_us.load(Ordering::Relaxed);
        let avg = if old == 0 { us } else { old - old / 8 + us / 8 };
        self.counters
            .avg_create_us
            .store(avg.max(1), Ordering::Relaxed);
        self.lock_sandboxes().insert(
            sandbox.id().to_string(),
            SandboxInfo {
                id: sandbox.id().to_string(),
                lambda: function.name.clone(),
                pid: sandbox.pid(),
                cgroup: sandbox.cgroup(),
            },
        );
        tracing::info!(
            lambda = %function.name,
            sandbox = sandbox.id(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "sandbox ready"
        );
        Ok(sandbox)
    }

    /// Installs the lambda's requirements (once per worker) and puts them
    /// and its import-cache zygotes in `spec`. Returns whether it has
    /// packages.
    async fn add_packages(
        &self,
        function: &LambdaFunction,
        spec: &mut SandboxSpec,
    ) -> Result<bool, InvokeError> {
        let (Some(text), Some(puller)) = (&function.requirements, &self.packages.puller) else {
            return Ok(false);
        };
        let resolved = Phase::Packages
            .time(puller.ensure(text))
            .await
            .map_err(|e| {
                InvokeError::Packages(format!(
                    "cannot install the requirements of lambda {}: {e}",
                    function.name
                ))
            })?;
        if resolved.packages.is_empty() {
            return Ok(false);
        }
        spec.packages = resolved.dirs();
        if let Some(cache) = &self.packages.import_cache {
            spec.zygote = cache.chain_for(&resolved);
        }
        Ok(true)
    }

    /// Counts where a new sandbox was forked from.
    fn count_fork(&self, forked_from: Option<&str>, has_packages: bool) {
        let name = match forked_from {
            None => "none",
            Some("") => "root",
            Some(key) => key,
        };
        *self
            .counters
            .forked_from
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_string())
            .or_default() += 1;
        if has_packages {
            let hit = forked_from.is_some_and(|k| !k.is_empty());
            let counter = if hit {
                &ol_obs::counters::ZYGOTE_HITS
            } else {
                &ol_obs::counters::ZYGOTE_MISSES
            };
            counter.inc();
        }
    }

    fn creation_error(&self, name: &str, e: SandboxError) -> InvokeError {
        match e {
            SandboxError::LoadFailed { error, traceback } => {
                InvokeError::LoadFailed { error, traceback }
            }
            other => InvokeError::Internal(format!("cannot create a sandbox for {name}: {other}")),
        }
    }

    fn release(&self, function: &LambdaFunction, inst: Instance) {
        if self.closed.load(Ordering::Acquire) {
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
    fn retire(&self, mut inst: Instance, reason: &'static str) {
        self.lock_sandboxes().remove(inst.sandbox.id());
        let destroyed = Arc::clone(&self.counters.destroyed);
        tokio::task::spawn_blocking(move || {
            inst.sandbox.destroy_now(reason);
            destroyed.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// A snapshot for `/stats` and `ol worker status`.
    pub fn stats(&self) -> Stats {
        let (mut idle, mut paused) = (0, 0);
        let mut lambdas: Vec<LambdaStats> = self
            .read_functions()
            .values()
            .map(|f| {
                let (running, frozen) = f.idle_by_state();
                idle += running;
                paused += frozen;
                LambdaStats {
                    name: f.name.clone(),
                    idle: f.idle_count(),
                }
            })
            .collect();
        lambdas.sort_by(|a, b| a.name.cmp(&b.name));
        let mut sandboxes: Vec<SandboxInfo> = self.lock_sandboxes().values().cloned().collect();
        sandboxes.sort_by(|a, b| a.id.cmp(&b.id));
        Stats {
            lambdas,
            sandboxes_busy: sandboxes.len().saturating_sub(idle + paused),
            sandboxes_idle: idle,
            sandboxes_paused: paused,
            sandboxes,
            sandboxes_created: self.counters.created.load(Ordering::Relaxed),
            sandboxes_destroyed: self.counters.destroyed.load(Ordering::Relaxed),
            pauses: self.counters.pauses.load(Ordering::Relaxed),
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            mem_pool_used_mb: self.mem.used_mb(),
            mem_pool_total_mb: self.mem.total_mb(),
            packages: self.packages.puller.as_ref().map(|p| p.stats()),
            forked_from: self
                .counters
                .forked_from
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            zygotes: self.pool.zygotes(),
        }
    }

    /// Refuses new calls, destroys idle sandboxes, and waits up to `grace`
    /// for busy ones to finish their calls (they are destroyed as they do).
    /// Returns how many sandboxes were still alive when `grace` ran out.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.closed.store(true, Ordering::Release);
        let functions: Vec<Arc<LambdaFunction>> = self.read_functions().values().cloned().collect();
        for f in functions {
            for inst in f.close() {
                self.retire(inst, "worker shutting down");
            }
        }
        let deadline = Instant::now() + grace;
        loop {
            let live = self.counters.created.load(Ordering::Relaxed)
                - self.counters.destroyed.load(Ordering::Relaxed);
            if live == 0 || Instant::now() >= deadline {
                return live as usize;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A lambda's requirements: `requirements.txt`, else seed 002's
/// `packages.txt` (one requirement per line, the same format).
fn read_requirements(code_dir: &std::path::Path) -> Option<String> {
    ["requirements.txt", "packages.txt"]
        .iter()
        .find_map(|f| std::fs::read_to_string(code_dir.join(f)).ok())
        .filter(|text| crate::packages::has_requirements(text))
}
