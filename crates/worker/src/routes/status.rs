//! `GET /status`: `ready`, the readiness check `ol worker up -d` (and load
//! balancers) poll; it never leaves the HTTP layer.

use http::{Response, StatusCode};

use crate::response::{Body, text_response};

/// Answers `GET /status`.
pub(crate) fn status() -> Response<Body> {
    text_response(StatusCode::OK, "ready")
}
