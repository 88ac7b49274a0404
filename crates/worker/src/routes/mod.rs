//! The worker's HTTP routes, one module per route family. Each takes the
//! shared [`crate::state::AppState`] and answers with
//! [`crate::response`]'s bodies; [`crate::server`] picks the route.
//!
//! - [`run`]: `/run/<name>[/<path>]`, `/runLambda/<name>`: calling lambdas
//! - [`registry`]: `/registry/...`: the local registry's API
//! - [`stats`]: `GET /stats`: JSON ([`crate::stats::WorkerStats`])
//! - [`metrics`]: `GET /metrics`: Prometheus text
//! - [`logs`]: `GET /logs/<name>`: a lambda's kept output and failures
//! - [`status`]: `GET /status`: `ready` once the worker serves

pub(crate) mod logs;
pub(crate) mod metrics;
pub(crate) mod registry;
pub(crate) mod run;
pub(crate) mod stats;
pub(crate) mod status;
