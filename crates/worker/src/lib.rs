//! Event layer of `ol` (docs/architecture.md §2): the worker's config, its directory,
//! its HTTP API, and its life: start, serve, stop, clean up after a crash.
//!
//! - [`lifecycle`] starts a worker over its [`workdir`] and [`config`],
//!   stops it, and cleans up after a crash; [`launch`] runs one in this
//!   process or starts one in the background.
//! - [`server`] serves HTTP within [`conn`]'s limits and sends each request
//!   to its route (`routes/`: run, registry, stats, metrics, status), which
//!   answer over the shared [`state`] with `response`'s bodies; a gRPC
//!   call (`ol.v1.Lambda/Invoke`, h2c on the same port) goes to [`grpc`],
//!   which calls the lambda through the same path as `/run/<name>`.
//! - [`stats`] is the `/stats` schema, [`metrics`] the `/metrics` registry,
//!   [`trace_file`] the Chrome trace; [`upload`] installs a lambda archive
//!   after checking it.
//! - [`access`] decides who may use the admin routes (registry,
//!   `/stats`, `/metrics`) and checks their key.
//! - [`client`] is the other side: a blocking client of a worker's API for
//!   the `ol` command and the benchmarks.

pub mod access;
pub mod client;
pub mod config;
pub mod conn;
pub mod grpc;
pub mod invoke_status;
pub mod launch;
pub mod lifecycle;
pub mod metrics;
mod response;
mod routes;
pub mod server;
pub mod state;
pub mod stats;
pub mod trace_file;
pub mod upload;
pub mod workdir;

use std::path::PathBuf;

pub use config::Config;
pub use lifecycle::{
    StopOutcome, check_startable, force_cleanup, run_worker, stop_process, stop_worker,
};
pub use workdir::{BaseSource, Running, WorkerDir, provision_base, write_config, write_examples};

/// Errors of the event layer; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The user asked for something that cannot be done as asked.
    #[error("{0}")]
    Usage(String),
    /// A filesystem operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// config.json or an override is wrong.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The sandbox layer failed to start or clean up.
    #[error(transparent)]
    Sandbox(#[from] ol_sandbox::SandboxError),
    /// The base could not be built or its Python not found.
    #[error(transparent)]
    Base(#[from] ol_base::BaseError),
    /// A worker (or the code store) started in the background did not
    /// come up.
    #[error("{what} {why}; its log {log} says:\n{tail}")]
    NotStarted {
        /// What was started: "the worker", "the registry".
        what: &'static str,
        /// What happened to it.
        why: String,
        /// Its log file.
        log: PathBuf,
        /// The end of what it logged since it was started.
        tail: String,
    },
    /// The port cannot be bound.
    #[error("cannot listen on {addr}: {source}{hint}")]
    Bind {
        /// Address tried.
        addr: String,
        /// The OS error.
        source: std::io::Error,
        /// What to do about it.
        hint: &'static str,
    },
}
