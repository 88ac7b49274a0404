//! `ol lb`: the balancer in front of the workers (docs/lb.md).
//!
//! The proxying, connection pooling, health checks and HTTP/2 are
//! HAProxy's; what is ours is the policy and its supervision:
//! - [`policy`]: round-robin, least-loaded, name (consistent hashing
//!   with bounded load) and content, as the engine's directives;
//! - [`workers`]: where the workers come from ([`WorkerSource`]), asked
//!   again every second, and the changes that make the engine match;
//! - [`haproxy`]: the engine's config, error pages and process;
//! - [`runtime_api`]: its admin socket (server state and load, servers
//!   added and removed at run time);
//! - [`supervisor`]: `ol lb up` in the foreground: the engine started,
//!   restarted if it dies, kept in step with the workers, stopped on
//!   SIGTERM;
//! - [`control`]: `up -d`, `down`, `status`.

pub mod cli;
pub mod control;
pub mod haproxy;
pub mod policy;
pub mod runtime_api;
pub mod supervisor;
pub mod workers;

use std::path::{Path, PathBuf};

pub use cli::{LbCommand, UpArgs};
pub use control::{LbState, SourceSpec};
pub use policy::{ContentKey, Policy, PolicyKind};
pub use workers::{Server, UrlWorkers, WorkerSource, WorkerUrl};

/// Errors of `ol lb`; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The user asked for something that cannot be done as asked.
    #[error("{0}")]
    Usage(String),
    /// A filesystem or process operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A worker's name does not resolve.
    #[error("cannot resolve worker {worker}: {source}")]
    Resolve {
        /// The worker's URL.
        worker: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// HAProxy is not installed.
    #[error(
        "haproxy is not installed: install it (`apt-get install haproxy`, 2.6 or later) or name it with OL_HAPROXY=/path/to/haproxy"
    )]
    NoHaproxy,
    /// HAProxy refused the config `ol lb` wrote.
    #[error("haproxy refused the config {config}: {said}")]
    BadConfig {
        /// The config file.
        config: PathBuf,
        /// What `haproxy -c` said.
        said: String,
    },
    /// The engine's admin socket did not answer.
    #[error("the balancer's admin socket {socket} did not answer `{command}`: {source}")]
    RuntimeApi {
        /// The socket.
        socket: PathBuf,
        /// The command sent.
        command: String,
        /// The error.
        source: std::io::Error,
    },
    /// The engine refused a runtime command.
    #[error("haproxy refused `{command}`: {said}")]
    Refused {
        /// The command sent.
        command: String,
        /// What it answered.
        said: String,
    },
    /// No balancer runs in the dir.
    #[error("no balancer runs in {0}: start one with `ol lb up -p {0}`")]
    NotRunning(PathBuf),
    /// A balancer already runs in the dir.
    #[error(
        "a balancer already runs in {dir} (pid {pid}, port {port}): stop it with `ol lb down -p {dir}`"
    )]
    AlreadyRunning {
        /// Its state dir.
        dir: PathBuf,
        /// Its pid.
        pid: u32,
        /// Its port.
        port: u16,
    },
    /// The engine exited as it started.
    #[error(
        "haproxy exited ({status}) as it started: its message is above, or in the balancer's log (is port {port} taken?)"
    )]
    EngineNotStarted {
        /// Its exit status.
        status: String,
        /// The port it was to listen on.
        port: u16,
    },
    /// The engine kept dying.
    #[error(
        "haproxy exited ({status}) {restarts} times within a minute; its log is above (or in the balancer's log)"
    )]
    EngineDied {
        /// Its last exit status.
        status: String,
        /// How many times it was restarted.
        restarts: usize,
    },
    /// Starting or stopping a process failed.
    #[error(transparent)]
    Process(#[from] ol_worker::WorkerError),
}

impl LbError {
    /// An [`LbError::Io`] maker for `map_err`.
    pub fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LbError {
        let path = path.to_path_buf();
        move |source| LbError::Io { what, path, source }
    }
}
