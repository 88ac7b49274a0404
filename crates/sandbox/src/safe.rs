//! [`SafeSandbox`]: the one way the lambda layer uses a sandbox. It owns the
//! backend handle and the runtime connection, serialises calls (one in flight
//! per sandbox), and once anything fails it is dead: every later operation
//! is an error, never a panic, and dropping it destroys the backend.

use std::time::Duration;

use tokio::net::UnixStream;

use crate::protocol::{self, Invocation, ProtocolError, Reply, RuntimeMeta};
use crate::{NewSandbox, Sandbox, SandboxError};

/// The longest a call whose sandbox died waits for how it ended
/// (`exit_reason_soon`).
const EXIT_REASON_WAIT: Duration = Duration::from_secs(1);

/// Why a call did not produce a reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// User code raised; the sandbox is healthy and stays usable.
    #[error("{error}")]
    Raised {
        /// `ExcType: message`.
        error: String,
        /// Short traceback.
        traceback: String,
    },
    /// The runtime went away mid-call; the sandbox is dead (HTTP 502).
    #[error("sandbox died mid-call: {0}")]
    Died(String),
    /// The runtime started a response larger than the call may return.
    /// Nothing past its header was read, so the stream is out of step and
    /// the sandbox is dead (HTTP 502).
    #[error("response of {claimed} bytes is over the limit of {limit} bytes")]
    ResponseTooLarge {
        /// Bytes (meta and body) the response's frame header claims.
        claimed: u64,
        /// Most bytes the call may return.
        limit: usize,
    },
    /// The runtime was already gone: the request never reached it, so the
    /// call may safely go to another sandbox.
    #[error("sandbox was dead before the call: {0}")]
    NotDelivered(String),
    /// The sandbox ran out of memory and the kernel killed it (HTTP 507).
    #[error("lambda exceeded its memory limit: {0}")]
    OutOfMemory(String),
    /// The call ran past the runtime limit; the sandbox was killed (HTTP 504).
    #[error("lambda exceeded its runtime limit of {0:?}")]
    Timeout(Duration),
    /// The sandbox was already dead before the call.
    #[error(transparent)]
    Dead(#[from] SandboxError),
}

/// A sandbox with its open runtime connection.
#[derive(Debug)]
pub struct SafeSandbox {
    inner: Box<dyn Sandbox>,
    conn: UnixStream,
    dead: Option<String>,
    destroyed: bool,
    paused: bool,
    write_buf: Vec<u8>,
    read_buf: bytes::BytesMut,
}

impl SafeSandbox {
    /// Wraps a new sandbox and waits for its runtime's ready frame. On any
    /// failure the sandbox is destroyed before the error is returned.
    pub async fn start(new: NewSandbox, ready_timeout: Duration) -> Result<Self, SandboxError> {
        let conn = new
            .conn
            .set_nonblocking(true)
            .and_then(|()| UnixStream::from_std(new.conn));
        let conn = match conn {
            Ok(conn) => conn,
            Err(source) => {
                let mut inner = new.sandbox;
                let _ = inner.destroy();
                return Err(SandboxError::StartFailed(format!(
                    "cannot register the runtime socket: {source}"
                )));
            }
        };
        let mut sb = Self {
            inner: new.sandbox,
            conn,
            dead: None,
            destroyed: false,
            paused: false,
            write_buf: Vec::with_capacity(4096),
            read_buf: bytes::BytesMut::with_capacity(16 * 1024),
        };
        let ready = tokio::time::timeout(
            ready_timeout,
            protocol::read_frame(
                &mut sb.conn,
                &mut sb.read_buf,
                protocol::MAX_CONTROL_FRAME_BYTES,
            ),
        );
        let first = ol_obs::Phase::SandboxReady.time(ready).await;
        let err = match first {
            Ok(Ok((meta, _))) if meta.kind.as_deref() == Some("ready") => return Ok(sb),
            Ok(Ok((meta, _))) if meta.kind.as_deref() == Some("load_error") => {
                SandboxError::LoadFailed {
                    error: meta.error.unwrap_or_else(|| "unknown error".into()),
                    traceback: meta.traceback,
                }
            }
            Ok(Ok((meta, _))) => {
                SandboxError::StartFailed(format!("unexpected first frame from runtime: {meta:?}"))
            }
            Ok(Err(e)) => SandboxError::StartFailed(match sb.exit_reason_soon().await {
                Some(why) => format!("runtime {why}"),
                None => e.to_string(),
            }),
            Err(_) => {
                SandboxError::StartFailed(format!("no ready message within {ready_timeout:?}"))
            }
        };
        sb.destroy_now(&err.to_string());
        Err(err)
    }

    /// The sandbox's id.
    pub fn id(&self) -> &str {
        self.inner.id()
    }

    /// Host pid of the runtime.
    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// Its cgroup, relative to the hierarchy roots, if it has one.
    pub fn cgroup(&self) -> Option<String> {
        self.inner.cgroup()
    }

    /// What the sandbox has printed until now, to wait until it is in its
    /// lambda's log ([`crate::lambda_logs::Printed::written`]); `None`
    /// when its output goes to no lambda's log.
    pub fn printed(&self) -> Option<crate::lambda_logs::Printed> {
        self.inner.log_tag()?.printed()
    }

    /// Whether the sandbox can no longer serve calls.
    pub fn is_dead(&self) -> bool {
        self.dead.is_some()
    }

    /// Whether the sandbox is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    fn check_alive(&self) -> Result<(), SandboxError> {
        match &self.dead {
            Some(why) => Err(SandboxError::Dead(self.inner.id().to_string(), why.clone())),
            None => Ok(()),
        }
    }

    /// Sends one call and waits for its reply, at most `limit`; a reply of
    /// more than `max_response` bytes (meta and body) is refused from its
    /// frame header, before any of it is buffered.
    pub async fn call(
        &mut self,
        inv: &Invocation,
        limit: Duration,
        max_response: usize,
    ) -> Result<Reply, CallError> {
        self.check_alive()?;
        if let Some(tag) = self.inner.log_tag() {
            tag.begin_call(&inv.request_id);
        }
        // Whether the whole request went out: a runtime that died before
        // reading it never ran user code for it.
        let round_trip = async {
            if let Err(e) = protocol::write_request(&mut self.conn, inv, &mut self.write_buf).await
            {
                return (false, Err(e));
            }
            (
                true,
                protocol::read_frame(&mut self.conn, &mut self.read_buf, max_response).await,
            )
        };
        let result = tokio::time::timeout(limit, round_trip).await;
        match result {
            Ok((_, Ok((meta, body)))) => into_reply(meta, body),
            Ok((_, Err(ProtocolError::TooLarge { claimed, limit }))) => {
                // The rest of that frame is still on its way: no later
                // frame can be found in the stream, so the sandbox goes.
                self.dead = Some(format!(
                    "sent a response of {claimed} bytes, over the {limit}-byte limit"
                ));
                Err(CallError::ResponseTooLarge { claimed, limit })
            }
            Ok((sent, Err(e))) => {
                // EOF or EPIPE: the runtime is gone; say how it went.
                let why = match (&e, self.exit_reason_soon().await) {
                    (ProtocolError::Closed | ProtocolError::Io(_), Some(exit)) => {
                        format!("runtime {exit}")
                    }
                    (_, _) => e.to_string(),
                };
                self.dead = Some(why.clone());
                if self.inner.oom_killed() {
                    return Err(CallError::OutOfMemory(why));
                }
                if !sent {
                    return Err(CallError::NotDelivered(why));
                }
                Err(CallError::Died(why))
            }
            Err(_) => {
                self.dead = Some(format!("exceeded runtime limit of {limit:?}"));
                Err(CallError::Timeout(limit))
            }
        }
    }

    /// How the runtime ended, waiting briefly for it (at most
    /// [`EXIT_REASON_WAIT`]): a process closes its sockets a moment before
    /// it can be reaped, and a forked sandbox's status is known only once
    /// its zygote has reaped it, in a Python signal handler that a loaded
    /// machine may not schedule for a while (100 ms was once too short in
    /// CI, with nine test workers on 2 vCPUs). Known at once in the
    /// common case; the full wait only delays an error that would
    /// otherwise lack its cause.
    async fn exit_reason_soon(&mut self) -> Option<String> {
        let deadline = tokio::time::Instant::now() + EXIT_REASON_WAIT;
        loop {
            if let Some(why) = self.inner.exit_reason() {
                return Some(why);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Pauses the sandbox; a failure kills it.
    pub fn pause(&mut self) -> Result<(), SandboxError> {
        self.check_alive()?;
        if !self.paused {
            self.mark_dead_on_err(|s| s.inner.pause())?;
            self.paused = true;
        }
        Ok(())
    }

    /// Unpauses the sandbox; a failure kills it.
    pub fn unpause(&mut self) -> Result<(), SandboxError> {
        self.check_alive()?;
        if self.paused {
            self.mark_dead_on_err(|s| s.inner.unpause())?;
            self.paused = false;
        }
        Ok(())
    }

    /// Memory in use, in bytes.
    pub fn mem_usage(&self) -> Result<u64, SandboxError> {
        self.check_alive()?;
        self.inner.mem_usage()
    }

    fn mark_dead_on_err(
        &mut self,
        op: impl FnOnce(&mut Self) -> Result<(), SandboxError>,
    ) -> Result<(), SandboxError> {
        op(self).inspect_err(|e| self.dead = Some(e.to_string()))
    }

    /// Kills the sandbox and frees what it holds. Blocks (run it with
    /// `spawn_blocking` from async code). Idempotent.
    pub fn destroy_now(&mut self, reason: &str) {
        if self.destroyed {
            return;
        }
        self.destroyed = true;
        if self.dead.is_none() {
            self.dead = Some(format!("destroyed: {reason}"));
        }
        tracing::debug!(sandbox = self.inner.id(), reason, "destroying sandbox");
        if let Err(e) = self.inner.destroy() {
            tracing::warn!(sandbox = self.inner.id(), "destroy failed: {e}");
        }
    }
}

impl Drop for SafeSandbox {
    fn drop(&mut self) {
        self.destroy_now("dropped");
    }
}

fn into_reply(meta: RuntimeMeta, body: bytes::Bytes) -> Result<Reply, CallError> {
    if let Some(error) = meta.error {
        return Err(CallError::Raised {
            error,
            traceback: meta.traceback,
        });
    }
    Ok(Reply {
        status: meta.status.unwrap_or(200),
        headers: meta.headers,
        body,
    })
}
