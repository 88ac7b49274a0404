//! A new sandbox for a call: its spec (ol.yaml's environment, the lambda's
//! limits, its packages installed and on `sys.path`, the import-cache
//! zygotes to fork from), made by the backend off the async threads and
//! started until its runtime has loaded the lambda.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ol_obs::Phase;
use ol_sandbox::{SafeSandbox, SandboxError, SandboxSpec};

use super::{LambdaManager, SandboxInfo};
use crate::InvokeError;
use crate::function::LambdaFunction;

impl LambdaManager {
    pub(super) async fn create_sandbox(
        &self,
        function: &LambdaFunction,
    ) -> Result<SafeSandbox, InvokeError> {
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
        let started = tokio::time::Instant::now();
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
            lambda_logs: self.settings.lambda_logs.clone(),
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
        self.counters.create_time.record(started.elapsed());
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

    fn creation_error(&self, name: &str, e: SandboxError) -> InvokeError {
        match e {
            SandboxError::LoadFailed { error, traceback } => {
                InvokeError::LoadFailed { error, traceback }
            }
            other => InvokeError::Internal(format!("cannot create a sandbox for {name}: {other}")),
        }
    }
}
