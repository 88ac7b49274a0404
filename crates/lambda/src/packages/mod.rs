//! The package puller (docs/architecture.md §3.8): turns a lambda's
//! `requirements.txt` into exact versions with their dependencies and
//! installs each distribution once per worker into
//! `packages/<name>==<version>/`.
//!
//! What a tenant controls (its requirements, the packages it names, their
//! sources) is handled as hostile:
//! - the requirements pass [`requirements::parse_requirements`] first:
//!   requirements by name only, no options, URLs, VCS or paths;
//! - resolution (`uv pip compile`, pip's `--dry-run --report` when uv
//!   cannot be had) and installation (`uv pip install --no-deps --target`)
//!   use wheels only (`--no-build`, pip's `--only-binary :all:`), so no
//!   package code runs in the installer sandbox, the one sandbox that
//!   keeps the host's network and writes the shared download cache;
//! - a distribution that has only a source distribution fails with an
//!   error naming it and `features.source_builds`; with that key on, the
//!   sdist and its build requirements are fetched by trusted code, and
//!   the build runs in a sandbox with no network that writes nothing but
//!   its own staging dir (`build`);
//! - every install is staged privately and joins the store only once the
//!   worker has made it its own ([`store::seal`]): root-owned, not
//!   writable by others, no links out, no device or setuid files.
//!
//! One distribution is installed at a time into a staging dir that is
//! renamed into place when complete, so a crash never leaves half a
//! package. Concurrent asks for the same resolution or distribution share
//! one run; failures are remembered for [`FAILURE_TTL`] so a broken
//! requirement does not re-run the installer on every call. Top-level
//! module names come from the wheel's metadata (`top_level.txt`, else its
//! `RECORD`).
//!
//! One module per step: [`requirements`] (the filter), `resolve`, `install`
//! (one distribution, its uv cache starting with the resolve's
//! `interpreter_cache`), `build` (source builds, with the Python of
//! `scripts`), [`store`] (sealing, and the worker's own files), `uv`
//! (finding or installing uv, the pip fallback, their command lines),
//! `installer_sandbox` (where each step runs) and [`wheel_metadata`] (what
//! an installed wheel provides and requires). This module keeps the
//! puller's public face and the sharing of runs between callers.

mod build;
mod bytecode;
mod install;
mod installer_sandbox;
mod interpreter_cache;
pub mod requirements;
mod resolve;
mod scripts;
pub mod store;
mod uv;
pub mod wheel_metadata;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use ol_sandbox::{Limits, SandboxPool};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

pub use requirements::{
    Requirement, RequirementError, has_requirements, normalize, parse_requirements,
};
use uv::Tool;
pub use wheel_metadata::{requires_from_metadata, top_level_from_record};

/// How long a failed resolution or install is answered from memory.
pub const FAILURE_TTL: Duration = Duration::from_secs(10);
/// Most distributions of one lambda's requirements installed at a time.
const CONCURRENT_INSTALLS: usize = 4;
/// The config key that lets the worker build source distributions.
pub const SOURCE_BUILDS_KEY: &str = "features.source_builds";

/// Where and how packages are installed.
#[derive(Debug, Clone)]
pub struct PackageSettings {
    /// Installed packages (`DIR/packages`), one dir per distribution.
    pub packages_dir: PathBuf,
    /// The installer's download cache (kept across workers).
    pub cache_dir: PathBuf,
    /// Whether `cache_dir` is shared with other workers
    /// (`package_cache_dir` set): installs then copy out of it, so that
    /// each download happens once; a worker's own cache is not used by
    /// installs at all (see `uv::UvCache`).
    pub shared_cache: bool,
    /// Where the puller installs uv when the host has none.
    pub tools_dir: PathBuf,
    /// The Python interpreter lambdas run (resolution targets it).
    pub python: PathBuf,
    /// Its `(major, minor)` version (package bytecode is made for it).
    pub python_version: (u32, u32),
    /// Its installation prefix (a uv installed by pip lands in its `bin`).
    pub python_prefix: PathBuf,
    /// Where, on the host, the installer sandbox's system paths (the
    /// Python prefix, /usr) are found: `/` when the base binds the host's,
    /// the base itself when it is self-contained.
    pub system_root: PathBuf,
    /// `pip_index_url`: an index URL, or a local directory of wheels
    /// (used as `--find-links`, with no index).
    pub index_url: Option<String>,
    /// The installer sandbox's limits (`installer_limits`).
    pub limits: Limits,
    /// `features.source_builds`: build distributions that have no wheel
    /// (fetched by trusted code, built offline); off, only wheels install.
    pub source_builds: bool,
}

/// Why a lambda's packages are not available.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PackageError {
    /// A line of the requirements is not a requirement by name.
    #[error(transparent)]
    Requirements(#[from] RequirementError),
    /// The requirements do not resolve (unknown package, impossible pin,
    /// no matching wheel).
    #[error("cannot resolve requirements [{requirements}]: {message}")]
    Resolve {
        /// The requirements, one line each, joined.
        requirements: String,
        /// What the resolver said.
        message: String,
    },
    /// Distributions with no usable wheel, while source builds are off.
    #[error(
        "{packages}: no usable wheel, only a source distribution, and this worker does not build source distributions (the operator can allow it with {SOURCE_BUILDS_KEY}); the resolver said: {message}"
    )]
    SourceOnly {
        /// The distributions, comma-separated.
        packages: String,
        /// What the resolver or installer said.
        message: String,
    },
    /// One distribution failed to install.
    #[error("cannot install {package}: {message}")]
    Install {
        /// `name==version`.
        package: String,
        /// What the installer said.
        message: String,
    },
    /// A source distribution could not be fetched or built.
    #[error("cannot build {package} from source: {message}")]
    Build {
        /// The distribution (`name`, or `name==version`).
        package: String,
        /// What went wrong.
        message: String,
    },
    /// The installer itself could not run.
    #[error("package installer: {0}")]
    Installer(String),
}

/// One installed distribution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// Normalized name (PEP 503).
    pub name: String,
    /// Exact version.
    pub version: String,
    /// Modules it provides at the top level.
    pub top_level: Vec<String>,
    /// Normalized names of the distributions it requires (without extras).
    pub requires: Vec<String>,
}

impl Package {
    /// Its directory name under the packages dir: `name==version`.
    pub fn dir(&self) -> String {
        format!("{}=={}", self.name, self.version)
    }
}

/// A lambda's requirements, resolved and installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Every distribution, dependencies included, sorted by name.
    pub packages: Vec<Package>,
}

impl Resolved {
    /// Package dirs in `sys.path` order.
    pub fn dirs(&self) -> Vec<String> {
        self.packages.iter().map(Package::dir).collect()
    }

    /// The package named `name` (normalized), if resolved.
    pub fn get(&self, name: &str) -> Option<&Package> {
        self.packages.iter().find(|p| p.name == name)
    }
}

/// Package counters for `/stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PackageStats {
    /// Distributions installed since start.
    pub installs: u64,
    /// Time spent installing, in ms.
    pub install_ms: u64,
    /// Resolutions run since start (not answered from cache).
    pub resolutions: u64,
    /// Source distributions built since start.
    pub source_builds: u64,
    /// Resolutions and installs that failed.
    pub failures: u64,
    /// Distributions being installed now.
    pub installing: Vec<String>,
    /// The installer in use (`uv x.y.z` or `pip`).
    pub installer: Option<String>,
}

/// A cached outcome; errors expire after [`FAILURE_TTL`].
type Slot<T> = Arc<OnceCell<(Result<T, PackageError>, Instant)>>;

/// Resolves and installs packages for lambdas; one per worker.
pub struct PackagePuller {
    pool: Arc<dyn SandboxPool>,
    settings: PackageSettings,
    tool: OnceLock<Tool>,
    resolutions: Mutex<HashMap<String, Slot<Arc<Resolved>>>>,
    installs: Mutex<HashMap<String, Slot<Package>>>,
    installing: Mutex<BTreeSet<String>>,
    installed: AtomicU64,
    install_ms: AtomicU64,
    resolved: AtomicU64,
    built: AtomicU64,
    failures: AtomicU64,
    next_staging: AtomicU64,
    /// Package dirs waiting for their bytecode (`bytecode`), read by the
    /// compile thread the first one starts.
    bytecode_queue: Mutex<Option<std::sync::mpsc::Sender<PathBuf>>>,
    /// Whether the staging dirs of workers that are gone were removed (at
    /// the first run of this one).
    stale_staging_removed: std::sync::Once,
}

impl std::fmt::Debug for PackagePuller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackagePuller")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl PackagePuller {
    /// A puller installing with sandboxes from `pool`.
    pub fn new(pool: Arc<dyn SandboxPool>, settings: PackageSettings) -> Self {
        Self {
            pool,
            settings,
            tool: OnceLock::new(),
            resolutions: Mutex::new(HashMap::new()),
            installs: Mutex::new(HashMap::new()),
            installing: Mutex::new(BTreeSet::new()),
            installed: AtomicU64::new(0),
            install_ms: AtomicU64::new(0),
            resolved: AtomicU64::new(0),
            built: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            next_staging: AtomicU64::new(1),
            bytecode_queue: Mutex::new(None),
            stale_staging_removed: std::sync::Once::new(),
        }
    }

    /// Counters for `/stats`.
    pub fn stats(&self) -> PackageStats {
        PackageStats {
            installs: self.installed.load(Ordering::Relaxed),
            install_ms: self.install_ms.load(Ordering::Relaxed),
            resolutions: self.resolved.load(Ordering::Relaxed),
            source_builds: self.built.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            installing: lock(&self.installing).iter().cloned().collect(),
            installer: self.tool.get().map(|t| match t {
                Tool::Uv(path) => format!("uv ({})", path.display()),
                Tool::Pip => "pip".to_string(),
            }),
        }
    }

    /// The packages of requirements `text` (a requirements.txt), checked,
    /// resolved and installed. Concurrent calls with the same
    /// requirements share the work.
    pub async fn ensure(self: &Arc<Self>, text: &str) -> Result<Arc<Resolved>, PackageError> {
        let requirements = match parse_requirements(text) {
            Ok(r) => r,
            Err(e) => {
                self.count_failure();
                return Err(e.into());
            }
        };
        if requirements.is_empty() {
            return Ok(Arc::new(Resolved {
                packages: Vec::new(),
            }));
        }
        let key = requirements
            .iter()
            .map(Requirement::line)
            .collect::<Vec<_>>()
            .join("\n");
        let slot = slot(&self.resolutions, &key);
        let this = Arc::clone(self);
        let resolved = cached(&slot, || async move {
            let this2 = Arc::clone(&this);
            let pins = blocking(move || this2.resolve(&requirements)).await?;
            let mut packages = Vec::with_capacity(pins.len());
            // A few at a time: each install is mostly waiting (its
            // sandbox's start, uv's interpreter query, the download), so
            // the small ones overlap the big ones' unpacking.
            let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_INSTALLS));
            let mut installs = tokio::task::JoinSet::new();
            for (name, version) in pins {
                let (this, slots) = (Arc::clone(&this), Arc::clone(&slots));
                installs.spawn(async move {
                    let _slot = slots.acquire_owned().await;
                    this.install(&name, &version).await
                });
            }
            // Every one runs to its end, also after another failed: what
            // installed is kept for the next try, and none is cancelled
            // halfway.
            let mut failed = None;
            while let Some(done) = installs.join_next().await {
                match done {
                    Ok(Ok(package)) => packages.push(package),
                    Ok(Err(e)) => {
                        failed.get_or_insert(e);
                    }
                    Err(e) => {
                        failed.get_or_insert(PackageError::Installer(format!(
                            "installer task failed: {e}"
                        )));
                    }
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
            packages.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(Arc::new(Resolved { packages }))
        })
        .await;
        if resolved.is_err() {
            self.count_failure();
        }
        resolved
    }

    fn count_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        ol_obs::counters::PACKAGE_FAILURES.inc();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The slot for `key`, replacing one holding an expired failure.
fn slot<T>(map: &Mutex<HashMap<String, Slot<T>>>, key: &str) -> Slot<T> {
    let mut map = lock(map);
    let stale = map.get(key).is_some_and(|s| {
        s.get()
            .is_some_and(|(r, at)| r.is_err() && at.elapsed() >= FAILURE_TTL)
    });
    if stale {
        map.remove(key);
    }
    Arc::clone(map.entry(key.to_string()).or_default())
}

/// The slot's outcome, computed by `work` if nobody has yet.
async fn cached<T, F, Fut>(slot: &Slot<T>, work: F) -> Result<T, PackageError>
where
    T: Clone,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, PackageError>>,
{
    slot.get_or_init(|| async { (work().await, Instant::now()) })
        .await
        .0
        .clone()
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PackageError> + Send + 'static,
) -> Result<T, PackageError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(PackageError::Installer(format!(
            "installer task failed: {e}"
        )))
    })
}
