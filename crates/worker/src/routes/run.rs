//! `/run/<name>[/<path>]` and `POST /runLambda/<name>`: reads the request
//! (within `limits.max_body_mb`), calls the lambda through the lambda
//! layer, and answers with its response or the JSON error body; times the
//! whole request as the `web-request` phase and counts it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use ol_lambda::InvokeError;
use ol_obs::{Phase, request_id};
use ol_sandbox::{Invocation, Reply};
use tracing::Instrument;

use crate::config::Tracebacks;
use crate::conn::{RequestBody, StallLimited};
use crate::response::{Body, body_error, error_response, json_response};
use crate::state::AppState;

/// How far past the body limit a request is still read (and discarded) so
/// that its client sees the 413 rather than a reset connection.
const DRAIN_BYTES: usize = 16 << 20;

/// `/run/<name>[/<path>]`: `rest` is what follows `/run/`.
pub(crate) async fn run<B: RequestBody>(
    state: &AppState,
    req: Request<B>,
    rest: &str,
) -> Response<Body> {
    let (name, sub_path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    call(state, req, name, sub_path).await.0
}

/// Calls lambda `name` with `req` as the request its `f(event, ctx)` sees
/// at `sub_path`: every call, HTTP or gRPC ([`crate::grpc`]), comes through
/// here. The response, and whether the lambda itself answered (its status
/// is its own); a failed call's response carries the [`FailedCall`] it
/// failed with as an extension.
pub(crate) async fn call<B: RequestBody>(
    state: &AppState,
    req: Request<B>,
    name: &str,
    sub_path: &str,
) -> (Response<Body>, bool) {
    let arrived = Instant::now();
    state.counters.invocations.fetch_add(1, Ordering::Relaxed);
    let span = Phase::Request.span();
    span.record("lambda", name);
    let (response, by_lambda) = answer(state, req, name, sub_path).instrument(span).await;
    let status = response.status().as_u16();
    let took = arrived.elapsed();
    Phase::Request.record(took);
    state.metrics.record_request(name, status, took, by_lambda);
    // A status the lambda chose itself (an app's 404) is no error here.
    let class = if by_lambda { 2 } else { status / 100 };
    if class == 4 {
        state.counters.errors_4xx.fetch_add(1, Ordering::Relaxed);
    } else if class == 5 {
        state.counters.errors_5xx.fetch_add(1, Ordering::Relaxed);
    }
    (response, by_lambda)
}

/// How a call the lambda layer refused or failed ended, kept on its
/// response (as an extension) for callers that answer in another protocol
/// than HTTP: the gRPC code is chosen from the failure itself, not guessed
/// back from its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FailedCall {
    /// The gRPC code of the failure ([`crate::invoke_status::grpc_code_of`]).
    pub grpc_code: tonic::Code,
}

/// The response to a call of lambda `name`, with the call's request id
/// in `X-Request-Id` (the client's when it sent a plain one), and whether
/// the lambda itself answered (its status is its own).
async fn answer<B: RequestBody>(
    state: &AppState,
    req: Request<B>,
    name: &str,
    sub_path: &str,
) -> (Response<Body>, bool) {
    let request_id = request_id::from_client(
        req.headers()
            .get(request_id::HEADER)
            .map(HeaderValue::as_bytes),
    );
    // Made before the id moves into the invocation: the header value is
    // the id of the error path too (no second copy per call).
    let id_header = HeaderValue::from_str(&request_id).ok();
    let (mut response, by_lambda) = match read_invocation(
        req,
        sub_path,
        request_id,
        state.max_body_bytes,
        state.body_stall,
    )
    .await
    {
        Ok(inv) => match state.lambdas.invoke(name, inv).await {
            Ok(reply) => (reply_response(reply), true),
            Err(e) => {
                // Ids are plain ASCII (request_id::is_acceptable or hex).
                let id = id_header.as_ref().and_then(|h| h.to_str().ok());
                let response = invoke_error_response(state, name, id.unwrap_or(""), &e);
                (response, false)
            }
        },
        Err(resp) => (resp, false),
    };
    if let Some(id) = id_header {
        // The worker's, never the lambda's: the lambda cannot name another call.
        response
            .headers_mut()
            .insert(HeaderName::from_static(request_id::HEADER), id);
    }
    (response, by_lambda)
}

/// The JSON error answering a failed call; the worker log gets the error
/// with its traceback, the client the traceback only when config.json
/// `tracebacks` is "client".
fn invoke_error_response(
    state: &AppState,
    name: &str,
    request_id: &str,
    e: &InvokeError,
) -> Response<Body> {
    let status = crate::invoke_status::status_of(e);
    log_invoke_error(name, request_id, status, e);
    // Only a lambda the worker has loaded gets a log entry (a name nobody
    // installed must not make a file, even while the registry is down);
    // its own failures, not its callers' mistakes.
    if let (Some(logs), true) = (&state.lambda_logs, status.is_server_error())
        && state.lambdas.knows(name)
    {
        let text = match e.traceback() {
            Some(tb) => format!("{} {e}\n{tb}", status.as_u16()),
            None => format!("{} {e}", status.as_u16()),
        };
        logs.failure(name, request_id, &text);
    }
    let traceback = match state.tracebacks {
        Tracebacks::Client => e.traceback(),
        Tracebacks::Log => None,
    };
    let mut body = serde_json::json!({
        "error": e.to_string(),
        "lambda": name,
        "request_id": request_id,
    });
    if let Some(tb) = traceback {
        body["traceback"] = tb.into();
    }
    let mut response = json_response(status, &body);
    response.extensions_mut().insert(FailedCall {
        grpc_code: crate::invoke_status::grpc_code_of(e),
    });
    if let InvokeError::MethodNotAllowed { allowed, .. } = e
        && let Ok(allow) = HeaderValue::from_str(&allowed.join(", "))
    {
        // RFC 9110: a 405 names the methods that would work (none: empty).
        response.headers_mut().insert(http::header::ALLOW, allow);
    }
    response
}

/// One line in the worker log per failed call. What the lambda wrote (its
/// error and traceback) is quoted with escapes, so it cannot start a line
/// of its own that would pass for the worker's.
fn log_invoke_error(name: &str, request_id: &str, status: StatusCode, e: &InvokeError) {
    let status = status.as_u16();
    let error = e.to_string();
    match (e, e.traceback()) {
        (InvokeError::NotFound(_) | InvokeError::BadName(_), _) => {
            tracing::info!(lambda = name, request_id, status, ?error, "call failed")
        }
        (_, Some(traceback)) => {
            tracing::warn!(
                lambda = name,
                request_id,
                status,
                ?error,
                traceback,
                "call failed"
            )
        }
        (_, None) => tracing::warn!(lambda = name, request_id, status, ?error, "call failed"),
    }
}

async fn read_invocation<B: RequestBody>(
    req: Request<B>,
    sub_path: &str,
    request_id: String,
    max_body: usize,
    stall: Duration,
) -> Result<Invocation, Response<Body>> {
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body is over the {max_body}-byte limit (limits.max_body_mb)"),
            None,
            None,
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let (parts, body) = req.into_parts();
    let mut body = StallLimited::new(body, stall);
    if declared.is_some_and(|n| n > (max_body + DRAIN_BYTES) as u64) {
        // Far too large to be worth reading: answer now, drop the connection.
        return Err(too_large());
    }
    let mut collected = BytesMut::new();
    let mut over = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| body_error(&*e))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if over || collected.len() + data.len() > max_body {
            // Read on (discarding) so the client gets to see the 413
            // instead of a broken pipe, but only so far.
            over = true;
            collected.clear();
            if declared.is_none_or(|n| n > (max_body + DRAIN_BYTES) as u64) {
                break;
            }
            continue;
        }
        collected.extend_from_slice(&data);
    }
    if over {
        return Err(too_large());
    }
    let body = collected.freeze();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    Ok(Invocation {
        method: parts.method.as_str().to_string(),
        path: sub_path.to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers,
        body,
        request_id,
        trigger: None,
    })
}

fn reply_response(reply: Reply) -> Response<Body> {
    let mut resp = Response::new(Full::new(reply.body));
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let headers = resp.headers_mut();
    for (k, v) in reply.headers {
        let (Ok(name), Ok(value)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) else {
            continue;
        };
        // Framing is ours to set: hyper computes content-length.
        if is_hop_by_hop(&name) {
            continue;
        }
        headers.append(name, value);
    }
    resp
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "content-length"
            | "upgrade"
            | "te"
            | "trailer"
    )
}
