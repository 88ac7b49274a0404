//! Finding the Python sandboxes run: the real interpreter behind a
//! configured name or path (never a pyenv shim, a bash script that costs
//! ~45 ms a start: docs/benchmarks.md, "Floors"), asked once for its binary, version and prefix, on the
//! host or, for a self-contained base, in a chroot of the base.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{BaseError, BaseKind};

/// Oldest Python the runtime supports.
const MIN_PYTHON: (u32, u32) = (3, 9);

/// The interpreter found for a configured name or path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Python {
    /// Absolute path of the real interpreter binary.
    pub executable: PathBuf,
    /// `(major, minor)`.
    pub version: (u32, u32),
    /// Its installation prefix (`sys.base_prefix`), which a sandbox must see.
    pub prefix: PathBuf,
}

/// What the interpreter is asked: its real binary, version and prefix.
const PROBE: &str = "import sys; sys.stdout.write('\\n'.join([sys.executable, '%d.%d' % sys.version_info[:2], sys.base_prefix]))";

/// The interpreter `candidate` names, as sandboxes over the base `base`
/// of `kind` run it: the host's for a host base, the base's own (run in a
/// chroot of it) for a self-contained one.
pub fn resolve(kind: BaseKind, base: &Path, candidate: &str) -> Result<Python, BaseError> {
    if kind.is_self_contained() {
        if !nix::unistd::geteuid().is_root() {
            return Err(BaseError::RootOnly(base.to_path_buf()));
        }
        resolve_python_in(base, candidate)
    } else {
        resolve_python(candidate)
    }
}

/// Runs `candidate` (a name on PATH or a path, possibly a shim) once and
/// asks it for the real interpreter behind it.
pub fn resolve_python(candidate: &str) -> Result<Python, BaseError> {
    let mut cmd = Command::new(candidate);
    cmd.args(["-I", "-S", "-c", PROBE]);
    probe(candidate, cmd, "")
}

/// Like [`resolve_python`], for the interpreter `candidate` of the root
/// file system `root` (a self-contained base), run in a chroot of it so
/// its paths and version are the ones a sandbox over `root` sees.
pub fn resolve_python_in(root: &Path, candidate: &str) -> Result<Python, BaseError> {
    // coreutils' chroot, where Debian keeps it even when sbin is not on PATH.
    let chroot = ["/usr/sbin/chroot", "/sbin/chroot"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("chroot");
    let mut cmd = Command::new(chroot);
    cmd.arg(root)
        .arg(candidate)
        .args(["-I", "-S", "-c", PROBE])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C.UTF-8");
    probe(candidate, cmd, &format!(" in {}", root.display()))
}

/// Runs `cmd` (an interpreter with [`PROBE`]) and reads its answer; `place`
/// says where `candidate` was looked for.
fn probe(candidate: &str, mut cmd: Command, place: &str) -> Result<Python, BaseError> {
    let out = cmd.output().map_err(|e| {
        BaseError::Python(format!(
            "cannot run Python interpreter `{candidate}`{place}: {e}; set \"python\" in config.json to a Python {}.{}+ interpreter",
            MIN_PYTHON.0, MIN_PYTHON.1
        ))
    })?;
    if !out.status.success() {
        return Err(BaseError::Python(format!(
            "`{candidate}`{place} failed ({}): {}; set \"python\" in config.json to a Python {}.{}+ interpreter",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            MIN_PYTHON.0,
            MIN_PYTHON.1
        )));
    }
    parse_probe(candidate, &String::from_utf8_lossy(&out.stdout))
}

fn parse_probe(candidate: &str, text: &str) -> Result<Python, BaseError> {
    let bad = || BaseError::Python(format!("`{candidate}` gave an unexpected answer: {text:?}"));
    let mut lines = text.lines();
    let executable = PathBuf::from(lines.next().ok_or_else(bad)?);
    let (major, minor) = lines
        .next()
        .ok_or_else(bad)?
        .split_once('.')
        .ok_or_else(bad)?;
    let version = (
        major.parse().map_err(|_| bad())?,
        minor.parse().map_err(|_| bad())?,
    );
    let prefix = PathBuf::from(lines.next().ok_or_else(bad)?);
    if !executable.is_absolute() || !prefix.is_absolute() {
        return Err(bad());
    }
    if version < MIN_PYTHON {
        return Err(BaseError::Python(format!(
            "`{candidate}` is Python {}.{}; ol needs {}.{} or newer",
            version.0, version.1, MIN_PYTHON.0, MIN_PYTHON.1
        )));
    }
    Ok(Python {
        executable,
        version,
        prefix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_answer_is_parsed_and_checked() {
        let py = parse_probe("python3", "/usr/bin/python3.11\n3.11\n/usr").expect("ok");
        assert_eq!(py.executable, PathBuf::from("/usr/bin/python3.11"));
        assert_eq!(py.version, (3, 11));
        assert_eq!(py.prefix, PathBuf::from("/usr"));
        assert!(parse_probe("python3", "/usr/bin/python3.6\n3.6\n/usr").is_err());
        assert!(parse_probe("python3", "python3\n3.11\n/usr").is_err());
        assert!(parse_probe("python3", "/usr/bin/python3\n3.11").is_err());
        assert!(parse_probe("python3", "garbage").is_err());
    }

    #[test]
    fn missing_interpreter_is_a_clear_error() {
        let err = resolve_python("/nonexistent/python").expect_err("must fail");
        assert!(
            err.to_string().contains("cannot run Python interpreter"),
            "{err}"
        );
    }
}
