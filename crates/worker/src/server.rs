//! The worker's HTTP API (DESIGN.md §1.3) on hyper: routes, request bodies
//! with a size limit, and JSON error bodies.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use ol_lambda::{InvokeError, LambdaManager};
use ol_obs::Phase;
use ol_registry::DirRegistry;
use ol_sandbox::{Invocation, Reply};
use serde_json::json;
use std::path::PathBuf;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::conn::{BodyStalled, ConnLimits, StallLimited};
use crate::metrics::WorkerMetrics;

/// Counters the HTTP layer keeps.
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// Requests to `/run` and `/runLambda`.
    pub invocations: AtomicU64,
    /// Invocations answered with an error, by class.
    pub errors_4xx: AtomicU64,
    /// Invocations answered with a 5xx error.
    pub errors_5xx: AtomicU64,
}

/// What every request handler shares.
pub struct AppState {
    /// The lambda layer.
    pub lambdas: Arc<LambdaManager>,
    /// The local registry, for the registry API (`None` when the registry
    /// is remote).
    pub registry: Option<Arc<DirRegistry>>,
    /// Where uploads are unpacked and checked before they are installed.
    pub upload_dir: PathBuf,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// A request body that stops arriving for this long fails with 408
    /// (`http.idle_timeout_ms`).
    pub body_stall: Duration,
    /// Counters.
    pub counters: HttpCounters,
    /// Latency and per-lambda metrics (`/metrics`, part of `/stats`).
    pub metrics: WorkerMetrics,
}

pub(crate) type Body = Full<Bytes>;

/// How far past the body limit a request is still read (and discarded) so
/// that its client sees the 413 rather than a reset connection.
const DRAIN_BYTES: usize = 16 << 20;

/// Serves HTTP on `listener` within `limits` until `shutdown` completes,
/// then lets open requests finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    crate::conn::serve_connections(listener, limits, shutdown, grace, move |req| {
        handle(Arc::clone(&state), req)
    })
    .await;
}

async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/run/") {
        let rest = rest.to_string();
        run(&state, req, &rest).await
    } else if let Some(rest) = path.strip_prefix("/runLambda/") {
        let rest = rest.to_string();
        run(&state, req, &rest).await
    } else if let Some(rest) = path.strip_prefix("/registry") {
        let rest = rest.to_string();
        crate::registry_api::handle(&state, req, &rest).await
    } else {
        match (req.method(), path) {
            (&Method::GET, "/status") => text(StatusCode::OK, "ready"),
            (&Method::GET, "/stats") => stats(&state),
            (&Method::GET, "/metrics") => metrics(&state),
            (_, "/status" | "/stats" | "/metrics") => {
                error_response(StatusCode::METHOD_NOT_ALLOWED, "use GET", None, None)
            }
            _ => error_response(
                StatusCode::NOT_FOUND,
                &format!("no route {path}; lambdas are called at /run/<name>"),
                None,
                None,
            ),
        }
    }
}

/// `/run/<name>[/<path>]`: `rest` is what follows `/run/`.
async fn run(state: &AppState, req: Request<Incoming>, rest: &str) -> Response<Body> {
    let arrived = std::time::Instant::now();
    state.counters.invocations.fetch_add(1, Ordering::Relaxed);
    let (name, sub_path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let span = Phase::Request.span();
    span.record("lambda", name);
    let response = answer(state, req, name, sub_path).instrument(span).await;
    let status = response.status().as_u16();
    let took = arrived.elapsed();
    Phase::Request.record(took);
    state.metrics.record_request(name, status, took);
    let class = status / 100;
    if class == 4 {
        state.counters.errors_4xx.fetch_add(1, Ordering::Relaxed);
    } else if class == 5 {
        state.counters.errors_5xx.fetch_add(1, Ordering::Relaxed);
    }
    response
}

/// The response to a call of lambda `name`.
async fn answer(
    state: &AppState,
    req: Request<Incoming>,
    name: &str,
    sub_path: &str,
) -> Response<Body> {
    match read_invocation(req, sub_path, state.max_body_bytes, state.body_stall).await {
        Ok(inv) => match state.lambdas.invoke(name, inv).await {
            Ok(reply) => reply_response(reply),
            Err(e) => {
                let status = crate::invoke_status::status_of(&e);
                log_invoke_error(name, status, &e);
                error_response(status, &e.to_string(), Some(name), e.traceback())
            }
        },
        Err(resp) => resp,
    }
}

fn log_invoke_error(name: &str, status: StatusCode, e: &InvokeError) {
    match e {
        InvokeError::NotFound(_) | InvokeError::BadName(_) => {
            tracing::info!(lambda = name, status = status.as_u16(), "{e}")
        }
        _ => tracing::warn!(lambda = name, status = status.as_u16(), "{e}"),
    }
}

async fn read_invocation(
    req: Request<Incoming>,
    sub_path: &str,
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
    })
}

/// The answer to a request whose body could not be read: 408 when it
/// stalled, else 400.
pub(crate) fn body_error(e: &(dyn std::error::Error + 'static)) -> Response<Body> {
    let status = if e.downcast_ref::<BodyStalled>().is_some() {
        StatusCode::REQUEST_TIMEOUT
    } else {
        StatusCode::BAD_REQUEST
    };
    error_response(
        status,
        &format!("cannot read the request body: {e}"),
        None,
        None,
    )
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

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The JSON error body of DESIGN.md §1.3: `{"error": ..., "lambda": ...}`.
pub(crate) fn error_response(
    status: StatusCode,
    message: &str,
    lambda: Option<&str>,
    traceback: Option<&str>,
) -> Response<Body> {
    let mut body = json!({ "error": message, "lambda": lambda });
    if let Some(tb) = traceback {
        body["traceback"] = json!(tb);
    }
    json_response(status, &body)
}

fn stats(state: &AppState) -> Response<Body> {
    let c = &state.counters;
    let lambdas = state.lambdas.stats();
    let mut body = json!({
        "invocations": c.invocations.load(Ordering::Relaxed),
        "errors_4xx": c.errors_4xx.load(Ordering::Relaxed),
        "errors_5xx": c.errors_5xx.load(Ordering::Relaxed),
        "lambdas": lambdas.lambdas,
        "sandboxes": lambdas.sandboxes,
        "sandboxes_created": lambdas.sandboxes_created,
        "sandboxes_destroyed": lambdas.sandboxes_destroyed,
        "pauses": lambdas.pauses,
        "evictions": lambdas.evictions,
        "mem_pool_used_mb": lambdas.mem_pool_used_mb,
        "mem_pool_total_mb": lambdas.mem_pool_total_mb,
        "packages": lambdas.packages,
        "forked_from": lambdas.forked_from,
        "zygotes": lambdas.zygotes,
        "lambda_count": lambdas.lambdas.len(),
        "sandboxes_by_state": {
            "busy": lambdas.sandboxes_busy,
            "idle": lambdas.sandboxes_idle,
            "paused": lambdas.sandboxes_paused,
        },
    });
    if let Some(map) = body.as_object_mut() {
        state.metrics.stats_into(map);
    }
    json_response(StatusCode::OK, &body)
}

fn metrics(state: &AppState) -> Response<Body> {
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
