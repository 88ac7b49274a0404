//! Which HTTP status, and which gRPC code (docs/lb.md "gRPC"), answers
//! each way a call of a lambda can fail (docs/architecture.md §1.3). The lambda layer's errors say what happened and nothing of HTTP;
//! this is the one place that maps them. Each match has no catch-all, so a
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

/// The gRPC code a call that failed with `e` is answered with over gRPC
/// (docs/lb.md "gRPC"): the caller's mistakes are `INVALID_ARGUMENT` or
/// `NOT_FOUND`, overload and limits `RESOURCE_EXHAUSTED`, the lambda's own
/// failures `INTERNAL`.
pub fn grpc_code_of(e: &InvokeError) -> tonic::Code {
    use tonic::Code;
    match e {
        InvokeError::BadName(_) => Code::InvalidArgument,
        InvokeError::NotFound(_) => Code::NotFound,
        // gRPC calls are POSTs; a lambda that takes no POST cannot serve them.
        InvokeError::MethodNotAllowed { .. } => Code::Unimplemented,
        InvokeError::BodyTooLarge(_)
        | InvokeError::ResponseTooLarge(_)
        | InvokeError::QueueFull(_)
        | InvokeError::NoMemory(_)
        | InvokeError::OutOfMemory(_) => Code::ResourceExhausted,
        InvokeError::LoadFailed { .. }
        | InvokeError::Raised { .. }
        | InvokeError::Packages(_)
        | InvokeError::Internal(_)
        | InvokeError::Died(_)
        | InvokeError::NotDelivered(_) => Code::Internal,
        InvokeError::ShuttingDown => Code::Unavailable,
        InvokeError::Timeout(_) => Code::DeadlineExceeded,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_failure_has_its_documented_status_and_grpc_code() {
        use tonic::Code;
        let text = || "x".to_string();
        let cases = [
            (InvokeError::BadName(text()), 400, Code::InvalidArgument),
            (InvokeError::NotFound(text()), 404, Code::NotFound),
            (
                InvokeError::MethodNotAllowed {
                    message: text(),
                    allowed: vec![],
                },
                405,
                Code::Unimplemented,
            ),
            (
                InvokeError::BodyTooLarge(text()),
                413,
                Code::ResourceExhausted,
            ),
            (InvokeError::QueueFull(text()), 429, Code::ResourceExhausted),
            (
                InvokeError::LoadFailed {
                    error: text(),
                    traceback: text(),
                },
                500,
                Code::Internal,
            ),
            (
                InvokeError::Raised {
                    error: text(),
                    traceback: text(),
                },
                500,
                Code::Internal,
            ),
            (InvokeError::Packages(text()), 500, Code::Internal),
            (InvokeError::Internal(text()), 500, Code::Internal),
            (InvokeError::Died(text()), 502, Code::Internal),
            (InvokeError::NotDelivered(text()), 502, Code::Internal),
            (
                InvokeError::ResponseTooLarge(text()),
                502,
                Code::ResourceExhausted,
            ),
            (InvokeError::NoMemory(text()), 503, Code::ResourceExhausted),
            (InvokeError::ShuttingDown, 503, Code::Unavailable),
            (
                InvokeError::Timeout(Duration::from_secs(1)),
                504,
                Code::DeadlineExceeded,
            ),
            (
                InvokeError::OutOfMemory(text()),
                507,
                Code::ResourceExhausted,
            ),
        ];
        for (e, status, code) in cases {
            assert_eq!(status_of(&e).as_u16(), status, "{e:?}");
            assert_eq!(grpc_code_of(&e), code, "{e:?}");
        }
    }
}
