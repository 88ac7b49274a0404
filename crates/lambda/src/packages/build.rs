//! Source builds (`features.source_builds`): a distribution with no usable
//! wheel is built from its sdist without its build code ever seeing the
//! network, the download cache or the package store.
//!
//! One build is four sandboxed runs in one private staging dir, each
//! seeing only what it needs:
//! 1. **fetch** (network; trusted code): [`scripts::fetch_sdist`] downloads the
//!    sdist from the index's simple API, checking the index's sha256 (or
//!    copies it from a local `pip_index_url` dir) into `fetch/`;
//! 2. **prepare** (no network): [`scripts::BUILD`] unpacks it into
//!    `work/src` and reads its `[build-system] requires` (read, not run);
//! 3. **build env** (network; trusted code): those requirements, checked
//!    like a lambda's own, are installed wheels-only by uv into `env/`;
//! 4. **build** (no network, writes only `work/`): the backend builds the
//!    wheel into `work/out`, with `env/` read-only.
//!
//! The worker then takes the one wheel out of `work/out` (a regular file
//! named for the expected distribution and version, read without
//! following links) into `packages/.wheels/`, where resolution and
//! installation find it; its install is sealed like any other.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;

use super::installer_sandbox::{Access, failure_message, path_arg};
use super::requirements::is_version_char;
use super::store::shared_dir;
use super::uv::{Tool, UvCache};
use super::{PackageError, PackagePuller, normalize, parse_requirements, scripts};

/// Where, in the packages dir, wheels built from source are kept (the
/// resolver and installer find them there with `--find-links`).
pub(super) const BUILT_WHEELS: &str = ".wheels";

/// Most source builds one resolution may trigger.
pub(super) const MAX_BUILDS: usize = 8;

impl PackagePuller {
    /// Builds the sdist of `name` (`version`, else the newest matching
    /// `specifiers`) and adds its wheel to the built wheels.
    pub(super) fn build_sdist(
        &self,
        name: &str,
        version: Option<&str>,
        specifiers: &str,
    ) -> Result<(), PackageError> {
        let package = match version {
            Some(v) => format!("{name}=={v}"),
            None => name.to_string(),
        };
        let fail = |message: String| PackageError::Build {
            package: package.clone(),
            message,
        };
        if self.pool.kind() == "process" {
            return Err(fail(
                "source builds need the sock sandbox backend (process sandboxes have no network isolation)".into(),
            ));
        }
        let Tool::Uv(_) = self.tool() else {
            return Err(fail("source builds need uv, which is not available".into()));
        };
        tracing::info!(package = %package, "building from source");
        let staging = self.staging(&format!("build-{name}"))?;
        let fetch = staging.path().join("fetch");
        let env = staging.path().join("env");
        let work = staging.path().join("work");

        // 1. Fetch, by trusted code with network.
        let out = self.run(
            "fetch",
            self.python_script(
                &scripts::fetch_sdist(),
                &[
                    path_arg(&fetch),
                    name.to_string(),
                    version.unwrap_or("").to_string(),
                    specifiers.to_string(),
                    self.fetch_index(),
                    self.local_index().map(|d| path_arg(&d)).unwrap_or_default(),
                ],
            ),
            Access {
                writable: vec![fetch.clone()],
                network: true,
                ..Access::default()
            },
        )?;
        let fetched: Fetched = last_json(&out).map_err(&fail)?;
        let valid_file = !fetched.file.contains('/')
            && !fetched.file.starts_with('.')
            && fs::symlink_metadata(fetch.join(&fetched.file)).is_ok_and(|m| m.is_file());
        if !valid_file || !fetched.version.chars().all(is_version_char) {
            return Err(fail(format!("the fetch gave no usable sdist: {fetched:?}")));
        }
        let sdist = path_arg(&fetch.join(&fetched.file));
        let build_args = |mode: &str| {
            self.python_script(
                scripts::BUILD,
                &[
                    mode.to_string(),
                    sdist.clone(),
                    path_arg(&work),
                    path_arg(&env),
                ],
            )
        };

        // 2. Unpack and read the build requirements, offline.
        let out = self.run(
            "prepare",
            build_args("prepare"),
            Access::offline(&work, &fetch),
        )?;
        let prepared: Prepared = last_json(&out).map_err(&fail)?;

        // 3. The build requirements (from the sdist, so checked like a
        // lambda's), wheels only, by uv with network.
        let requires = parse_requirements(&prepared.requires.join("\n"))
            .map_err(|e| fail(format!("its [build-system] requires: {e}")))?;
        fs::create_dir_all(&env)
            .map_err(|e| fail(format!("cannot create {}: {e}", env.display())))?;
        if !requires.is_empty() {
            let specs: Vec<String> = requires.iter().map(|r| r.line()).collect();
            let out = self.run(
                "build-env",
                self.install_argv(&env, &specs, false, UvCache::Shared),
                self.downloading_into(&env),
            )?;
            if !out.success {
                return Err(fail(format!(
                    "cannot install its build requirements {specs:?}: {}",
                    failure_message(&out)
                )));
            }
        }

        // 4. The build itself: no network, writes only `work`.
        let out = self.run("build", build_args("build"), Access::offline(&work, &env))?;
        if !out.success {
            return Err(fail(failure_message(&out)));
        }
        let wheel = self
            .take_wheel(&work.join("out"), name, &fetched.version)
            .map_err(fail)?;
        self.built.fetch_add(1, Ordering::Relaxed);
        tracing::info!(package = %package, wheel = %wheel, "built from source");
        Ok(())
    }

    /// `python -I -c SCRIPT ARGS...` with the lambdas' interpreter.
    pub(super) fn python_script(&self, script: &str, args: &[String]) -> Vec<String> {
        let mut argv = vec![
            path_arg(&self.settings.python),
            "-I".to_string(),
            "-c".to_string(),
            script.to_string(),
        ];
        argv.extend(args.iter().cloned());
        argv
    }

    /// The index the fetch script reads: `pip_index_url`, else the one the
    /// host's uv or pip settings name, else PyPI ("" for a local dir).
    pub(super) fn fetch_index(&self) -> String {
        if self.local_index().is_some() {
            return String::new();
        }
        self.settings
            .index_url
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| {
                ["UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL"]
                    .iter()
                    .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
            })
            .unwrap_or_else(|| "https://pypi.org/simple".to_string())
    }

    /// Moves the one wheel the build left in `out` into the built wheels,
    /// if it is a plain file named for `name` and `version`; returns its
    /// file name. (The build's sandbox is gone: nothing changes `out`
    /// while this looks.)
    fn take_wheel(&self, out: &Path, name: &str, version: &str) -> Result<String, String> {
        let is_dir = fs::symlink_metadata(out).is_ok_and(|m| m.is_dir());
        if !is_dir {
            return Err("the build left no wheel".into());
        }
        let wheels: Vec<String> = fs::read_dir(out)
            .map_err(|e| format!("cannot list {}: {e}", out.display()))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.ends_with(".whl"))
            .collect();
        let [file] = wheels.as_slice() else {
            return Err(format!(
                "the build left {} wheels: {wheels:?}",
                wheels.len()
            ));
        };
        if !wheel_is_for(file, name, version) {
            return Err(format!(
                "the build made {file}, not a wheel of {name} {version}"
            ));
        }
        let source = out.join(file);
        let meta = fs::symlink_metadata(&source).map_err(|e| e.to_string())?;
        if !meta.is_file() || meta.nlink() != 1 {
            return Err(format!("{file} is not a plain file"));
        }
        let mut bytes = Vec::new();
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&source)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| format!("cannot read {file}: {e}"))?;
        let dir = self.settings.packages_dir.join(BUILT_WHEELS);
        let tmp = dir.join(format!(".{file}.tmp-{}", std::process::id()));
        shared_dir(&dir)
            .and_then(|()| fs::write(&tmp, &bytes))
            .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)))
            .and_then(|()| fs::rename(&tmp, dir.join(file)))
            .map_err(|e| {
                let _ = fs::remove_file(&tmp);
                format!("cannot store {file}: {e}")
            })?;
        Ok(file.clone())
    }
}

/// What the fetch script found.
#[derive(Debug, serde::Deserialize)]
struct Fetched {
    file: String,
    version: String,
}

/// What the prepare step read.
#[derive(Debug, serde::Deserialize)]
struct Prepared {
    requires: Vec<String>,
}

/// The last stdout line of a successful script run, as JSON.
pub(super) fn last_json<T: serde::de::DeserializeOwned>(
    out: &ol_sandbox::CommandOutput,
) -> Result<T, String> {
    if !out.success {
        return Err(failure_message(out));
    }
    let line = out.stdout.lines().rev().find(|l| !l.trim().is_empty());
    line.and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| format!("unexpected output: {:?}", out.stdout))
}

/// Whether wheel file name `file` (`dist-version(-build)?-py-abi-plat.whl`)
/// is of distribution `name` at `version`.
fn wheel_is_for(file: &str, name: &str, version: &str) -> bool {
    let Some(stem) = file.strip_suffix(".whl") else {
        return false;
    };
    let parts: Vec<&str> = stem.split('-').collect();
    matches!(parts.len(), 5 | 6)
        && normalize(parts[0]) == name
        && parts[1].eq_ignore_ascii_case(&version.replace('-', "_"))
        && !file.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_wheels_must_name_the_distribution_and_version() {
        assert!(wheel_is_for(
            "hostile-1.0-py3-none-any.whl",
            "hostile",
            "1.0"
        ));
        assert!(wheel_is_for(
            "Zope.Interface-5.0-1-cp311-cp311-linux_x86_64.whl",
            "zope-interface",
            "5.0"
        ));
        assert!(!wheel_is_for(
            "numpy-1.0-py3-none-any.whl",
            "hostile",
            "1.0"
        ));
        assert!(!wheel_is_for(
            "hostile-2.0-py3-none-any.whl",
            "hostile",
            "1.0"
        ));
        assert!(!wheel_is_for("hostile-1.0.whl", "hostile", "1.0"));
        assert!(!wheel_is_for(
            "hostile-1.0-py3-none-any.tar.gz",
            "hostile",
            "1.0"
        ));
    }
}
