//! The tool that resolves and installs, and the command lines it takes.
//!
//! uv is found where the installer sandbox sees it (the Python
//! installation's `bin`, `/usr/local/bin`, `/usr/bin`, looked for under the
//! sandbox's system root) or in the tools dir of the package cache; else it
//! is installed there once, in the installer sandbox and sealed like a
//! package: its wheel fetched from the index by a program of ours
//! (checked against the index's sha256), else with pip. When that fails, pip itself
//! does the work: wheels only (`--only-binary :all:`), resolving with
//! `--dry-run --report`.

use std::fs;
use std::path::{Path, PathBuf};

use super::build::BUILT_WHEELS;
use super::installer_sandbox::{failure_message, path_arg};
use super::{PackagePuller, scripts, store};

/// Where uv is installed from when it is nowhere to be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UvFrom {
    /// Its wheel, fetched and unpacked by [`scripts::fetch_uv`] (~0.5 s).
    Wheel,
    /// `pip install uv` (~1.1 s), when that fails.
    Pip,
}

impl UvFrom {
    fn name(self) -> &'static str {
        match self {
            Self::Wheel => "from its wheel",
            Self::Pip => "with pip",
        }
    }
}

/// Where a uv install keeps its cache.
#[derive(Debug, Clone, Copy)]
pub(super) enum UvCache<'a> {
    /// The package cache, which every run (and every worker sharing it)
    /// reuses: the installed files are copied out of it, so a wheel that
    /// another worker sharing the cache downloaded is not downloaded again.
    Shared,
    /// A cache of the run's own, in its staging dir (the file system of its
    /// target), removed before the install is sealed: uv hard-links the
    /// installed files out of it instead of writing them twice (unpacked
    /// into the cache, then copied), and once it is gone they have no
    /// other name, as the seal requires. For a worker's own cache, which
    /// only a reinstall would reuse. numpy (58 MB, 1,173 files) from a
    /// local wheel, 5 runs each on this machine kind: 0.82–1.04 s this way,
    /// 1.72–2.28 s copied (writing fresh pages is slow on these VMs). A
    /// link into the shared cache instead would let a later installer run
    /// reach a sealed package's files.
    Private(&'a Path),
}

/// The tool that resolves and installs.
#[derive(Debug, Clone)]
pub(super) enum Tool {
    /// The uv binary at this path.
    Uv(PathBuf),
    /// `python -m pip`.
    Pip,
}

impl PackagePuller {
    /// uv, found or installed on first use; pip when uv cannot be had.
    pub(super) fn tool(&self) -> Tool {
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
        // Install it into our tools dir, from its wheel on the index:
        // fetched by a small program of ours, else with pip. The tools dir
        // may be shared by workers (it lives in the package cache): stage
        // privately, never replace a working one.
        let staging = self
            .settings
            .tools_dir
            .with_extension(format!("staging-{}", std::process::id()));
        for how in [UvFrom::Wheel, UvFrom::Pip] {
            let _ = fs::remove_dir_all(&staging);
            let installed = self.run(
                "uv",
                self.uv_install_argv(how, &staging),
                self.downloading_into(&staging),
            );
            match installed {
                Ok(out) if out.success && staging.join("bin/uv").is_file() => {
                    match store::seal(&staging) {
                        Ok(()) if !ours.is_file() => {
                            // An empty or broken leftover goes; a complete
                            // one (another worker's, just now) stays.
                            let _ = fs::remove_dir_all(&self.settings.tools_dir);
                            let _ = fs::rename(&staging, &self.settings.tools_dir);
                        }
                        Ok(()) => {}
                        Err(e) => tracing::warn!("cannot install uv: {e}"),
                    }
                    let _ = fs::remove_dir_all(&staging);
                    if ours.is_file() {
                        tracing::info!("installed uv {}", how.name());
                        return Tool::Uv(ours);
                    }
                }
                Ok(out) => tracing::warn!(
                    "cannot install uv {}: {}",
                    how.name(),
                    failure_message(&out)
                ),
                Err(e) => tracing::warn!("cannot install uv {}: {e}", how.name()),
            }
        }
        let _ = fs::remove_dir_all(&staging);
        Tool::Pip
    }

    /// The command that installs uv into `staging` (as `bin/uv`).
    fn uv_install_argv(&self, how: UvFrom, staging: &Path) -> Vec<String> {
        match how {
            UvFrom::Wheel => self.python_script(
                &scripts::fetch_uv(),
                &[
                    path_arg(staging),
                    self.fetch_index(),
                    self.local_index().map(|d| path_arg(&d)).unwrap_or_default(),
                ],
            ),
            UvFrom::Pip => {
                let mut argv = self.pip_install();
                // uv has no dependencies: `--no-deps` spares pip a look at
                // what else is installed (1.12 s instead of 1.43 s, alone
                // on 2 vCPUs).
                argv.extend([
                    "--quiet".into(),
                    "--no-deps".into(),
                    "--target".into(),
                    path_arg(staging),
                    "uv".into(),
                ]);
                argv
            }
        }
    }

    /// The command that installs `specs` into `target` (without their
    /// dependencies when `no_deps`), wheels only, uv keeping its cache
    /// where `cache` says.
    pub(super) fn install_argv(
        &self,
        target: &Path,
        specs: &[String],
        no_deps: bool,
        cache: UvCache<'_>,
    ) -> Vec<String> {
        let mut argv = match self.tool() {
            Tool::Uv(uv) => {
                let mut argv = vec![path_arg(&uv), "pip".into(), "install".into()];
                let (dir, link) = match cache {
                    UvCache::Shared => (self.settings.cache_dir.as_path(), "copy"),
                    UvCache::Private(dir) => (dir, "hardlink"),
                };
                argv.extend(self.uv_args_with_cache(dir));
                argv.extend(["--quiet".into(), "--link-mode".into(), link.into()]);
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

    /// Arguments of every uv resolve and install: no config files, wheels
    /// only, for the lambdas' interpreter, with our cache.
    pub(super) fn uv_args(&self) -> Vec<String> {
        self.uv_args_with_cache(&self.settings.cache_dir)
    }

    /// [`Self::uv_args`] with uv's cache in `cache`.
    fn uv_args_with_cache(&self, cache: &Path) -> Vec<String> {
        vec![
            "--no-config".into(),
            "--no-build".into(),
            "--python".into(),
            path_arg(&self.settings.python),
            "--cache-dir".into(),
            path_arg(cache),
        ]
    }

    /// `--index-url` or `--find-links` for `pip_index_url`, and the wheels
    /// built here when source builds are on.
    pub(super) fn index_args(&self) -> Vec<String> {
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
    pub(super) fn built_wheels(&self) -> Option<PathBuf> {
        self.settings
            .source_builds
            .then(|| self.settings.packages_dir.join(BUILT_WHEELS))
    }

    /// A local wheel directory `pip_index_url` names, if any.
    pub(super) fn local_index(&self) -> Option<PathBuf> {
        let url = self.settings.index_url.as_deref()?;
        (!url.is_empty() && (!url.contains("://") || url.starts_with("file://")))
            .then(|| PathBuf::from(url.trim_start_matches("file://")))
    }

    /// `pip install` with our cache, wheels only.
    pub(super) fn pip_install(&self) -> Vec<String> {
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
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ol_sandbox::{Limits, SandboxPool};

    use super::*;
    use crate::packages::PackageSettings;

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

    /// Settings of a puller whose dirs are under `root`, no uv on the
    /// host's system (`root/base`) and the default limits.
    fn settings_in(root: &Path) -> PackageSettings {
        PackageSettings {
            packages_dir: root.join("p"),
            cache_dir: root.join("c"),
            shared_cache: false,
            tools_dir: root.join("tools"),
            python: "/usr/bin/python3".into(),
            python_version: (3, 11),
            python_prefix: "/usr".into(),
            system_root: root.join("base"),
            index_url: None,
            limits: Limits::default(),
            source_builds: false,
        }
    }

    #[test]
    fn local_index_becomes_find_links() {
        let settings = |url: Option<&str>| PackageSettings {
            index_url: url.map(str::to_string),
            ..settings_in(Path::new("/"))
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
                    system_root: system_root.to_path_buf(),
                    ..settings_in(tmp.path())
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

    #[test]
    fn trusted_runs_get_every_cpu_and_builds_a_lambdas_share() {
        let tmp = tempfile::tempdir().expect("tmp");
        let limits = Limits {
            cpu_percent: 50,
            ..Limits::default()
        };
        let puller = PackagePuller::new(
            process_pool(&tmp.path().join("scratch")),
            PackageSettings {
                limits: limits.clone(),
                ..settings_in(tmp.path())
            },
        );
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let trusted = puller.run_limits(true);
        assert_eq!(trusted.cpu_percent, 100 * cpus);
        assert_eq!(
            (trusted.mem_mb, trusted.runtime_sec),
            (limits.mem_mb, limits.runtime_sec)
        );
        assert_eq!(puller.run_limits(false), limits);
    }

    #[test]
    fn installs_hard_link_only_out_of_a_private_cache() {
        let tmp = tempfile::tempdir().expect("tmp");
        let tools = tmp.path().join("tools");
        fs::create_dir_all(tools.join("bin")).expect("tools");
        fs::write(tools.join("bin/uv"), "").expect("uv");
        fs::create_dir_all(tmp.path().join("base")).expect("base");
        let shared = tmp.path().join("c");
        let puller = PackagePuller::new(
            process_pool(&tmp.path().join("scratch")),
            PackageSettings {
                shared_cache: true,
                ..settings_in(tmp.path())
            },
        );
        // The value that follows `flag` in `argv`.
        let after = |argv: &[String], flag: &str| {
            let at = argv.iter().position(|a| a == flag).expect(flag);
            argv[at + 1].clone()
        };
        let target = tmp.path().join("target");
        let specs = ["numpy==2.0.0".to_string()];
        let private = tmp.path().join("own-cache");
        let argv = puller.install_argv(&target, &specs, true, UvCache::Private(&private));
        assert_eq!(after(&argv, "--cache-dir"), path_arg(&private));
        assert_eq!(after(&argv, "--link-mode"), "hardlink");
        assert_eq!(after(&argv, "--target"), path_arg(&target));
        let argv = puller.install_argv(&target, &specs, false, UvCache::Shared);
        assert_eq!(after(&argv, "--cache-dir"), path_arg(&shared));
        assert_eq!(after(&argv, "--link-mode"), "copy");
        assert_eq!(argv.last(), Some(&specs[0]));
    }
}
