//! The call path: a call of a lambda by name, from the checks ol.yaml asks
//! for, through an idle sandbox (thawed if paused) or a new one within the
//! lambda's bounds, to the call itself and what its outcome means for the
//! sandbox: kept for the next call, or destroyed. A sandbox found dead
//! before the request reached it is replaced and the call tried once more.

use std::sync::Arc;
use std::time::Duration;

use ol_obs::Phase;
use ol_sandbox::{CallError, Invocation, Reply};
use tracing::Instrument;

use super::LambdaManager;
use crate::InvokeError;
use crate::function::{Acquired, Instance, LambdaFunction, NotAcquired};

/// What caused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// An HTTP request to `/run/<name>`.
    Http,
    /// A schedule in ol.yaml `triggers.cron`.
    Cron,
    /// A queue message of ol.yaml `triggers.nats` or `triggers.kafka`.
    Queue,
}

/// Longest a queue call waits for its output to be in the lambda's log
/// before its message is acknowledged (the drain is seconds behind only
/// on a machine far over its capacity).
const LOGGED_WITHIN: Duration = Duration::from_secs(2);

/// Waits until what a call of lambda `name` printed is in its log (see
/// `call_once`), at most [`LOGGED_WITHIN`].
async fn logged(name: &str, printed: Option<ol_sandbox::lambda_logs::Printed>) {
    if let Some(printed) = printed
        && !printed.written(LOGGED_WITHIN).await
    {
        tracing::warn!(
            lambda = name,
            "a queue call's output was not in the lambda's log within {LOGGED_WITHIN:?}; acknowledging it anyway"
        );
    }
}

impl LambdaManager {
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

    /// Runs one call of lambda `name` caused by `trigger`: the same path
    /// (queue, instances, scaling, limits) as every other call; only HTTP
    /// calls are checked against ol.yaml's methods.
    pub async fn invoke_by(
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
        if self.is_closed() {
            return Err(InvokeError::ShuttingDown);
        }
        let function = self.function(name).await?;
        // ol.yaml's http methods restrict HTTP calls only.
        if trigger == Trigger::Http && !function.config.triggers.allows(&inv.method) {
            let allowed = function
                .config
                .triggers
                .allowed_methods()
                .unwrap_or_default();
            let listed = allowed.join(", ");
            return Err(InvokeError::MethodNotAllowed {
                message: format!(
                    "method {} is not allowed for lambda {name} (ol.yaml allows: {})",
                    inv.method,
                    if listed.is_empty() { "none" } else { &listed }
                ),
                allowed,
            });
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
            match self.call_once(&function, &inv, trigger).await {
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
        trigger: Trigger,
    ) -> Result<Reply, InvokeError> {
        let name = function.name.as_str();
        let mut inst = loop {
            let create_cost = self.counters.create_time.get();
            let waited = Phase::QueueWait
                .time(function.acquire(create_cost, self.settings.busy_before_waiting))
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
        let started = tokio::time::Instant::now();
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
        // A queue message is acknowledged when its call returns: by then
        // what the call printed must be in the lambda's log, or a worker
        // killed right after the acknowledgement would lose the lines still
        // in the pipes. (Failures are written by the worker itself.)
        let printed = match (&result, trigger) {
            (Ok(_) | Err(CallError::Raised { .. }), Trigger::Queue) => inst.sandbox.printed(),
            _ => None,
        };
        match result {
            Ok(reply) => {
                self.release(function, inst);
                logged(name, printed).await;
                Ok(reply)
            }
            Err(CallError::Raised { error, traceback }) => {
                self.release(function, inst);
                logged(name, printed).await;
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
    /// fails. Inline: a thaw waits for nothing (`Sandbox::unpause`), and
    /// handing it to a blocking thread cost more than the thaw itself.
    async fn unpause(&self, mut inst: Instance) -> Option<Instance> {
        let thawed = Phase::Unpause
            .time(async { inst.sandbox.unpause().is_ok() })
            .await;
        if thawed {
            Some(inst)
        } else {
            self.retire(inst, "unpause failed");
            None
        }
    }
}
