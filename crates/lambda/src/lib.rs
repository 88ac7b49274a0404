//! Lambda layer of `ol` (DESIGN.md §2, seed 001): turns an invocation of a
//! lambda by name into a call on one of its warm sandboxes, creating,
//! reusing and replacing sandboxes as needed.
//!
//! A [`LambdaManager`] holds one [`function::LambdaFunction`] per lambda
//! called so far; each keeps its idle instances (sandboxes) warm and starts
//! more, up to a bound, when calls overlap.

mod cron;
mod function;
pub mod import_cache;
mod manager;
pub mod ol_yaml;
pub mod packages;

pub use manager::{LambdaManager, LambdaSettings, PackageLayer, SandboxInfo, Stats};

use std::time::Duration;

/// What caused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// An HTTP request to `/run/<name>`.
    Http,
    /// A schedule in ol.yaml `triggers.cron`.
    Cron,
}

/// Why an invocation failed; each maps to one HTTP status (DESIGN.md §1.3).
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// No lambda of that name in the registry (404).
    #[error("no lambda named {0:?} in the registry")]
    NotFound(String),
    /// The name cannot name a lambda (400).
    #[error("{0}")]
    BadName(String),
    /// The lambda's code does not load (500).
    #[error("lambda failed to load: {error}")]
    LoadFailed {
        /// One-line summary.
        error: String,
        /// Short traceback.
        traceback: String,
    },
    /// User code raised (500).
    #[error("{error}")]
    Raised {
        /// `ExcType: message`.
        error: String,
        /// Short traceback.
        traceback: String,
    },
    /// The sandbox died mid-call (502); the next call gets a fresh one.
    #[error("{0}")]
    Died(String),
    /// The response was over `limits.max_response_mb`; the sandbox was
    /// destroyed (502).
    #[error("{0}")]
    ResponseTooLarge(String),
    /// The sandbox was dead before the request reached it (retried once,
    /// then 502).
    #[error("{0}")]
    NotDelivered(String),
    /// The sandbox ran out of memory and was killed (507).
    #[error("{0}")]
    OutOfMemory(String),
    /// The call ran past the runtime limit (504); the sandbox was killed.
    #[error("lambda exceeded its runtime limit of {}s", .0.as_secs())]
    Timeout(Duration),
    /// The memory pool stayed full (503).
    #[error("{0}")]
    NoMemory(String),
    /// ol.yaml does not allow the HTTP method (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The body is over the lambda's own limit (413).
    #[error("{0}")]
    BodyTooLarge(String),
    /// Too many calls of the lambda wait already (429).
    #[error("{0}")]
    QueueFull(String),
    /// The worker is shutting down (503).
    #[error("the worker is shutting down")]
    ShuttingDown,
    /// The lambda's requirements cannot be resolved or installed (500);
    /// the message names the requirement.
    #[error("{0}")]
    Packages(String),
    /// Anything else: sandbox creation or registry failure (500).
    #[error("{0}")]
    Internal(String),
}

impl InvokeError {
    /// The HTTP status this error is answered with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::NotFound(_) => 404,
            Self::BadName(_) => 400,
            Self::MethodNotAllowed(_) => 405,
            Self::QueueFull(_) => 429,
            Self::BodyTooLarge(_) => 413,
            Self::LoadFailed { .. }
            | Self::Raised { .. }
            | Self::Internal(_)
            | Self::Packages(_) => 500,
            Self::Died(_) | Self::NotDelivered(_) | Self::ResponseTooLarge(_) => 502,
            Self::ShuttingDown | Self::NoMemory(_) => 503,
            Self::Timeout(_) => 504,
            Self::OutOfMemory(_) => 507,
        }
    }

    /// The traceback to show with the error, if any.
    pub fn traceback(&self) -> Option<&str> {
        match self {
            Self::LoadFailed { traceback, .. } | Self::Raised { traceback, .. }
                if !traceback.is_empty() =>
            {
                Some(traceback)
            }
            _ => None,
        }
    }
}
