//! The worker's registry API (docs/architecture.md §1.3), for a local registry:
//! `GET /registry/` lists, `POST /registry/NAME` installs a tar.gz (201),
//! `DELETE /registry/NAME` removes, `GET /registry/NAME/config` shows the
//! parsed ol.yaml, and `GET /registry/NAME.tar.gz` serves the packed
//! lambda so this worker can be another's HTTP registry. Uploads go
//! through [`crate::upload`]'s checks before anything is replaced.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use ol_lambda::ol_yaml::{self, LambdaConfig};
use ol_registry::{DirRegistry, Registry, RegistryError, UnpackLimits};
use serde_json::json;

use crate::conn::{RequestBody, StallLimited};
use crate::response::{Body, body_error, error_response, json_response, method_not_allowed};
use crate::state::AppState;
use crate::upload::install_checked;

/// Handles `/registry` and `/registry/...`; `rest` is what follows
/// `/registry`.
pub(crate) async fn handle<B: RequestBody>(
    state: &AppState,
    req: Request<B>,
    rest: &str,
) -> Response<Body> {
    let Some(registry) = state.registry.clone() else {
        let remote = state.registry_health.location();
        return error_response(
            StatusCode::NOT_FOUND,
            &format!("this worker's registry is remote ({remote}): install lambdas there"),
            None,
            None,
        );
    };
    let rest = rest.trim_start_matches('/');
    let (name, sub) = match rest.split_once('/') {
        Some((name, sub)) => (name, sub),
        None => (rest, ""),
    };
    match (req.method().clone(), name, sub) {
        (Method::GET, "", "") => {
            blocking(move || {
                let names = registry.list()?;
                Ok(json_response(StatusCode::OK, &json!({ "lambdas": names })))
            })
            .await
        }
        (Method::GET, file, "") if file.ends_with(".tar.gz") => {
            let lambda = file.trim_end_matches(".tar.gz").to_string();
            let if_none_match = req
                .headers()
                .get(http::header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            blocking(move || serve_archive(&registry, &lambda, if_none_match.as_deref())).await
        }
        (Method::POST, name, "") if !name.is_empty() => install(state, registry, req, name).await,
        (Method::DELETE, name, "") if !name.is_empty() => {
            let lambda = name.to_string();
            let answer = blocking(move || {
                registry.remove(&lambda)?;
                Ok(Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .body(Body::default())
                    .unwrap_or_default())
            })
            .await;
            if answer.status().is_success() {
                state.lambdas.forget(name);
                state.triggers.rescan_soon();
                tracing::info!(lambda = name, "removed from the registry");
            }
            answer
        }
        (Method::GET, name, "config") if !name.is_empty() => {
            let lambda = name.to_string();
            blocking(move || {
                let code = registry
                    .fetch(&lambda)?
                    .ok_or_else(|| RegistryError::NotFound(lambda.clone()))?;
                match ol_yaml::load(&code.dir) {
                    Ok(config) => Ok(json_response(
                        StatusCode::OK,
                        &config_json(&lambda, &config),
                    )),
                    Err(e) => Ok(error_response(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &e.to_string(),
                        Some(&lambda),
                        None,
                    )),
                }
            })
            .await
        }
        (_, name, sub) => method_not_allowed(
            "registry routes: GET /registry/, POST or DELETE /registry/NAME, GET /registry/NAME/config",
            match (name, sub) {
                ("", _) | (_, "config") => "GET",
                (file, "") if file.ends_with(".tar.gz") => "GET",
                _ => "POST, DELETE",
            },
        ),
    }
}

/// `GET /registry/NAME.tar.gz`: the lambda packed, with its version as
/// ETag, so this worker can be the HTTP registry of others (304 when the
/// caller has it already).
fn serve_archive(
    registry: &DirRegistry,
    name: &str,
    if_none_match: Option<&str>,
) -> Result<Response<Body>, RegistryError> {
    let code = registry
        .fetch(name)?
        .ok_or_else(|| RegistryError::NotFound(name.to_string()))?;
    let etag = format!("\"{}\"", code.version);
    let builder = Response::builder().header(http::header::ETAG, &etag);
    let resp = if if_none_match == Some(etag.as_str()) {
        builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::default())
    } else {
        let packed = ol_registry::pack_lambda(&code.dir)?;
        builder
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/gzip")
            .body(Body::new(Bytes::from(packed)))
    };
    Ok(resp.unwrap_or_default())
}

/// `POST /registry/NAME`: checks the archive and its ol.yaml in a scratch
/// dir, then installs it and makes new calls use it.
async fn install<B: RequestBody>(
    state: &AppState,
    registry: Arc<DirRegistry>,
    req: Request<B>,
    name: &str,
) -> Response<Body> {
    let limits = UnpackLimits::default();
    let body = StallLimited::new(req.into_body(), state.body_stall);
    let max = usize::try_from(limits.max_compressed_bytes).unwrap_or(usize::MAX);
    let body: Bytes = match Limited::new(body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_none() => return body_error(&*e),
        Err(e) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "cannot read the upload (at most {} bytes): {e}",
                    limits.max_compressed_bytes
                ),
                Some(name),
                None,
            );
        }
    };
    let check_dir = state.upload_dir.clone();
    let lambda = name.to_string();
    let limits = state.lambda_limits.clone();
    let answer = blocking(move || {
        let code = install_checked(&registry, &check_dir, &lambda, &body, &limits)?;
        Ok(json_response(
            StatusCode::CREATED,
            &json!({ "lambda": lambda, "version": code.version }),
        ))
    })
    .await;
    if answer.status() == StatusCode::CREATED {
        state.lambdas.forget(name);
        state.triggers.rescan_soon();
        tracing::info!(lambda = name, "installed in the registry");
    }
    answer
}

/// Runs registry work off the async threads and maps its errors.
async fn blocking(
    work: impl FnOnce() -> Result<Response<Body>, RegistryError> + Send + 'static,
) -> Response<Body> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            let status = match &e {
                RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
                RegistryError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            };
            error_response(status, &e.to_string(), None, None)
        }
        Err(e) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("registry task failed: {e}"),
            None,
            None,
        ),
    }
}

fn config_json(name: &str, config: &LambdaConfig) -> serde_json::Value {
    let l = &config.limits;
    json!({
        "lambda": name,
        "triggers": {
            "http": config.triggers.allowed_methods(),
            "cron": config.triggers.cron.iter().map(|c| c.schedule.as_str()).collect::<Vec<_>>(),
            "nats": config.triggers.nats.iter().map(|t| json!({
                "url": t.url.to_string(),
                "stream": t.stream.as_str(),
                "subject": t.subject.as_str(),
                "durable": t.durable.as_str(),
                "concurrency": t.concurrency,
                "retries": t.retries,
                "backoff_ms": t.backoff_ms,
                "max_backoff_ms": t.max_backoff_ms,
                "dead_letter": t.dead_letter.as_ref().map(|d| d.as_str()),
            })).collect::<Vec<_>>(),
            "kafka": config.triggers.kafka.iter().map(|t| json!({
                "brokers": t.brokers.iter().map(|b| b.address()).collect::<Vec<_>>(),
                "topic": t.topic.as_str(),
                "group": t.group.as_str(),
                "concurrency": t.concurrency,
                "retries": t.retries,
                "backoff_ms": t.backoff_ms,
                "max_backoff_ms": t.max_backoff_ms,
                "dead_letter": t.dead_letter.as_ref().map(|d| d.as_str()),
            })).collect::<Vec<_>>(),
        },
        "environment": config.environment,
        "limits": {
            "procs": l.procs,
            "mem_mb": l.mem_mb,
            "cpu_percent": l.cpu_percent,
            "swappiness": l.swappiness,
            "runtime_sec": l.runtime_sec,
            "max_body_mb": l.max_body_mb,
            "max_response_mb": l.max_response_mb,
            "disk_mb": l.disk_mb,
            "log_kb": l.log_kb,
        },
    })
}
