//! Which HTTP status answers each way a call of a lambda can fail
//! (docs/architecture.md §1.3). The lambda layer's errors say what happened and nothing of HTTP;
//! this is the one place that maps them. The match has no catch-all, so a
//! new kind of failure cannot ship without a status chosen for it.

use http::StatusCode;
use ol_lambda::InvokeError;

/// The status a call that failed with `e` is answered with.
pub fn status_of(e: &InvokeError) -> StatusCode {
    match e {
        InvokeError::BadName(_) => StatusCode::BAD_REQUEST,
        InvokeError::NotFound(_) => StatusCode::NOT_FOUND,
        InvokeError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        InvokeError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        InvokeError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
        // The lambda's own failures, and ours.
        InvokeError::LoadFailed { .. }
        | InvokeError::Raised { .. }
        | InvokeError::Packages(_)
        | InvokeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        // Its sandbox failed it: the next call gets a fresh one.
        InvokeError::Died(_) | InvokeError::NotDelivered(_) | InvokeError::ResponseTooLarge(_) => {
            StatusCode::BAD_GATEWAY
        }
        InvokeError::NoMemory(_) | InvokeError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        InvokeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        InvokeError::OutOfMemory(_) => StatusCode::INSUFFICIENT_STORAGE,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_failure_has_its_documented_status() {
        let text = || "x".to_string();
        let cases = [
            (InvokeError::BadName(text()), 400),
            (InvokeError::NotFound(text()), 404),
            (
                InvokeError::MethodNotAllowed {
                    message: text(),
                    allowed: vec![],
                },
                405,
            ),
            (InvokeError::BodyTooLarge(text()), 413),
            (InvokeError::QueueFull(text()), 429),
            (
                InvokeError::LoadFailed {
                    error: text(),
                    traceback: text(),
                },
                500,
            ),
            (
                InvokeError::Raised {
                    error: text(),
                    traceback: text(),
                },
                500,
            ),
            (InvokeError::Packages(text()), 500),
            (InvokeError::Internal(text()), 500),
            (InvokeError::Died(text()), 502),
            (InvokeError::NotDelivered(text()), 502),
            (InvokeError::ResponseTooLarge(text()), 502),
            (InvokeError::NoMemory(text()), 503),
            (InvokeError::ShuttingDown, 503),
            (InvokeError::Timeout(Duration::from_secs(1)), 504),
            (InvokeError::OutOfMemory(text()), 507),
        ];
        for (e, status) in cases {
            assert_eq!(status_of(&e).as_u16(), status, "{e:?}");
        }
    }
}
