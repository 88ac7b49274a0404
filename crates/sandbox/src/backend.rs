//! Picking a backend by kind (config.json `sandbox`): the one place that
//! knows which [`SandboxPool`] implementations a worker can run and what
//! each is built from, so the worker asks for "a pool of this kind with
//! these [`Settings`]" and never names a backend; and [`cleanup`], which
//! removes whatever any backend of a worker left behind.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::process::{ProcessPool, RuntimeCommand};
use crate::sock::rootfs::BaseKind;
use crate::sock::{self, SockConfig, SockPool};
use crate::{Limits, SandboxError, SandboxPool, io_err};

/// Which sandbox backend runs lambdas (config.json `sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Namespaces, cgroups, pivot_root, seccomp (needs root).
    Sock,
    /// Plain child processes, no isolation (development without root).
    Process,
}

impl Backend {
    /// Its name in config.json: `sock`, `process`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sock => "sock",
            Self::Process => "process",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a worker keeps what its sandboxes are made from and what they
/// leave behind.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The worker directory; everything a worker makes outside it (its
    /// cgroups) is named after it ([`sock::worker_id`]).
    pub worker_dir: PathBuf,
    /// The base root file system (`DIR/base`).
    pub base: PathBuf,
    /// Installed packages (`DIR/packages`).
    pub packages: PathBuf,
    /// Where the runtime, the jail library and the compiled seccomp
    /// filters are written.
    pub runtime: PathBuf,
    /// Per-sandbox scratch dirs.
    pub scratch: PathBuf,
}

/// What config.json `features` turns on or off in the sandbox layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Apply the seccomp filters (lambda and zygote profiles).
    pub seccomp: bool,
    /// Fork sandboxes from zygotes (else each starts a fresh interpreter).
    pub zygotes: bool,
    /// Lower a paused sandbox's memory limit to what it uses.
    pub downsize_paused_mem: bool,
    /// Keep dead sandboxes' cgroups for new ones.
    pub reuse_cgroups: bool,
}

/// Everything a backend is built from; each takes what it needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where things are.
    pub paths: Paths,
    /// What the base is made of.
    pub base_kind: BaseKind,
    /// The real Python interpreter (never a shim), as sandboxes see it.
    pub python: PathBuf,
    /// Its installation prefix, bound read-only into sandboxes over a host
    /// base.
    pub python_prefix: PathBuf,
    /// Optional behaviour.
    pub features: Features,
    /// The worker's default lambda limits (sandboxes made ahead get them).
    pub limits: Limits,
    /// Blank sandboxes kept ready (`sock`; `scaling.blanks`).
    pub blanks: usize,
}

impl Backend {
    /// Whether its sandboxes run over the base root file system, which
    /// must then be built before [`Backend::open`].
    pub fn uses_base(self) -> bool {
        matches!(self, Self::Sock)
    }

    /// A pool of this kind: writes the runtime into `paths.runtime` and
    /// starts the backend (a `sock` pool checks root, makes the worker's
    /// cgroup and starts its root zygote).
    pub fn open(self, settings: &Settings) -> Result<Arc<dyn SandboxPool>, SandboxError> {
        let runtime = crate::runtime::install_runtime(&settings.paths.runtime)?;
        let paths = &settings.paths;
        match self {
            Self::Process => {
                tracing::info!(python = %settings.python.display(), "process sandboxes");
                Ok(Arc::new(ProcessPool::new(
                    RuntimeCommand {
                        python: settings.python.clone(),
                        script: runtime,
                        packages: paths.packages.clone(),
                    },
                    paths.scratch.clone(),
                )?))
            }
            Self::Sock => {
                crate::runtime::compile_runtime(
                    &paths.runtime,
                    &settings.python,
                    settings.base_kind,
                );
                // The sandbox init is this very binary (`ol`).
                let init_exe = std::env::current_exe()
                    .map_err(io_err("cannot find the ol binary for", &paths.worker_dir))?;
                Ok(Arc::new(SockPool::new(SockConfig {
                    worker_id: sock::worker_id(&paths.worker_dir),
                    base: paths.base.clone(),
                    base_kind: settings.base_kind,
                    packages: paths.packages.clone(),
                    runtime_dir: paths.runtime.clone(),
                    scratch_root: paths.scratch.clone(),
                    python: settings.python.clone(),
                    python_prefix: settings.python_prefix.clone(),
                    init_exe,
                    seccomp: settings.features.seccomp,
                    zygote: settings.features.zygotes,
                    downsize_paused_mem: settings.features.downsize_paused_mem,
                    reuse_cgroups: settings.features.reuse_cgroups,
                    blank_limits: settings.limits.clone(),
                    blanks: settings.blanks,
                })?))
            }
        }
    }
}

/// Kills and removes everything the sandboxes of the worker in
/// `paths.worker_dir` left, whichever backend made them (the config may
/// have changed since): the processes recorded in the scratch dirs and
/// those dirs, and the worker's cgroups with their processes. Returns how
/// many sandboxes were found. Safe to run with no worker alive.
pub fn cleanup(paths: &Paths) -> Result<usize, SandboxError> {
    sock::cleanup(&sock::worker_id(&paths.worker_dir), &paths.scratch, true)
}
