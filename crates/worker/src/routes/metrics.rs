//! `GET /metrics`: every metric in Prometheus (OpenMetrics) text, as
//! [`crate::metrics::WorkerMetrics`] encodes it.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::response::{Body, error_response};
use crate::state::AppState;

/// Answers `GET /metrics`.
pub(crate) fn metrics(state: &AppState) -> Response<Body> {
    match state.metrics.encode() {
        Ok(text) => {
            let mut resp = Response::new(Full::new(Bytes::from(text)));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        Err(_) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics",
            None,
            None,
        ),
    }
}
