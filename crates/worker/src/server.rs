//! The worker's HTTP server (docs/architecture.md §1.3) on hyper: serves connections
//! within the `http` limits ([`crate::conn`]) and sends each request to its
//! route (`routes/`), or, when it is a gRPC call, to [`crate::grpc`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::Either;
use tokio::net::TcpListener;

use crate::access::AdminRoute;
use crate::conn::{ConnLimits, RequestBody};
use crate::grpc::{self, GrpcBody};
use crate::response::{Body, error_response, method_not_allowed};
use crate::routes;
use crate::state::AppState;

/// Serves HTTP (and gRPC over h2c) on `listener` within `limits` until
/// `shutdown` completes, then lets open requests finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    crate::conn::serve_connections(listener, limits, shutdown, grace, move |req| {
        route(Arc::clone(&state), req)
    })
    .await;
}

/// A gRPC call to [`grpc::serve`], any other request to [`dispatch`].
async fn route<B: RequestBody>(
    state: Arc<AppState>,
    req: Request<B>,
) -> Response<Either<Body, GrpcBody>> {
    if grpc::is_grpc(&req) {
        grpc::serve(state, req).await.map(Either::Right)
    } else {
        dispatch(state, req).await.map(Either::Left)
    }
}

/// Sends `req` to its route; an admin route only once its gate
/// ([`crate::access`]) lets the request through.
async fn dispatch<B: RequestBody>(state: Arc<AppState>, req: Request<B>) -> Response<Body> {
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/run/") {
        let rest = rest.to_string();
        routes::run::run(&state, req, &rest).await
    } else if let Some(rest) = path.strip_prefix("/runLambda/") {
        let rest = rest.to_string();
        routes::run::run(&state, req, &rest).await
    } else if let Some(rest) = path.strip_prefix("/registry") {
        // Anything but a read may change the registry (or is refused by it).
        let route = if req.method() == Method::GET {
            AdminRoute::RegistryRead
        } else {
            AdminRoute::RegistryWrite
        };
        if let Some(refused) = state.admin.refusal(route, req.headers()) {
            return refused;
        }
        let rest = rest.to_string();
        routes::registry::handle(&state, req, &rest).await
    } else if let Some(name) = path.strip_prefix("/logs/") {
        if let Some(refused) = state.admin.refusal(AdminRoute::Stats, req.headers()) {
            return refused;
        }
        if req.method() != Method::GET {
            return method_not_allowed("use GET", "GET");
        }
        let name = name.to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        routes::logs::logs(&state, &name, &query).await
    } else {
        let gated = match path {
            "/stats" => Some(AdminRoute::Stats),
            "/metrics" => Some(AdminRoute::Metrics),
            _ => None,
        };
        if let Some(refused) = gated.and_then(|route| state.admin.refusal(route, req.headers())) {
            return refused;
        }
        match (req.method(), path) {
            (&Method::GET, "/status") => routes::status::status(),
            (&Method::GET, "/stats") => routes::stats::stats(&state),
            (&Method::GET, "/metrics") => routes::metrics::metrics(&state),
            (_, "/status" | "/stats" | "/metrics") => method_not_allowed("use GET", "GET"),
            _ => error_response(
                StatusCode::NOT_FOUND,
                &format!("no route {path}; lambdas are called at /run/<name>"),
                None,
                None,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use serde_json::{Value, json};

    use crate::state::idle_state;
    use crate::stats::WorkerStats;

    /// Sends one request through the routes of a worker that has no
    /// lambdas; the status and the body as text.
    async fn send(state: &Arc<AppState>, method: Method, path: &str, body: &[u8]) -> (u16, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::copy_from_slice(body)))
            .expect("request");
        let resp = dispatch(Arc::clone(state), req).await;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn json_of(text: &str) -> Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    #[tokio::test]
    async fn every_405_says_what_is_allowed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = Arc::new(idle_state(dir.path()));
        for (method, path, allow) in [
            (Method::POST, "/stats", "GET"),
            (Method::DELETE, "/metrics", "GET"),
            (Method::PUT, "/status", "GET"),
            (Method::POST, "/logs/hello", "GET"),
            (Method::PUT, "/registry/hello", "POST, DELETE"),
            (Method::POST, "/registry/", "GET"),
            (Method::POST, "/registry/hello/config", "GET"),
        ] {
            let req = Request::builder()
                .method(method.clone())
                .uri(path)
                .body(Full::new(Bytes::new()))
                .expect("request");
            let resp = dispatch(Arc::clone(&state), req).await;
            assert_eq!(
                resp.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            assert_eq!(
                resp.headers()
                    .get(http::header::ALLOW)
                    .and_then(|v| v.to_str().ok()),
                Some(allow),
                "{method} {path}"
            );
        }
    }

    #[tokio::test]
    async fn status_and_unknown_routes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = Arc::new(idle_state(dir.path()));
        assert_eq!(
            send(&state, Method::GET, "/status", b"").await,
            (200, "ready".into())
        );
        let (status, body) = send(&state, Method::POST, "/stats", b"").await;
        assert_eq!(
            (status, json_of(&body)["error"].as_str()),
            (405, Some("use GET"))
        );
        let (status, body) = send(&state, Method::GET, "/nowhere", b"").await;
        assert_eq!(status, 404);
        assert_eq!(
            json_of(&body),
            json!({"error": "no route /nowhere; lambdas are called at /run/<name>", "lambda": null})
        );
    }

    #[tokio::test]
    async fn calls_that_fail_are_answered_in_json_and_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = Arc::new(idle_state(dir.path()));
        let (status, body) = send(&state, Method::POST, "/run/nope/sub", b"{}").await;
        assert_eq!(status, 404);
        assert_eq!(json_of(&body)["lambda"], "nope");
        let (status, _) = send(&state, Method::POST, "/runLambda/a.b", b"{}").await;
        assert_eq!(status, 400, "not a lambda name");
        let (status, body) = send(&state, Method::POST, "/run/nope", &[b'x'; 2048]).await;
        assert_eq!(status, 413);
        assert_eq!(
            json_of(&body)["error"],
            "request body is over the 1024-byte limit (limits.max_body_mb)"
        );

        let (status, body) = send(&state, Method::GET, "/stats", b"").await;
        assert_eq!(status, 200);
        let stats: WorkerStats = serde_json::from_str(&body).expect("/stats schema");
        assert_eq!(
            (stats.invocations, stats.errors_4xx, stats.errors_5xx),
            (3, 3, 0)
        );
        let by_status: Vec<(&str, u64)> = stats
            .errors_by_status
            .iter()
            .map(|(s, n)| (s.as_str(), *n))
            .collect();
        assert_eq!(by_status, [("400", 1), ("404", 1), ("413", 1)]);
        for phase in ol_obs::Phase::ALL {
            assert!(
                stats.recorded.phases.contains_key(phase.name()),
                "{phase:?}"
            );
        }
        for counter in ol_obs::counters::ALL {
            assert!(stats.recorded.counters.contains_key(counter.name()));
        }
        assert_eq!(stats.lambda_layer.lambda_count, 0);
        // The route writes what the schema says, key for key.
        let reencoded = serde_json::to_value(&stats).expect("serialize");
        assert_eq!(reencoded, json_of(&body));
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = Arc::new(idle_state(dir.path()));
        let req = Request::get("/metrics")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = dispatch(Arc::clone(&state), req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers()[http::header::CONTENT_TYPE]
                .to_str()
                .is_ok_and(|t| t.starts_with("application/openmetrics-text"))
        );
        let text = resp.into_body().collect().await.expect("body").to_bytes();
        assert!(String::from_utf8_lossy(&text).contains("ol_sandboxes{state=\"idle\"} 0"));
    }

    #[tokio::test]
    async fn admin_routes_answer_only_through_their_gates() {
        use crate::access::{Access, AdminConfig, AdminGates, AdminKey};
        const KEY: &str = "fedcba9876543210fedcba98";
        let dir = tempfile::tempdir().expect("tempdir");
        let mut state = idle_state(dir.path());
        let config = AdminConfig {
            key: AdminKey::new(KEY),
            metrics: Access::Off,
            ..AdminConfig::default()
        };
        state.admin = AdminGates::new(&config, Some(AdminKey::new(KEY)), "0.0.0.0", false, true)
            .expect("gates");
        let state = Arc::new(state);
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).expect("mkdir");
        std::fs::write(src.join("f.py"), "def f(event):\n    return 1\n").expect("f.py");
        let upload = ol_registry::pack_lambda(&src).expect("pack");
        for (method, path) in [
            (Method::POST, "/registry/hello"),
            (Method::DELETE, "/registry/hello"),
            (Method::PUT, "/registry/hello"),
            (Method::GET, "/registry/"),
            (Method::GET, "/registry/hello.tar.gz"),
            (Method::GET, "/registryhello"),
            (Method::GET, "/stats"),
            (Method::POST, "/stats"),
        ] {
            let (status, body) = send(&state, method.clone(), path, &upload).await;
            assert_eq!(status, 401, "{method} {path}: {body}");
            assert!(json_of(&body)["error"].is_string(), "{body}");
            assert!(!body.contains(KEY));
        }
        assert!(
            !dir.path().join("registry/hello").exists(),
            "nothing stored"
        );
        let (status, body) = send(&state, Method::GET, "/metrics", b"").await;
        assert_eq!(
            (status, json_of(&body)["error"].as_str()),
            (
                403,
                Some("GET /metrics is off on this worker (admin.metrics is \"off\")")
            )
        );
        // /status and calls never need the key.
        assert_eq!(send(&state, Method::GET, "/status", b"").await.0, 200);
        assert_eq!(send(&state, Method::POST, "/run/nope", b"{}").await.0, 404);
        // With the key, the upload is installed and /stats does not show it.
        let req = Request::post("/registry/hello")
            .header(http::header::AUTHORIZATION, format!("Bearer {KEY}"))
            .body(Full::new(Bytes::from(upload)))
            .expect("request");
        let resp = dispatch(Arc::clone(&state), req).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert!(dir.path().join("registry/hello").exists());
        let req = Request::get("/stats")
            .header(http::header::AUTHORIZATION, format!("Bearer {KEY}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = dispatch(Arc::clone(&state), req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let stats = resp.into_body().collect().await.expect("body").to_bytes();
        assert!(!String::from_utf8_lossy(&stats).contains(KEY));
    }

    #[tokio::test]
    async fn the_registry_api_lists_refuses_and_answers_remote() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = Arc::new(idle_state(dir.path()));
        let (status, body) = send(&state, Method::GET, "/registry/", b"").await;
        assert_eq!((status, json_of(&body)), (200, json!({"lambdas": []})));
        let (status, body) = send(&state, Method::POST, "/registry/hello", b"not gzip").await;
        assert_eq!(status, 400, "{body}");
        let (status, _) = send(&state, Method::GET, "/registry/ghost/config", b"").await;
        assert_eq!(status, 404);
        let (status, _) = send(&state, Method::PUT, "/registry/hello", b"").await;
        assert_eq!(status, 405);

        let mut remote = idle_state(dir.path());
        remote.registry = None;
        let (status, body) = send(&Arc::new(remote), Method::GET, "/registry/", b"").await;
        assert_eq!(status, 404);
        let error = json_of(&body)["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            error.starts_with("this worker's registry is remote (")
                && error.ends_with("): install lambdas there"),
            "{error}"
        );
    }
}
