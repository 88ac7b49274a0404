//! Where every resolver, installer and build step runs: an installer
//! sandbox of its own per run, seeing only what [`Access`] gives it, in a
//! private staging dir under `packages/.staging` (only the worker can enter
//! it; the run may write only its own dirs). Runs of trusted code (uv, pip,
//! the fetch script) keep the host's network with the host's index, proxy
//! and TLS settings; the others get no network and none of the host's
//! environment.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use ol_sandbox::{CommandOutput, CommandSpec, Limits};

use super::store::{private_dir, shared_dir};
use super::uv::Tool;
use super::{PackageError, PackagePuller, SOURCE_BUILDS_KEY};

/// Where, in the packages dir, installs and builds are staged (only the
/// worker may enter it; each run gets a private dir inside).
const STAGING: &str = ".staging";
/// Lines of installer output kept in an error message.
const ERROR_LINES: usize = 12;

/// What a sandboxed run may reach.
#[derive(Debug, Default)]
pub(super) struct Access {
    /// Dirs it may write (made the sandbox uid's first).
    pub(super) writable: Vec<PathBuf>,
    /// Extra dirs it may read.
    pub(super) readable: Vec<PathBuf>,
    /// Keep the host's network (only runs of trusted code: uv, pip, the
    /// fetch script), with the host's index, proxy and TLS settings.
    pub(super) network: bool,
    /// Work nothing waits for (compiling a package's bytecode): it runs at
    /// idle CPU priority, so calls and cold starts go first.
    pub(super) background: bool,
}

impl Access {
    /// No network, `write` its one writable dir and `read` one more
    /// readable: a run of package code, or of our code on a package.
    pub(super) fn offline(write: &Path, read: &Path) -> Self {
        Self {
            writable: vec![write.to_path_buf()],
            readable: vec![read.to_path_buf()],
            network: false,
            background: false,
        }
    }
}

/// A private dir under the packages dir's `.staging`, removed when
/// dropped (also when the run in it failed).
pub(super) struct Staging(PathBuf);

impl Staging {
    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl PackagePuller {
    /// What a run of uv or pip that writes `dir` may reach: the network,
    /// `dir` and the download cache.
    pub(super) fn downloading_into(&self, dir: &Path) -> Access {
        Access {
            writable: vec![dir.to_path_buf(), self.settings.cache_dir.clone()],
            readable: Vec::new(),
            network: true,
            background: false,
        }
    }

    /// A new private staging dir (only the worker can enter `.staging`;
    /// what a run writes inside is given to it by [`Self::run`]).
    pub(super) fn staging(&self, label: &str) -> Result<Staging, PackageError> {
        let root = self.settings.packages_dir.join(STAGING);
        self.stale_staging_removed
            .call_once(|| remove_stale_staging(&root));
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

    /// The limits of a run: `installer_limits`, and a CPU share as large
    /// as the machine for trusted code (`network`: uv, pip, the fetch
    /// script), which unpacks wheels on every core; a build of a source
    /// distribution (package code) keeps a lambda's share. numpy from a
    /// local wheel, three installs each, 35 s apart: 1.17–1.62 s with one
    /// CPU's share, 0.72–1.38 s with both.
    pub(super) fn run_limits(&self, network: bool) -> Limits {
        let mut limits = self.settings.limits.clone();
        if network {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let all = u32::try_from(cpus).unwrap_or(u32::MAX).saturating_mul(100);
            limits.cpu_percent = limits.cpu_percent.max(all);
        }
        limits
    }

    /// Runs `argv` in an installer sandbox of its own with `access`.
    pub(super) fn run(
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
                limits: self.run_limits(access.network),
                network: access.network,
                idle: access.background,
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

    /// The error of a failed resolver or installer run: [`PackageError::
    /// SourceOnly`] when it failed for want of wheels, else `otherwise`.
    pub(super) fn run_error(
        &self,
        out: &CommandOutput,
        otherwise: impl FnOnce(String) -> PackageError,
    ) -> PackageError {
        let mut message = failure_message(out);
        let wanted = super::resolve::source_only(&message);
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
}

/// Removes the staging dirs of workers that are gone (killed, or stopped
/// during a run: a package's background bytecode compile is often cut
/// short so). A dir's name ends in `-PID-N`.
fn remove_stale_staging(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The tail of what a failed installer run said.
pub(super) fn failure_message(out: &CommandOutput) -> String {
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

pub(super) fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Lets the installer sandbox's user write `dir` (when we are root).
pub(super) fn make_sandbox_writable(dir: &Path) -> std::io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_of_workers_that_are_gone_is_removed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let ours = format!("numpy==2.4.6-{}-3", std::process::id());
        let gone = "bytecode-six==1.17.0-4000000000-1";
        for name in [ours.as_str(), gone, "unnamed"] {
            fs::create_dir_all(tmp.path().join(name).join("out")).expect("dir");
        }
        remove_stale_staging(tmp.path());
        let mut left: Vec<String> = fs::read_dir(tmp.path())
            .expect("staging")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [ours]);
    }
}
