//! The package puller (DESIGN.md §3.8): turns a lambda's
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
//!   its own staging dir (`build.rs`);
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

mod build;
pub mod requirements;
mod scripts;
pub mod store;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use ol_sandbox::{CommandOutput, CommandSpec, Limits, SandboxPool};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

pub use requirements::{Requirement, RequirementError, has_requirements, parse_requirements};

/// How long a failed resolution or install is answered from memory.
pub const FAILURE_TTL: Duration = Duration::from_secs(10);
/// The config key that lets the worker build source distributions.
pub const SOURCE_BUILDS_KEY: &str = "features.source_builds";
/// Our metadata file in each installed package dir.
const META_FILE: &str = ".ol-package.json";
/// Where, in the packages dir, installs and builds are staged (only the
/// worker may enter it; each run gets a private dir inside).
const STAGING: &str = ".staging";
/// Lines of installer output kept in an error message.
const ERROR_LINES: usize = 12;
/// Where, in the packages dir, resolutions are kept.
const RESOLUTIONS: &str = ".resolutions";
/// Where, in the packages dir, wheels built from source are kept (the
/// resolver and installer find them there with `--find-links`).
const BUILT_WHEELS: &str = ".wheels";

/// A resolution kept on disk.
#[derive(Debug, Serialize, Deserialize)]
struct SavedResolution {
    requirements: Vec<String>,
    index_url: Option<String>,
    pins: Vec<(String, String)>,
}

impl SavedResolution {
    /// Its file name: a hash of what it resolves (the content is checked
    /// on read, so a collision only costs a resolution).
    fn file_name(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.requirements.hash(&mut h);
        self.index_url.hash(&mut h);
        format!("{:016x}.json", h.finish())
    }
}

/// Where and how packages are installed.
#[derive(Debug, Clone)]
pub struct PackageSettings {
    /// Installed packages (`DIR/packages`), one dir per distribution.
    pub packages_dir: PathBuf,
    /// The installer's download cache (kept across workers).
    pub cache_dir: PathBuf,
    /// Where the puller installs uv when the host has none.
    pub tools_dir: PathBuf,
    /// The Python interpreter lambdas run (resolution targets it).
    pub python: PathBuf,
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

/// The tool that resolves and installs.
#[derive(Debug, Clone)]
enum Tool {
    /// The uv binary at this path.
    Uv(PathBuf),
    /// `python -m pip`.
    Pip,
}

/// What a sandboxed run may reach.
#[derive(Debug, Default)]
struct Access {
    /// Dirs it may write (made the sandbox uid's first).
    writable: Vec<PathBuf>,
    /// Extra dirs it may read.
    readable: Vec<PathBuf>,
    /// Keep the host's network (only runs of trusted code: uv, pip, the
    /// fetch script), with the host's index, proxy and TLS settings.
    network: bool,
}

/// A private dir under the packages dir's `.staging`, removed when
/// dropped (also when the run in it failed).
struct Staging(PathBuf);

impl Staging {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

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
            // One at a time: parallel installs fight over 2 vCPUs and the
            // download link, and uv's cache already makes repeats cheap.
            for (name, version) in pins {
                packages.push(this.install(&name, &version).await?);
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

    /// Distribution `name==version`, installed once per worker.
    async fn install(self: &Arc<Self>, name: &str, version: &str) -> Result<Package, PackageError> {
        let dir = format!("{name}=={version}");
        let slot = slot(&self.installs, &dir);
        let this = Arc::clone(self);
        let (name, version) = (name.to_string(), version.to_string());
        cached(&slot, || async move {
            blocking(move || this.install_now(&name, &version)).await
        })
        .await
    }

    /// Installs one distribution unless it already is (by an earlier
    /// worker in this dir, or just now).
    fn install_now(&self, name: &str, version: &str) -> Result<Package, PackageError> {
        let dir = format!("{name}=={version}");
        let target = self.settings.packages_dir.join(&dir);
        if let Ok(pkg) = read_meta(&target) {
            let ours = fs::symlink_metadata(&target)
                .is_ok_and(|m| m.uid() == nix::unistd::geteuid().as_raw());
            if ours {
                return Ok(pkg);
            }
            // Installed by an older worker, owned by the sandbox uid: make
            // it ours, or install it again if it cannot be.
            match store::seal(&target) {
                Ok(()) => return Ok(pkg),
                Err(e) => {
                    tracing::warn!(package = %dir, "reinstalling: {e}");
                    let _ = fs::remove_dir_all(&target);
                }
            }
        }
        lock(&self.installing).insert(dir.clone());
        let started = Instant::now();
        tracing::info!(package = %dir, "installing");
        let done = self.install_fresh(name, version, &target);
        lock(&self.installing).remove(&dir);
        let ms = started.elapsed().as_millis() as u64;
        match &done {
            Ok(_) => {
                self.installed.fetch_add(1, Ordering::Relaxed);
                ol_obs::counters::PACKAGE_INSTALLS.inc();
                self.install_ms.fetch_add(ms, Ordering::Relaxed);
                tracing::info!(package = %dir, ms, "installed");
            }
            Err(e) => tracing::warn!(package = %dir, ms, "install failed: {e}"),
        }
        done
    }

    /// Installs `name==version` (wheels only) into a private staging dir,
    /// makes it the worker's and moves it to `target`.
    fn install_fresh(
        &self,
        name: &str,
        version: &str,
        target: &Path,
    ) -> Result<Package, PackageError> {
        let spec = format!("{name}=={version}");
        let staging = self.staging(&spec)?;
        let dir = staging.path().join("target");
        let argv = self.install_argv(&dir, std::slice::from_ref(&spec), true);
        let out = self.run(
            "install",
            argv,
            Access {
                writable: vec![dir.clone(), self.settings.cache_dir.clone()],
                network: true,
                ..Access::default()
            },
        )?;
        if !out.success {
            return Err(self.run_error(&out, |message| PackageError::Install {
                package: spec.clone(),
                message,
            }));
        }
        let installer_err = |e: String| PackageError::Install {
            package: spec.clone(),
            message: e,
        };
        store::seal(&dir).map_err(|e| installer_err(e.to_string()))?;
        let pkg = read_installed(&dir, name, version).map_err(installer_err)?;
        let meta = serde_json::to_vec_pretty(&pkg)
            .map_err(|e| PackageError::Installer(format!("cannot encode package metadata: {e}")))?;
        write_file(&dir.join(META_FILE), &meta)?;
        match fs::rename(&dir, target) {
            Ok(()) => Ok(pkg),
            // Another worker of this dir got there first: theirs is
            // as good as ours.
            Err(_) if read_meta(target).is_ok() => read_meta(target),
            Err(e) => Err(PackageError::Installer(format!(
                "cannot move {} into place: {e}",
                dir.display()
            ))),
        }
    }

    /// The command that installs `specs` into `target` (without their
    /// dependencies when `no_deps`), wheels only.
    fn install_argv(&self, target: &Path, specs: &[String], no_deps: bool) -> Vec<String> {
        let mut argv = match self.tool() {
            Tool::Uv(uv) => {
                let mut argv = vec![path_arg(&uv), "pip".into(), "install".into()];
                argv.extend(self.uv_args());
                argv.extend(["--quiet".into(), "--link-mode".into(), "copy".into()]);
                argv
            }
            Tool::Pip => {
                let mut argv = self.pip_install();
                argv.push("--quiet".into());
                argv
            }
        };
        if no_deps {
            argv.push("--no-deps".into());
        }
        argv.extend(["--target".into(), path_arg(target)]);
        argv.extend(self.index_args());
        argv.extend(specs.iter().cloned());
        argv
    }

    /// Resolves `requirements` to exact `(name, version)` pins, or reads
    /// the pins an earlier worker of this dir found for them (so a
    /// restarted worker needs no index for lambdas it already served).
    fn resolve(&self, requirements: &[Requirement]) -> Result<Vec<(String, String)>, PackageError> {
        let record = SavedResolution {
            requirements: requirements.iter().map(Requirement::line).collect(),
            index_url: self.settings.index_url.clone(),
            pins: Vec::new(),
        };
        let dir = self.settings.packages_dir.join(RESOLUTIONS);
        let file = dir.join(record.file_name());
        if let Some(saved) = fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<SavedResolution>(&b).ok())
            .filter(|saved| {
                saved.requirements == record.requirements && saved.index_url == record.index_url
            })
        {
            return Ok(saved.pins);
        }
        self.resolved.fetch_add(1, Ordering::Relaxed);
        let pins = self.resolve_building(requirements)?;
        let saved = SavedResolution {
            pins: pins.clone(),
            ..record
        };
        // Best effort: without the record, the next worker resolves again.
        // (Only the worker reads it: nothing in it is for lambdas.)
        if let Ok(json) = serde_json::to_vec(&saved) {
            if private_dir(&dir).is_ok() {
                let _ = write_file(&file, &json);
            }
        }
        Ok(pins)
    }

    /// Resolves; with source builds on, builds what has only a source
    /// distribution and resolves again, until it resolves or a round
    /// builds nothing new.
    fn resolve_building(
        &self,
        requirements: &[Requirement],
    ) -> Result<Vec<(String, String)>, PackageError> {
        let mut built = BTreeSet::new();
        loop {
            let err = match self.resolve_now(requirements) {
                Ok(pins) => return Ok(pins),
                Err(e) => e,
            };
            // (Off, a want of wheels is already a SourceOnly error.)
            if !self.settings.source_builds {
                return Err(err);
            }
            let PackageError::Resolve { message, .. } = &err else {
                return Err(err);
            };
            let wanted: Vec<(String, Option<String>)> = source_only(message)
                .into_iter()
                .filter(|(name, _)| !built.contains(name))
                .collect();
            if wanted.is_empty() || built.len() + wanted.len() > build::MAX_BUILDS {
                return Err(err);
            }
            for (name, version) in wanted {
                let specifiers = requirements
                    .iter()
                    .filter(|r| r.name == name)
                    .flat_map(|r| r.specifiers.iter().map(|(op, v)| format!("{op}{v}")))
                    .collect::<Vec<_>>()
                    .join(",");
                self.build_sdist(&name, version.as_deref(), &specifiers)?;
                built.insert(name);
            }
        }
    }

    fn resolve_now(
        &self,
        requirements: &[Requirement],
    ) -> Result<Vec<(String, String)>, PackageError> {
        let staging = self.staging("resolve")?;
        let work = staging.path().join("work");
        let input = work.join("requirements.in");
        let lines: Vec<String> = requirements.iter().map(Requirement::line).collect();
        fs::create_dir_all(&work).map_err(|e| {
            PackageError::Installer(format!("cannot create {}: {e}", work.display()))
        })?;
        write_file(&input, (lines.join("\n") + "\n").as_bytes())?;
        let tool = self.tool();
        let argv = match &tool {
            Tool::Uv(uv) => {
                let mut argv = vec![path_arg(uv), "pip".into(), "compile".into()];
                argv.extend(self.uv_args());
                argv.extend([
                    // (--quiet would also silence the output file "-")
                    "--no-progress".into(),
                    "--no-header".into(),
                    "--no-annotate".into(),
                    "--output-file".into(),
                    "-".into(),
                ]);
                argv.extend(self.index_args());
                argv.push(path_arg(&input));
                argv
            }
            Tool::Pip => {
                let mut argv = self.pip_install();
                argv.extend([
                    "--dry-run".into(),
                    "--ignore-installed".into(),
                    "--quiet".into(),
                    "--report".into(),
                    "-".into(),
                    "-r".into(),
                    path_arg(&input),
                ]);
                argv.extend(self.index_args());
                argv
            }
        };
        let out = self.run(
            "resolve",
            argv,
            Access {
                writable: vec![work.clone(), self.settings.cache_dir.clone()],
                network: true,
                ..Access::default()
            },
        )?;
        let requirements = lines.join(", ");
        if !out.success {
            return Err(self.run_error(&out, |message| PackageError::Resolve {
                requirements,
                message,
            }));
        }
        let pins = match tool {
            Tool::Uv(_) => parse_pins(&out.stdout),
            Tool::Pip => parse_pip_report(&out.stdout),
        };
        match pins {
            Ok(pins) if pins.is_empty() => Err(PackageError::Resolve {
                requirements,
                message: "the resolver returned no packages".into(),
            }),
            Ok(pins) => Ok(pins),
            Err(message) => Err(PackageError::Resolve {
                requirements,
                message,
            }),
        }
    }

    /// The error of a failed resolver or installer run: [`PackageError::
    /// SourceOnly`] when it failed for want of wheels, else `otherwise`.
    fn run_error(
        &self,
        out: &CommandOutput,
        otherwise: impl FnOnce(String) -> PackageError,
    ) -> PackageError {
        let mut message = failure_message(out);
        let wanted = source_only(&message);
        if !wanted.is_empty() && !self.settings.source_builds {
            let packages: Vec<String> = wanted.into_iter().map(|(name, _)| name).collect();
            return PackageError::SourceOnly {
                packages: packages.join(", "),
                message,
            };
        }
        if matches!(self.tool(), Tool::Pip) && !self.settings.source_builds {
            // pip does not say whether an sdist was passed over.
            message.push_str(&format!(
                " (only wheels are considered; a package with only a source distribution needs {SOURCE_BUILDS_KEY}, and uv)"
            ));
        }
        otherwise(message)
    }

    /// Arguments of every uv resolve and install: no config files, wheels
    /// only, for the lambdas' interpreter, with our cache.
    fn uv_args(&self) -> Vec<String> {
        vec![
            "--no-config".into(),
            "--no-build".into(),
            "--python".into(),
            path_arg(&self.settings.python),
            "--cache-dir".into(),
            path_arg(&self.settings.cache_dir),
        ]
    }

    /// `--index-url` or `--find-links` for `pip_index_url`, and the wheels
    /// built here when source builds are on.
    fn index_args(&self) -> Vec<String> {
        let mut args = match self.settings.index_url.as_deref() {
            None | Some("") => Vec::new(),
            Some(url) if url.contains("://") && !url.starts_with("file://") => {
                vec!["--index-url".into(), url.into()]
            }
            Some(dir) => vec![
                "--no-index".into(),
                "--find-links".into(),
                dir.trim_start_matches("file://").into(),
            ],
        };
        if let Some(built) = self.built_wheels() {
            args.extend(["--find-links".into(), path_arg(&built)]);
        }
        args
    }

    /// The dir of wheels built from source, when source builds are on.
    fn built_wheels(&self) -> Option<PathBuf> {
        self.settings
            .source_builds
            .then(|| self.settings.packages_dir.join(BUILT_WHEELS))
    }

    /// A local wheel directory `pip_index_url` names, if any.
    fn local_index(&self) -> Option<PathBuf> {
        let url = self.settings.index_url.as_deref()?;
        (!url.is_empty() && (!url.contains("://") || url.starts_with("file://")))
            .then(|| PathBuf::from(url.trim_start_matches("file://")))
    }

    /// `pip install` with our cache, wheels only.
    fn pip_install(&self) -> Vec<String> {
        vec![
            path_arg(&self.settings.python),
            "-I".into(),
            "-m".into(),
            "pip".into(),
            "--disable-pip-version-check".into(),
            "--no-input".into(),
            "--cache-dir".into(),
            path_arg(&self.settings.cache_dir.join("pip")),
            "install".into(),
            "--only-binary".into(),
            ":all:".into(),
        ]
    }

    /// A new private staging dir (only the worker can enter `.staging`;
    /// what a run writes inside is given to it by [`Self::run`]).
    fn staging(&self, label: &str) -> Result<Staging, PackageError> {
        let root = self.settings.packages_dir.join(STAGING);
        let n = self.next_staging.fetch_add(1, Ordering::Relaxed);
        let dir = root.join(format!("{label}-{}-{n}", std::process::id()));
        private_dir(&root)
            .and_then(|()| fs::create_dir(&dir))
            .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)))
            .map_err(|e| {
                PackageError::Installer(format!("cannot create {}: {e}", dir.display()))
            })?;
        Ok(Staging(dir))
    }

    /// Runs `argv` in an installer sandbox of its own with `access`.
    fn run(
        &self,
        what: &str,
        argv: Vec<String>,
        access: Access,
    ) -> Result<CommandOutput, PackageError> {
        for dir in &access.writable {
            fs::create_dir_all(dir)
                .and_then(|()| make_sandbox_writable(dir))
                .map_err(|e| {
                    PackageError::Installer(format!("cannot prepare {}: {e}", dir.display()))
                })?;
        }
        let mut readable = access.readable;
        if access.network {
            // What uv and pip may be asked to read: uv itself, the local
            // index, the wheels built here.
            readable.push(self.settings.tools_dir.clone());
            readable.extend(self.local_index());
            if let Some(built) = self.built_wheels() {
                shared_dir(&built).map_err(|e| {
                    PackageError::Installer(format!("cannot create {}: {e}", built.display()))
                })?;
                readable.push(built);
            }
        }
        readable.retain(|d| d.is_dir());
        let env = if access.network {
            installer_env(&self.settings.cache_dir)
        } else {
            offline_env()
        };
        let out = self
            .pool
            .run_command(&CommandSpec {
                name: format!("installer-{what}"),
                argv,
                env,
                writable: access.writable,
                readable,
                limits: self.settings.limits.clone(),
                network: access.network,
            })
            .map_err(|e| PackageError::Installer(e.to_string()))?;
        if out.timed_out {
            return Err(PackageError::Installer(format!(
                "{what} ran past installer_limits.runtime_sec ({} s) and was killed",
                self.settings.limits.runtime_sec
            )));
        }
        if out.oom_killed {
            return Err(PackageError::Installer(format!(
                "{what} ran out of memory (installer_limits.mem_mb = {})",
                self.settings.limits.mem_mb
            )));
        }
        Ok(out)
    }

    /// uv, found or installed on first use; pip when uv cannot be had.
    fn tool(&self) -> Tool {
        self.tool
            .get_or_init(|| {
                let tool = self.find_or_install_uv();
                match &tool {
                    Tool::Uv(path) => {
                        tracing::info!(uv = %path.display(), "packages install with uv")
                    }
                    Tool::Pip => tracing::warn!("uv is not available; packages install with pip"),
                }
                tool
            })
            .clone()
    }

    /// A uv the installer sandbox sees, as it sees it: in the Python
    /// installation or the system dirs (looked for where the sandbox's
    /// come from), or in our tools dir (bound at its host path).
    fn visible_uv(&self) -> Option<PathBuf> {
        let root = &self.settings.system_root;
        [
            self.settings.python_prefix.join("bin/uv"),
            PathBuf::from("/usr/local/bin/uv"),
            PathBuf::from("/usr/bin/uv"),
        ]
        .into_iter()
        .find(|p| ol_sandbox::sock::rootfs::under(root, p).is_file())
        .or_else(|| Some(self.settings.tools_dir.join("bin/uv")).filter(|p| p.is_file()))
    }

    fn find_or_install_uv(&self) -> Tool {
        let ours = self.settings.tools_dir.join("bin/uv");
        if let Some(found) = self.visible_uv() {
            return Tool::Uv(found);
        }
        // Install it with pip into our tools dir (uv is a wheel on PyPI).
        // The tools dir may be shared by workers (it lives in the package
        // cache): stage privately, never replace a working one.
        let staging = self
            .settings
            .tools_dir
            .with_extension(format!("staging-{}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        let mut argv = self.pip_install();
        argv.extend([
            "--quiet".into(),
            "--target".into(),
            path_arg(&staging),
            "uv".into(),
        ]);
        let installed = self.run(
            "uv",
            argv,
            Access {
                writable: vec![staging.clone(), self.settings.cache_dir.clone()],
                network: true,
                ..Access::default()
            },
        );
        match installed {
            Ok(out) if out.success && staging.join("bin/uv").is_file() => {
                match store::seal(&staging) {
                    Ok(()) if !ours.is_file() => {
                        // An empty or broken leftover goes; a complete one
                        // (another worker's, just now) stays.
                        let _ = fs::remove_dir_all(&self.settings.tools_dir);
                        let _ = fs::rename(&staging, &self.settings.tools_dir);
                    }
                    Ok(()) => {}
                    Err(e) => tracing::warn!("cannot install uv: {e}"),
                }
                let _ = fs::remove_dir_all(&staging);
                if ours.is_file() {
                    return Tool::Uv(ours);
                }
            }
            Ok(out) => tracing::warn!("cannot install uv: {}", failure_message(&out)),
            Err(e) => tracing::warn!("cannot install uv: {e}"),
        }
        let _ = fs::remove_dir_all(&staging);
        Tool::Pip
    }
}

/// Distributions a resolver or installer message says have no usable
/// wheel (uv: "Wheels are required for `NAME`"), each with the version
/// it names ("NAME==VERSION has no usable wheels"), if any.
fn source_only(message: &str) -> Vec<(String, Option<String>)> {
    let mut found: Vec<(String, Option<String>)> = Vec::new();
    // The text before each "has no usable wheels" ends with the pin.
    let mut before_each: Vec<&str> = message.split(" has no usable wheels").collect();
    before_each.pop();
    for part in message.split("Wheels are required for `").skip(1) {
        let Some((name, _)) = part.split_once('`') else {
            continue;
        };
        let name = normalize(name);
        if name.is_empty() || found.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let version = before_each
            .iter()
            .filter_map(|before| before.rsplit([' ', '`', '(']).next())
            .filter_map(|pin| pin.split_once("=="))
            .find(|(n, _)| normalize(n) == name)
            .map(|(_, v)| v.to_string())
            .filter(|v| !v.is_empty() && v.chars().all(requirements::is_version_char));
        found.push((name, version));
    }
    found
}

/// Creates `dir` (if missing) for the worker alone: root's, mode 0700.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Creates `dir` (if missing) readable by sandboxes, writable by the
/// worker alone.
fn shared_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
}

/// Writes a file the worker owns (a new one, renamed over the old, so a
/// reader never sees half of it).
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), PackageError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    fs::write(&tmp, bytes)
        .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)))
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            PackageError::Installer(format!("cannot write {}: {e}", path.display()))
        })
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

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Lets the installer sandbox's user write `dir` (when we are root).
fn make_sandbox_writable(dir: &Path) -> std::io::Result<()> {
    if nix::unistd::geteuid().is_root() {
        let uid = ol_sandbox::sock::rootfs::SANDBOX_UID;
        std::os::unix::fs::chown(dir, Some(uid), Some(uid))?;
    }
    Ok(())
}

/// The installer's environment: a clean one, plus the host's index, proxy
/// and TLS settings (this machine reaches PyPI through a TLS-re-signing
/// egress whose CA is only in the host's bundle, which the base carries).
fn installer_env(cache: &Path) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "PATH".to_string(),
            "/usr/local/bin:/usr/bin:/bin".to_string(),
        ),
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("HOME".to_string(), "/tmp".to_string()),
        ("TMPDIR".to_string(), "/tmp".to_string()),
        ("UV_CACHE_DIR".to_string(), path_arg(cache)),
        ("UV_NO_PROGRESS".to_string(), "1".to_string()),
        (
            "SSL_CERT_FILE".to_string(),
            "/etc/ssl/certs/ca-certificates.crt".to_string(),
        ),
        (
            "PIP_CERT".to_string(),
            "/etc/ssl/certs/ca-certificates.crt".to_string(),
        ),
    ];
    for (key, value) in std::env::vars() {
        let passed = key.starts_with("UV_")
            || (key.starts_with("PIP_") && !matches!(key.as_str(), "PIP_CERT" | "PIP_FIND_LINKS"))
            || matches!(
                key.to_ascii_lowercase().as_str(),
                "http_proxy" | "https_proxy" | "all_proxy" | "no_proxy"
            );
        if passed && !env.iter().any(|(k, _)| *k == key) {
            env.push((key, value));
        }
    }
    env
}

/// The environment of an offline build: nothing of the host's (no index,
/// proxy or credentials: there is no network to use them on anyway).
fn offline_env() -> Vec<(String, String)> {
    [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("LANG", "C.UTF-8"),
        ("HOME", "/tmp"),
        ("TMPDIR", "/tmp"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// PEP 503 normalized name.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.trim().chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// `name==version` lines of `uv pip compile` output.
fn parse_pins(out: &str) -> Result<Vec<(String, String)>, String> {
    let mut pins = Vec::new();
    for line in out.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('-') {
            continue;
        }
        let line = line.split([';', ' ', '\\']).next().unwrap_or(line);
        let Some((name, version)) = line.split_once("==") else {
            return Err(format!("unexpected resolver output line {line:?}"));
        };
        let name = name.split('[').next().unwrap_or(name);
        pins.push((normalize(name), version.trim().to_string()));
    }
    Ok(pins)
}

/// Pins from pip's `--report -` JSON.
fn parse_pip_report(out: &str) -> Result<Vec<(String, String)>, String> {
    #[derive(Deserialize)]
    struct Report {
        install: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        metadata: Meta,
    }
    #[derive(Deserialize)]
    struct Meta {
        name: String,
        version: String,
    }
    let start = out.find('{').ok_or("pip printed no report")?;
    let report: Report = serde_json::from_str(&out[start..])
        .map_err(|e| format!("cannot read pip's report: {e}"))?;
    Ok(report
        .install
        .into_iter()
        .map(|i| (normalize(&i.metadata.name), i.metadata.version))
        .collect())
}

/// The tail of what a failed installer run said.
fn failure_message(out: &CommandOutput) -> String {
    let text = if out.stderr.trim().is_empty() {
        &out.stdout
    } else {
        &out.stderr
    };
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(ERROR_LINES)..].join("\n");
    if tail.is_empty() {
        format!("the installer {}", out.status)
    } else {
        tail
    }
}

/// Our metadata of a package installed earlier.
fn read_meta(dir: &Path) -> Result<Package, PackageError> {
    let path = dir.join(META_FILE);
    let bytes = fs::read(&path)
        .map_err(|e| PackageError::Installer(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| PackageError::Installer(format!("cannot parse {}: {e}", path.display())))
}

/// Reads what was just installed into `dir`: its top-level modules and
/// requirements, from the `.dist-info` of `name`.
fn read_installed(dir: &Path, name: &str, version: &str) -> Result<Package, String> {
    let dist_info = fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".dist-info"))
                .and_then(|n| n.rsplit_once('-'))
                .is_some_and(|(n, _)| normalize(n) == name)
        })
        .ok_or_else(|| format!("no {name} .dist-info was installed"))?;
    let read = |file: &str| fs::read_to_string(dist_info.join(file)).unwrap_or_default();
    let top_level = match read("top_level.txt") {
        listed if !listed.trim().is_empty() => {
            let mut names: Vec<String> = listed
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.contains('/'))
                .map(str::to_string)
                .collect();
            names.sort();
            names.dedup();
            names
        }
        _ => top_level_from_record(&read("RECORD")),
    };
    Ok(Package {
        name: name.to_string(),
        version: version.to_string(),
        top_level,
        requires: requires_from_metadata(&read("METADATA")),
    })
}

/// Top-level importable names from a wheel's RECORD: its top directories
/// that are identifiers, and its top-level modules.
pub fn top_level_from_record(record: &str) -> Vec<String> {
    let mut names = BTreeSet::new();
    for line in record.lines() {
        let path = line.split(',').next().unwrap_or("").trim();
        let mut parts = path.split('/');
        let Some(first) = parts.next() else { continue };
        let is_dir = parts.next().is_some();
        let name = if is_dir {
            if first.ends_with(".dist-info") || first.ends_with(".data") {
                continue;
            }
            first
        } else if let Some(stem) = first.strip_suffix(".py") {
            stem
        } else if first.ends_with(".so") || first.ends_with(".pyd") {
            first.split('.').next().unwrap_or("")
        } else {
            continue;
        };
        let identifier = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_alphanumeric() || c == '_')
            && !matches!(name, "__pycache__" | "bin");
        if identifier {
            names.insert(name.to_string());
        }
    }
    names.into_iter().collect()
}

/// Normalized names a METADATA file's `Requires-Dist` lines name, leaving
/// out those only wanted for an extra.
pub fn requires_from_metadata(metadata: &str) -> Vec<String> {
    let mut names = BTreeSet::new();
    for line in metadata.lines() {
        let Some(req) = line.strip_prefix("Requires-Dist:") else {
            if line.is_empty() {
                break; // the headers end at the first blank line
            }
            continue;
        };
        let (spec, marker) = req.split_once(';').unwrap_or((req, ""));
        if marker.contains("extra") {
            continue;
        }
        let name: String = spec
            .trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .collect();
        if !name.is_empty() {
            names.insert(normalize(&name));
        }
    }
    names.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool that never starts anything (the puller only needs one).
    fn process_pool(scratch: &Path) -> Arc<dyn SandboxPool> {
        Arc::new(
            ol_sandbox::process::ProcessPool::new(
                ol_sandbox::process::RuntimeCommand {
                    python: "/py".into(),
                    script: "/s".into(),
                    packages: "/p".into(),
                },
                scratch.to_path_buf(),
            )
            .expect("pool"),
        )
    }

    #[test]
    fn uv_messages_name_what_has_no_wheel() {
        let message = "error: No solution found when resolving dependencies\n  cause: Because hostile==1.0 has no usable wheels and only hostile==1.0 is available, we can conclude that all versions of hostile cannot be used.\n         And because you require hostile, we can conclude that your requirements are unsatisfiable.\n\nhint: Wheels are required for `hostile` because building from source is disabled for all packages (i.e., with `--no-build`)";
        assert_eq!(
            source_only(message),
            vec![("hostile".to_string(), Some("1.0".to_string()))]
        );
        let message = "Because all versions of Ol_Thing have no usable wheels ...\nhint: Wheels are required for `Ol_Thing` because building from source is disabled\nhint: Wheels are required for `other` because";
        assert_eq!(
            source_only(message),
            vec![("ol-thing".to_string(), None), ("other".to_string(), None)]
        );
        assert!(source_only("No solution found: six==0.0.0.1 does not exist").is_empty());
    }

    #[test]
    fn names_normalize_like_pep_503() {
        assert_eq!(normalize("Flask"), "flask");
        assert_eq!(normalize("typing_extensions"), "typing-extensions");
        assert_eq!(normalize("zope.interface"), "zope-interface");
        assert_eq!(normalize("A__-.B"), "a-b");
    }

    #[test]
    fn uv_output_parses_to_pins() {
        let out = "blinker==1.9.0\nflask==3.1.3\n    # via foo\nmarkupsafe==3.0.4 ; python_version >= '3.9'\nTyping_Extensions==4.12.2\n";
        assert_eq!(
            parse_pins(out).expect("pins"),
            vec![
                ("blinker".to_string(), "1.9.0".to_string()),
                ("flask".to_string(), "3.1.3".to_string()),
                ("markupsafe".to_string(), "3.0.4".to_string()),
                ("typing-extensions".to_string(), "4.12.2".to_string()),
            ]
        );
        assert!(parse_pins("flask>=2\n").is_err());
    }

    #[test]
    fn pip_report_parses_to_pins() {
        let out =
            r#"{"version": "1", "install": [{"metadata": {"name": "Six", "version": "1.16.0"}}]}"#;
        assert_eq!(
            parse_pip_report(out).expect("pins"),
            vec![("six".to_string(), "1.16.0".to_string())]
        );
        assert!(parse_pip_report("nothing").is_err());
    }

    #[test]
    fn top_level_names_come_from_record() {
        let record = "numpy/__init__.py,sha256=x,1\nnumpy/core/a.py,,\nnumpy-2.4.6.dist-info/RECORD,,\n\
                      numpy.libs/libopenblas.so,,\nbin/f2py,,\nbin/sub/x,,\nsix.py,,\n_cffi_backend.cpython-311-x86_64-linux-gnu.so,,\n\
                      __pycache__/six.cpython-311.pyc,,\nfoo-1.0.data/scripts/x,,\ndistutils-precedence.pth,,\n";
        assert_eq!(
            top_level_from_record(record),
            vec!["_cffi_backend", "numpy", "six"]
        );
    }

    #[test]
    fn requires_leave_out_extras_and_read_only_headers() {
        let metadata = "Metadata-Version: 2.1\nName: pandas\nRequires-Dist: numpy>=2.0.2; python_version < \"3.14\"\n\
                        Requires-Dist: python-dateutil>=2.9.0\nRequires-Dist: tzdata; sys_platform == \"win32\"\n\
                        Requires-Dist: pytest>=8; extra == \"test\"\nRequires-Dist: Jinja2 (>=3)\n\nRequires-Dist: not-a-header\n";
        assert_eq!(
            requires_from_metadata(metadata),
            vec!["jinja2", "numpy", "python-dateutil", "tzdata"]
        );
    }

    #[test]
    fn local_index_becomes_find_links() {
        let settings = |url: Option<&str>| PackageSettings {
            packages_dir: "/p".into(),
            cache_dir: "/c".into(),
            tools_dir: "/t".into(),
            python: "/py".into(),
            python_prefix: "/".into(),
            system_root: "/".into(),
            index_url: url.map(str::to_string),
            limits: Limits::default(),
            source_builds: false,
        };
        let scratch = tempfile::tempdir().expect("tmp");
        let pool = process_pool(scratch.path());
        let p = PackagePuller::new(Arc::clone(&pool), settings(Some("https://mirror/simple")));
        assert_eq!(p.index_args(), vec!["--index-url", "https://mirror/simple"]);
        assert_eq!(p.local_index(), None);
        let p = PackagePuller::new(Arc::clone(&pool), settings(Some("/srv/wheels")));
        assert_eq!(
            p.index_args(),
            vec!["--no-index", "--find-links", "/srv/wheels"]
        );
        assert_eq!(p.local_index(), Some(PathBuf::from("/srv/wheels")));
        let p = PackagePuller::new(pool, settings(None));
        assert!(p.index_args().is_empty());
    }

    #[test]
    fn uv_is_looked_for_where_the_installer_sandbox_sees_it() {
        let tmp = tempfile::tempdir().expect("tmp");
        let base = tmp.path().join("base");
        let tools = tmp.path().join("tools");
        let pool = process_pool(&tmp.path().join("scratch"));
        let puller = |system_root: &Path| {
            PackagePuller::new(
                Arc::clone(&pool),
                PackageSettings {
                    packages_dir: tmp.path().join("p"),
                    cache_dir: tmp.path().join("c"),
                    tools_dir: tools.clone(),
                    python: "/usr/bin/python3".into(),
                    python_prefix: "/usr".into(),
                    system_root: system_root.to_path_buf(),
                    index_url: None,
                    limits: Limits::default(),
                    source_builds: false,
                },
            )
        };
        // A self-contained base without uv: none, whatever the host has.
        fs::create_dir_all(base.join("usr/bin")).expect("base");
        assert_eq!(puller(&base).visible_uv(), None);
        // Our tools dir is bound in at its host path.
        fs::create_dir_all(tools.join("bin")).expect("tools");
        fs::write(tools.join("bin/uv"), "").expect("uv");
        assert_eq!(puller(&base).visible_uv(), Some(tools.join("bin/uv")));
        // A uv in the base is found at its path inside the sandbox.
        fs::write(base.join("usr/bin/uv"), "").expect("uv");
        assert_eq!(
            puller(&base).visible_uv(),
            Some(PathBuf::from("/usr/bin/uv"))
        );
    }
}
