//! Installing one pinned distribution, once per worker dir: `uv pip install
//! --no-build --no-deps --target` into a private staging dir, sealed
//! ([`super::store::seal`]), described by `.ol-package.json` (its top-level
//! modules and requirements, from [`super::wheel_metadata`]) and renamed into
//! `packages/<name>==<version>/`, so a crash never leaves half a package.
//! Concurrent asks for one distribution share one run.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::installer_sandbox::make_sandbox_writable;
use super::store::write_file;
use super::uv::{Tool, UvCache};
use super::{
    Package, PackageError, PackagePuller, blocking, cached, interpreter_cache, lock, slot, store,
    wheel_metadata,
};

/// Our metadata file in each installed package dir.
const META_FILE: &str = ".ol-package.json";

impl PackagePuller {
    /// Distribution `name==version`, installed once per worker.
    pub(super) async fn install(
        self: &Arc<Self>,
        name: &str,
        version: &str,
    ) -> Result<Package, PackageError> {
        let dir = format!("{name}=={version}");
        let slot = slot(&self.installs, &dir);
        let this = Arc::clone(self);
        let (name, version) = (name.to_string(), version.to_string());
        cached(&slot, || async move {
            let installer = Arc::clone(&this);
            let installed = blocking(move || installer.install_now(&name, &version)).await;
            if installed.is_ok() {
                // Also for one installed by an earlier worker: the compile
                // thread skips a package whose bytecode is done.
                this.compile_later(this.settings.packages_dir.join(&dir));
            }
            installed
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
        match done {
            Ok((pkg, query)) => {
                self.installed.fetch_add(1, Ordering::Relaxed);
                ol_obs::counters::PACKAGE_INSTALLS.inc();
                self.install_ms.fetch_add(ms, Ordering::Relaxed);
                tracing::info!(package = %dir, ms, interpreter_query = query.as_str(), "installed");
                Ok(pkg)
            }
            Err(e) => {
                tracing::warn!(package = %dir, ms, "install failed: {e}");
                Err(e)
            }
        }
    }

    /// Installs `name==version` (wheels only) into a private staging dir,
    /// makes it the worker's and moves it to `target`; also says whether
    /// uv queried the interpreter.
    fn install_fresh(
        &self,
        name: &str,
        version: &str,
        target: &Path,
    ) -> Result<(Package, InterpreterQuery), PackageError> {
        let spec = format!("{name}=={version}");
        let staging = self.staging(&spec)?;
        let dir = staging.path().join("target");
        // A cache of the install's own unless the package cache is shared
        // (see `UvCache`), starting with the resolve's interpreter query.
        let cache = (!self.settings.shared_cache).then(|| staging.path().join("uv-cache"));
        let seeded = cache.as_deref().and_then(|c| self.seed_interpreter(c));
        let uv_cache = cache.as_deref().map_or(UvCache::Shared, UvCache::Private);
        let argv = self.install_argv(&dir, std::slice::from_ref(&spec), true, uv_cache);
        let mut access = self.downloading_into(&dir);
        access.writable.extend(cache.clone());
        let out = self.run("install", argv, access)?;
        let query = match (&cache, &seeded, self.tool()) {
            (Some(cache), Some(seeded), _) if seeded.queried_again(cache) => InterpreterQuery::Ran,
            (Some(_), Some(_), _) => InterpreterQuery::Skipped,
            (Some(_), None, Tool::Uv(_)) => InterpreterQuery::Ran,
            _ => InterpreterQuery::Unknown,
        };
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
        // The other names of the files uv hard-linked into `dir` go with
        // its own cache (see `UvCache::Private`).
        if let Some(cache) = &cache {
            match fs::remove_dir_all(cache) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(installer_err(format!(
                        "cannot remove its cache {}: {e}",
                        cache.display()
                    )));
                }
                _ => {}
            }
        }
        store::seal(&dir).map_err(|e| installer_err(e.to_string()))?;
        let pkg = wheel_metadata::read_installed(&dir, name, version).map_err(installer_err)?;
        let meta = serde_json::to_vec_pretty(&pkg)
            .map_err(|e| PackageError::Installer(format!("cannot encode package metadata: {e}")))?;
        write_file(&dir.join(META_FILE), &meta)?;
        match fs::rename(&dir, target) {
            Ok(()) => Ok((pkg, query)),
            // Another worker of this dir got there first: theirs is
            // as good as ours.
            Err(_) if read_meta(target).is_ok() => read_meta(target).map(|p| (p, query)),
            Err(e) => Err(PackageError::Installer(format!(
                "cannot move {} into place: {e}",
                dir.display()
            ))),
        }
    }

    /// Copies the interpreter query the resolve left in the package cache
    /// into an install's own uv cache `cache` (see `interpreter_cache`);
    /// `None` when there was none to copy or the copy failed (uv then
    /// queries the interpreter itself).
    fn seed_interpreter(&self, cache: &Path) -> Option<interpreter_cache::Seeded> {
        if !matches!(self.tool(), Tool::Uv(_)) {
            return None;
        }
        let seeded = fs::create_dir(cache).and_then(|()| {
            interpreter_cache::seed(&self.settings.cache_dir, cache, make_sandbox_writable)
        });
        match seeded {
            Ok(seeded) if !seeded.is_empty() => Some(seeded),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(cache = %cache.display(), "uv's interpreter query not copied: {e}");
                None
            }
        }
    }
}

/// Whether an install's uv queried the interpreter (the "installed" log
/// line): only known for an install with a cache of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InterpreterQuery {
    /// It used the copy of the resolve's query.
    Skipped,
    /// It queried the interpreter (nothing to copy, or a copy it did not
    /// take).
    Ran,
    /// It used the shared package cache (or pip).
    Unknown,
}

impl InterpreterQuery {
    fn as_str(self) -> &'static str {
        match self {
            Self::Skipped => "skipped",
            Self::Ran => "ran",
            Self::Unknown => "unknown",
        }
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
