//! `GET /stats`: the worker's [`WorkerStats`](crate::stats::WorkerStats)
//! as JSON.

use http::{Response, StatusCode};

use crate::response::{Body, error_response, json_response};
use crate::state::AppState;

/// Answers `GET /stats`.
pub(crate) fn stats(state: &AppState) -> Response<Body> {
    // Through a JSON value, whose object keys are sorted: the same order
    // as ever, whatever the order of the schema's fields.
    match serde_json::to_value(state.stats()) {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(e) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the stats: {e}"),
            None,
            None,
        ),
    }
}
