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

/// [`resolve`], remembered in the file `cache` for a host base and an
/// interpreter given by absolute path that is a binary: a worker start
/// then reads a few lines instead of starting Python (~10 ms on the first
/// call's path). The probe runs again whenever the candidate, the file's
/// identity (device, inode, size, mtime, ctime) or the prefix's presence
/// changes. Scripts (a pyenv shim, whose answer depends on the
/// environment), names looked up on PATH and self-contained bases are
/// always probed. A cache that cannot be written is not an error.
pub fn resolve_cached(
    kind: BaseKind,
    base: &Path,
    candidate: &str,
    cache: &Path,
) -> Result<Python, BaseError> {
    let Some(identity) = (!kind.is_self_contained())
        .then(|| binary_identity(candidate))
        .flatten()
    else {
        return resolve(kind, base, candidate);
    };
    if let Some(python) = std::fs::read_to_string(cache)
        .ok()
        .and_then(|text| cached_answer(&text, &identity, candidate))
    {
        return Ok(python);
    }
    let python = resolve(kind, base, candidate)?;
    let text = format!(
        "{identity}\n{}\n{}.{}\n{}\n",
        python.executable.display(),
        python.version.0,
        python.version.1,
        python.prefix.display()
    );
    let tmp = cache.with_extension("tmp");
    let _ = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, cache));
    Ok(python)
}

/// What identifies the interpreter file `candidate` for [`resolve_cached`]:
/// `None` unless it is an absolute path to an ELF binary.
fn binary_identity(candidate: &str) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let path = Path::new(candidate);
    if !path.is_absolute() {
        return None;
    }
    let mut file = std::fs::File::open(path).ok()?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).ok()?;
    if magic != *b"\x7fELF" {
        return None;
    }
    let m = file.metadata().ok()?;
    Some(format!(
        "{candidate}\t{}:{}:{}:{}.{}:{}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

/// The interpreter a cache file's `text` records for `identity`, if it is
/// for that file and its prefix is still there.
fn cached_answer(text: &str, identity: &str, candidate: &str) -> Option<Python> {
    let (first, answer) = text.split_once('\n')?;
    if first != identity {
        return None;
    }
    let python = parse_probe(candidate, answer.trim_end()).ok()?;
    (python.prefix.is_dir() && python.executable.is_file()).then_some(python)
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
    fn a_cached_answer_is_used_only_for_the_same_file_with_its_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix = dir.path().display().to_string();
        let exe = std::env::current_exe().expect("exe");
        let exe = exe.display().to_string();
        let answer = format!("{exe}\n3.11\n{prefix}\n");
        let python = cached_answer(&format!("id-1\n{answer}"), "id-1", "py").expect("hit");
        assert_eq!(python.version, (3, 11));
        assert_eq!(python.prefix, dir.path());
        // Another file (or the same one changed) is probed again.
        assert!(cached_answer(&format!("id-1\n{answer}"), "id-2", "py").is_none());
        // So is one whose prefix went away, or a damaged cache.
        let gone = format!("id-1\n{exe}\n3.11\n{prefix}/gone\n");
        assert!(cached_answer(&gone, "id-1", "py").is_none());
        assert!(cached_answer("id-1\ngarbage", "id-1", "py").is_none());
    }

    #[test]
    fn only_absolute_binaries_are_identified_for_the_cache() {
        let exe = std::env::current_exe().expect("exe");
        let id = binary_identity(&exe.display().to_string()).expect("an ELF binary");
        assert!(id.starts_with(&format!("{}\t", exe.display())), "{id}");
        assert!(binary_identity("python3").is_none());
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("python3");
        std::fs::write(&script, "#!/bin/sh\nexec python3 \"$@\"\n").expect("write");
        assert!(binary_identity(&script.display().to_string()).is_none());
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
