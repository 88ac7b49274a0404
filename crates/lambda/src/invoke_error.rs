//! Why a call of a lambda failed: [`InvokeError`].

use std::time::Duration;

/// Why an invocation failed. The worker answers each with its HTTP status
/// (docs/architecture.md §1.3); the variants say what happened, in the lambda layer's
/// terms, and the status each gets is the worker's to choose.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// No lambda of that name in the registry.
    #[error("no lambda named {0:?} in the registry")]
    NotFound(String),
    /// The name cannot name a lambda.
    #[error("{0}")]
    BadName(String),
    /// The lambda's code does not load.
    #[error("lambda failed to load: {error}")]
    LoadFailed {
        /// One-line summary.
        error: String,
        /// Short traceback.
        traceback: String,
    },
    /// User code raised.
    #[error("{error}")]
    Raised {
        /// `ExcType: message`.
        error: String,
        /// Short traceback.
        traceback: String,
    },
    /// The sandbox died mid-call; the next call gets a fresh one.
    #[error("{0}")]
    Died(String),
    /// The response was over `limits.max_response_mb`; the sandbox was
    /// destroyed.
    #[error("{0}")]
    ResponseTooLarge(String),
    /// The sandbox was dead before the request reached it (the call is
    /// retried once on a fresh sandbox, then reported as [`Self::Died`]).
    #[error("{0}")]
    NotDelivered(String),
    /// The sandbox ran out of memory and was killed.
    #[error("{0}")]
    OutOfMemory(String),
    /// The call ran past the runtime limit; the sandbox was killed.
    #[error("lambda exceeded its runtime limit of {}s", .0.as_secs())]
    Timeout(Duration),
    /// The memory pool stayed full.
    #[error("{0}")]
    NoMemory(String),
    /// ol.yaml does not allow the HTTP method.
    #[error("{message}")]
    MethodNotAllowed {
        /// What was refused and what ol.yaml allows.
        message: String,
        /// The methods ol.yaml allows (HTTP's `Allow` header).
        allowed: Vec<String>,
    },
    /// The body is over the lambda's own limit.
    #[error("{0}")]
    BodyTooLarge(String),
    /// Too many calls of the lambda wait already.
    #[error("{0}")]
    QueueFull(String),
    /// The worker is shutting down.
    #[error("the worker is shutting down")]
    ShuttingDown,
    /// The lambda's requirements cannot be resolved or installed;
    /// the message names the requirement.
    #[error("{0}")]
    Packages(String),
    /// Anything else: sandbox creation or registry failure.
    #[error("{0}")]
    Internal(String),
}

impl InvokeError {
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
