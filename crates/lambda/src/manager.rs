//! [`LambdaManager`]: finds a lambda's code, picks or creates a sandbox for
//! each call, and retires sandboxes that died or ran too long.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ol_registry::{Registry, RegistryError};
use ol_sandbox::{
    CallError, Invocation, Limits, Reply, SafeSandbox, SandboxError, SandboxPool, SandboxSpec,
};
use serde::Serialize;

use crate::InvokeError;
use crate::function::{Acquired, Instance, LambdaFunction};

/// Settings of the lambda layer.
#[derive(Debug, Clone)]
pub struct LambdaSettings {
    /// Limits every sandbox gets.
    pub limits: Limits,
    /// Most sandboxes one lambda may have at once.
    pub max_instances: usize,
    /// How long a new runtime may take to load the lambda's code.
    pub ready_timeout: Duration,
}

impl Default for LambdaSettings {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_instances: 8,
            ready_timeout: Duration::from_secs(60),
        }
    }
}

/// One live sandbox, as `ol worker status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SandboxInfo {
    /// Sandbox id.
    pub id: String,
    /// Lambda it serves.
    pub lambda: String,
    /// Host pid of its runtime.
    pub pid: u32,
}

/// A snapshot of the lambda layer.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Lambdas called so far, with their idle instance counts.
    pub lambdas: Vec<LambdaStats>,
    /// Every live sandbox.
    pub sandboxes: Vec<SandboxInfo>,
    /// Sandboxes created since start.
    pub sandboxes_created: u64,
    /// Sandboxes destroyed since start.
    pub sandboxes_destroyed: u64,
}

/// Per-lambda part of [`Stats`].
#[derive(Debug, Clone, Serialize)]
pub struct LambdaStats {
    /// Lambda name.
    pub name: String,
    /// Idle (warm) instances.
    pub idle: usize,
}

/// The lambda layer: every lambda called so far and its sandboxes.
pub struct LambdaManager {
    pool: Arc<dyn SandboxPool>,
    registry: Arc<dyn Registry>,
    settings: LambdaSettings,
    functions: RwLock<HashMap<String, Arc<LambdaFunction>>>,
    sandboxes: Mutex<HashMap<String, SandboxInfo>>,
    created: AtomicU64,
    destroyed: Arc<AtomicU64>,
    closed: AtomicBool,
}

impl LambdaManager {
    /// A manager creating sandboxes from `pool` for code from `registry`.
    pub fn new(
        pool: Arc<dyn SandboxPool>,
        registry: Arc<dyn Registry>,
        settings: LambdaSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            pool,
            registry,
            settings,
            functions: RwLock::new(HashMap::new()),
            sandboxes: Mutex::new(HashMap::new()),
            created: AtomicU64::new(0),
            destroyed: Arc::new(AtomicU64::new(0)),
            closed: AtomicBool::new(false),
        })
    }

    /// Runs one call of lambda `name`. The call runs in its own task, so a
    /// caller that goes away never leaves a sandbox half-way through a call.
    pub async fn invoke(
        self: &Arc<Self>,
        name: &str,
        inv: Invocation,
    ) -> Result<Reply, InvokeError> {
        let this = Arc::clone(self);
        let name = name.to_string();
        tokio::spawn(async move { this.invoke_here(&name, inv).await })
            .await
            .unwrap_or_else(|e| Err(InvokeError::Internal(format!("call task failed: {e}"))))
    }

    async fn invoke_here(&self, name: &str, inv: Invocation) -> Result<Reply, InvokeError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(InvokeError::ShuttingDown);
        }
        let function = self.function(name).await?;
        let mut inst = match function.acquire().await.ok_or(InvokeError::ShuttingDown)? {
            Acquired::Idle(inst) => inst,
            Acquired::NewSlot(slot) => Instance::new(self.create_sandbox(&function).await?, slot),
        };
        let limit = Duration::from_secs(self.settings.limits.runtime_sec);
        match inst.sandbox.call(&inv, limit).await {
            Ok(reply) => {
                self.release(&function, inst);
                Ok(reply)
            }
            Err(CallError::Raised { error, traceback }) => {
                self.release(&function, inst);
                Err(InvokeError::Raised { error, traceback })
            }
            Err(CallError::Timeout(limit)) => {
                self.retire(inst, "runtime limit exceeded");
                Err(InvokeError::Timeout(limit))
            }
            Err(CallError::OutOfMemory(why)) => {
                let msg = format!(
                    "lambda {name} exceeded its memory limit of {} MiB and was killed ({why})",
                    self.settings.limits.mem_mb
                );
                self.retire(inst, "out of memory");
                Err(InvokeError::OutOfMemory(msg))
            }
            Err(e @ (CallError::Died(_) | CallError::Dead(_))) => {
                let msg = format!("sandbox {} of {name}: {e}", inst.sandbox.id());
                self.retire(inst, "died mid-call");
                Err(InvokeError::Died(msg))
            }
        }
    }

    /// The lambda's function, looking it up in the registry the first time.
    async fn function(&self, name: &str) -> Result<Arc<LambdaFunction>, InvokeError> {
        if let Some(f) = self.read_functions().get(name) {
            return Ok(Arc::clone(f));
        }
        let registry = Arc::clone(&self.registry);
        let lookup = name.to_string();
        let code = tokio::task::spawn_blocking(move || registry.fetch(&lookup))
            .await
            .map_err(|e| InvokeError::Internal(format!("registry task failed: {e}")))?
            .map_err(|e| match e {
                RegistryError::InvalidName(_) => InvokeError::BadName(e.to_string()),
                other => InvokeError::Internal(other.to_string()),
            })?
            .ok_or_else(|| InvokeError::NotFound(name.to_string()))?;
        let mut functions = self
            .functions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let f = functions.entry(name.to_string()).or_insert_with(|| {
            Arc::new(LambdaFunction::new(
                name.to_string(),
                code,
                self.settings.max_instances,
            ))
        });
        Ok(Arc::clone(f))
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
        let started = Instant::now();
        let spec = SandboxSpec {
            lambda: function.name.clone(),
            code_dir: function.code.dir.clone(),
            env: Vec::new(),
            limits: self.settings.limits.clone(),
        };
        let pool = Arc::clone(&self.pool);
        let new = tokio::task::spawn_blocking(move || pool.create(&spec))
            .await
            .map_err(|e| InvokeError::Internal(format!("sandbox task failed: {e}")))?
            .map_err(|e| self.creation_error(&function.name, e))?;
        let sandbox = SafeSandbox::start(new, self.settings.ready_timeout)
            .await
            .map_err(|e| self.creation_error(&function.name, e))?;
        self.created.fetch_add(1, Ordering::Relaxed);
        self.lock_sandboxes().insert(
            sandbox.id().to_string(),
            SandboxInfo {
                id: sandbox.id().to_string(),
                lambda: function.name.clone(),
                pid: sandbox.pid(),
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
        } else {
            function.release(inst);
        }
    }

    /// Destroys an instance off the async threads (kill + reap block).
    fn retire(&self, mut inst: Instance, reason: &'static str) {
        self.lock_sandboxes().remove(inst.sandbox.id());
        let destroyed = Arc::clone(&self.destroyed);
        tokio::task::spawn_blocking(move || {
            inst.sandbox.destroy_now(reason);
            destroyed.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// A snapshot for `/stats` and `ol worker status`.
    pub fn stats(&self) -> Stats {
        let mut lambdas: Vec<LambdaStats> = self
            .read_functions()
            .values()
            .map(|f| LambdaStats {
                name: f.name.clone(),
                idle: f.idle_count(),
            })
            .collect();
        lambdas.sort_by(|a, b| a.name.cmp(&b.name));
        let mut sandboxes: Vec<SandboxInfo> = self.lock_sandboxes().values().cloned().collect();
        sandboxes.sort_by(|a, b| a.id.cmp(&b.id));
        Stats {
            lambdas,
            sandboxes,
            sandboxes_created: self.created.load(Ordering::Relaxed),
            sandboxes_destroyed: self.destroyed.load(Ordering::Relaxed),
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
            let live =
                self.created.load(Ordering::Relaxed) - self.destroyed.load(Ordering::Relaxed);
            if live == 0 || Instant::now() >= deadline {
                return live as usize;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
