//! Sandbox layer of `ol` (docs/architecture.md §2, §3.1): the [`Sandbox`] and
//! [`SandboxPool`] traits every backend implements, the [`SafeSandbox`]
//! wrapper that talks the runtime protocol and turns every failure into an
//! error (never a panic), and the backends themselves.
//!
//! - [`Backend`] (`backend.rs`): a pool of a kind, from [`Settings`]; and
//!   [`cleanup`] after any backend;
//! - [`sock`]: the isolated backend; [`process`]: plain child processes;
//!   `fake` (cargo feature `fake`): threads speaking the protocol, for
//!   tests of the layers above;
//! - what the backends share: `scratch.rs` (a sandbox's dir on the host
//!   and the cleanup of those a crash left), [`pids`] (naming a process
//!   for good), `supervise.rs` (starting and waiting for host processes),
//!   [`logs`] (capped output) and [`lambda_logs`] (each lambda's output,
//!   kept after its sandboxes);
//! - [`protocol`] and [`SafeSandbox`]: talking to a runtime;
//!   [`runtime`]: the embedded Python runtime; [`mem_pool`]: the memory
//!   sandboxes may take.
//!
//! Building the base root file system and finding a Python to run are not
//! here but in `ol-base`, which depends on this crate: the sandbox layer
//! says what a root must hold ([`sock::rootfs`]: its kind, its mount
//! points, its devices), the base crate provisions it.

mod backend;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod lambda_logs;
pub mod logs;
pub mod mem_pool;
pub mod pids;
pub mod process;
pub mod protocol;
pub mod runtime;
mod safe;
mod scratch;
pub mod sock;
mod supervise;

use std::fmt::Debug;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use backend::{Backend, Features, Paths, Settings, cleanup};
pub use protocol::{Invocation, MessageContext, Reply};
pub use safe::{CallError, SafeSandbox};

/// Resource limits of one sandbox (config.json `limits`, ol.yaml `limits`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most processes (and threads) the sandbox may run.
    pub procs: u32,
    /// Memory limit in MiB.
    pub mem_mb: u64,
    /// CPU share in percent of one core.
    pub cpu_percent: u32,
    /// Swappiness of the sandbox's memory cgroup.
    pub swappiness: u32,
    /// Longest a single call may run before the sandbox is killed (504).
    pub runtime_sec: u64,
    /// Largest request body accepted (413 above it).
    pub max_body_mb: u64,
    /// Largest response a call may return; the worker stops reading a
    /// bigger one and answers with an error instead.
    pub max_response_mb: u64,
    /// Size of each of the sandbox's writable file systems (`/host` and
    /// `/tmp`); their pages also count against `mem_mb`.
    pub disk_mb: u64,
    /// Output kept per sandbox and stream (stdout, stderr), in KiB; older
    /// output is dropped first.
    pub log_kb: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            procs: 10,
            mem_mb: 50,
            cpu_percent: 100,
            swappiness: 0,
            runtime_sec: 30,
            max_body_mb: 6,
            max_response_mb: 6,
            disk_mb: 32,
            log_kb: 1024,
        }
    }
}

impl Limits {
    /// `max_response_mb` in bytes: the most a call's response frame (meta
    /// and body) may hold. Saturates rather than wraps; the worker's config
    /// check keeps the value far below that.
    pub fn max_response_bytes(&self) -> usize {
        usize::try_from(self.max_response_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }
}

/// Environment variable telling the Python runtime the most bytes a
/// response may hold, so that it can turn a result over the limit into an
/// error of its own (the worker enforces the limit regardless).
pub const MAX_RESPONSE_ENV: &str = "OL_MAX_RESPONSE_BYTES";

/// What a new sandbox runs and within which limits.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Name of the lambda (validated by the registry: `[A-Za-z0-9_-]{1,64}`).
    pub lambda: String,
    /// Directory holding the lambda's code.
    pub code_dir: PathBuf,
    /// Extra environment variables (ol.yaml `environment`).
    pub env: Vec<(String, String)>,
    /// Resource limits.
    pub limits: Limits,
    /// Installed packages the lambda imports, as directory names under the
    /// packages root (`numpy==2.4.6`), in `sys.path` order.
    pub packages: Vec<String>,
    /// The import-cache zygotes to fork from, the root zygote's child
    /// first, the one to fork from last; empty: the root zygote.
    pub zygote: Vec<ZygoteNode>,
    /// Where the lambda's output is kept after its sandboxes are gone
    /// (`None`: only in the sandbox's scratch dir).
    pub lambda_logs: Option<std::sync::Arc<lambda_logs::LambdaLogs>>,
}

impl SandboxSpec {
    /// Where sandbox `id`'s lines go, within the lambda's `log_kb`.
    pub fn log_sink(&self, id: &str) -> Option<lambda_logs::LogSink> {
        let logs = self.lambda_logs.as_ref()?;
        Some(logs.sink(&self.lambda, id, self.limits.log_kb))
    }
}

/// One zygote of the import cache (docs/architecture.md §3.4): a zygote with these
/// packages imported, forked from the node before it in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ZygoteNode {
    /// Identifies this zygote (the tree node and its package versions).
    pub key: String,
    /// Package dirs it adds to `sys.path` (like [`SandboxSpec::packages`]).
    pub packages: Vec<String>,
    /// Modules it imports.
    pub imports: Vec<String>,
}

/// A freshly created sandbox: the backend's handle plus the worker's end of
/// the runtime connection.
#[derive(Debug)]
pub struct NewSandbox {
    /// The backend's handle.
    pub sandbox: Box<dyn Sandbox>,
    /// The worker's end of the connected unix socket.
    pub conn: UnixStream,
    /// The key of the zygote it was forked from (`""`: the root zygote);
    /// `None` when it started a fresh interpreter.
    pub forked_from: Option<String>,
}

/// A command run to completion in a sandbox of its own (the package
/// installer, docs/architecture.md §3.8).
#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// Names its scratch dir and cgroup (`install-<n>` is appended).
    pub name: String,
    /// Program and arguments; paths are host paths (the sandbox binds
    /// `writable` and `readable` at the same paths).
    pub argv: Vec<String>,
    /// The whole environment.
    pub env: Vec<(String, String)>,
    /// Host directories the command may write.
    pub writable: Vec<PathBuf>,
    /// Extra host directories it may read.
    pub readable: Vec<PathBuf>,
    /// Memory limit and `runtime_sec` (killed after it).
    pub limits: Limits,
    /// Keep the host's network (the installer must reach the index).
    pub network: bool,
    /// Run at idle CPU priority (the cgroup's `cpu.idle`, where the kernel
    /// has it; `sock` only): for background work nothing waits for.
    pub idle: bool,
}

/// How a [`CommandSpec`] ended.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    /// Exit status 0.
    pub success: bool,
    /// "exited with status 1", "was killed by signal 9 (SIGKILL)", ...
    pub status: String,
    /// Whether it ran out of time (then it was killed).
    pub timed_out: bool,
    /// Whether the memory limit killed it.
    pub oom_killed: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// One backend's sandbox. Methods block (kernel work); callers on an async
/// runtime run them with `spawn_blocking`.
pub trait Sandbox: Send + Sync + Debug {
    /// Unique id, also the name of its scratch directory.
    fn id(&self) -> &str;
    /// Host pid of the runtime process.
    fn pid(&self) -> u32;
    /// Stops the sandbox from being scheduled.
    fn pause(&self) -> Result<(), SandboxError>;
    /// Lets a paused sandbox run again. Callers run it on the call path,
    /// inline: it must not wait (a signal, a control-file write).
    fn unpause(&self) -> Result<(), SandboxError>;
    /// Kills every process of the sandbox and frees what it holds.
    /// Idempotent.
    fn destroy(&mut self) -> Result<(), SandboxError>;
    /// Memory in use, in bytes.
    fn mem_usage(&self) -> Result<u64, SandboxError>;
    /// Why the runtime is gone (exit status or signal), once it is.
    fn exit_reason(&mut self) -> Option<String>;
    /// Its cgroup, relative to the hierarchy roots, if it has one.
    fn cgroup(&self) -> Option<String> {
        None
    }
    /// Where its output goes beside its scratch dir, if anywhere (a
    /// lambda's sandbox: its lambda's log).
    fn log_tag(&self) -> Option<&lambda_logs::LogTag> {
        None
    }
    /// Whether the kernel's OOM killer has killed a process of the sandbox.
    fn oom_killed(&self) -> bool {
        false
    }
}

/// A backend: makes sandboxes and cleans up after crashed workers.
pub trait SandboxPool: Send + Sync {
    /// Short backend name (`process`, `sock`).
    fn kind(&self) -> &'static str;
    /// Creates a sandbox running the lambda's runtime. Blocks.
    fn create(&self, spec: &SandboxSpec) -> Result<NewSandbox, SandboxError>;
    /// Kills and removes whatever an earlier worker in the same directory
    /// left behind (processes, scratch dirs); returns how many sandboxes
    /// were found.
    fn cleanup_leftovers(&self) -> Result<usize, SandboxError>;
    /// Runs a command to completion in a sandbox of its own. Blocks.
    fn run_command(&self, cmd: &CommandSpec) -> Result<CommandOutput, SandboxError>;
    /// Import-cache zygotes alive now (their keys), not counting the root.
    fn zygotes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Marks every descriptor this process inherited (from 3 up)
/// close-on-exec, so nothing that whoever started `ol` left open (a
/// root-only file, a terminal, a socket) reaches a sandbox or any program
/// `ol` starts. Call it first thing.
pub fn seal_inherited_descriptors() -> Result<(), SandboxError> {
    ol_jail::fds::cloexec_inherited().map_err(|e| SandboxError::StartFailed(e.to_string()))
}

/// Maps an I/O error on `path` to [`SandboxError::Io`] (for `map_err`).
pub(crate) fn io_err(
    what: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> SandboxError {
    let path = path.to_path_buf();
    move |source| SandboxError::Io { what, path, source }
}

/// Errors of the sandbox layer.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A filesystem operation on `path` failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Starting the runtime process failed.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program that failed to start.
        program: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Sending a signal to a sandbox's processes failed.
    #[error("cannot signal pid {pid}: {source}")]
    Signal {
        /// The target pid.
        pid: u32,
        /// The OS error.
        source: nix::Error,
    },
    /// The lambda's code could not be loaded by the runtime.
    #[error("lambda failed to load: {error}")]
    LoadFailed {
        /// One-line summary.
        error: String,
        /// Short traceback.
        traceback: String,
    },
    /// The runtime did not come up.
    #[error("the runtime did not start: {0}")]
    StartFailed(String),
    /// The base root file system is not what it should be.
    #[error("{0}")]
    Base(String),
    /// A cgroup operation failed.
    #[error("cgroup: {0}")]
    Cgroup(String),
    /// The operation was attempted on a destroyed sandbox.
    #[error("sandbox {0} is dead: {1}")]
    Dead(String, String),
}
