//! The Python runtime that runs inside every sandbox, embedded in the binary
//! so `ol` needs no other files, and the search for a real interpreter to
//! run it with (never the pyenv shim: FLOORS.md measures it at ~45 ms).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{SandboxError, io_err};

/// Source of `runtimes/python/ol_runtime.py`.
pub const PYTHON_RUNTIME: &str = include_str!("../../../runtimes/python/ol_runtime.py");
/// File name the runtime is installed under.
pub const RUNTIME_FILE: &str = "ol_runtime.py";
/// Source of `runtimes/python/ol_zygote.py`.
pub const PYTHON_ZYGOTE: &str = include_str!("../../../runtimes/python/ol_zygote.py");
/// File name the zygote is installed under.
pub const ZYGOTE_FILE: &str = "ol_zygote.py";
/// The jail's shared library (crates/jail, built by this crate's build
/// script), which zygotes load to enter their children's sandboxes.
pub const JAIL_LIBRARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libol_jail.so"));
/// File name the jail library is installed under.
pub const JAIL_FILE: &str = "libol_jail.so";
/// Oldest Python the runtime supports.
const MIN_PYTHON: (u32, u32) = (3, 9);

/// Writes the embedded runtime, zygote and jail library into `dir`
/// (replacing older copies atomically) and returns the runtime's path.
pub fn install_runtime(dir: &Path) -> Result<PathBuf, SandboxError> {
    fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
    install_file(dir, ZYGOTE_FILE, PYTHON_ZYGOTE.as_bytes())?;
    install_file(dir, JAIL_FILE, JAIL_LIBRARY)?;
    install_file(dir, RUNTIME_FILE, PYTHON_RUNTIME.as_bytes())
}

/// Writes `dir/name` atomically unless it already holds `contents`.
pub fn install_file(dir: &Path, name: &str, contents: &[u8]) -> Result<PathBuf, SandboxError> {
    let path = dir.join(name);
    if fs::read(&path).is_ok_and(|old| old == contents) {
        return Ok(path);
    }
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    fs::write(&tmp, contents).map_err(io_err("cannot write", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("cannot install", &path))?;
    Ok(path)
}

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

/// Runs `candidate` (a name on PATH or a path, possibly a shim) once and
/// asks it for the real interpreter behind it.
pub fn resolve_python(candidate: &str) -> Result<Python, SandboxError> {
    let mut cmd = Command::new(candidate);
    cmd.args(["-I", "-S", "-c", PROBE]);
    probe(candidate, cmd, "")
}

/// Like [`resolve_python`], for the interpreter `candidate` of the root
/// file system `root` (a self-contained base), run in a chroot of it so
/// its paths and version are the ones a sandbox over `root` sees.
pub fn resolve_python_in(root: &Path, candidate: &str) -> Result<Python, SandboxError> {
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
fn probe(candidate: &str, mut cmd: Command, place: &str) -> Result<Python, SandboxError> {
    let out = cmd.output().map_err(|e| {
        SandboxError::Python(format!(
            "cannot run Python interpreter `{candidate}`{place}: {e}; set \"python\" in config.json to a Python {}.{}+ interpreter",
            MIN_PYTHON.0, MIN_PYTHON.1
        ))
    })?;
    if !out.status.success() {
        return Err(SandboxError::Python(format!(
            "`{candidate}`{place} failed ({}): {}; set \"python\" in config.json to a Python {}.{}+ interpreter",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            MIN_PYTHON.0,
            MIN_PYTHON.1
        )));
    }
    parse_probe(candidate, &String::from_utf8_lossy(&out.stdout))
}

fn parse_probe(candidate: &str, text: &str) -> Result<Python, SandboxError> {
    let bad = || SandboxError::Python(format!("`{candidate}` gave an unexpected answer: {text:?}"));
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
        return Err(SandboxError::Python(format!(
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
    fn install_writes_once_and_replaces_stale_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = install_runtime(dir.path()).expect("install");
        assert_eq!(fs::read_to_string(&path).expect("read"), PYTHON_RUNTIME);
        fs::write(&path, "old").expect("write");
        install_runtime(dir.path()).expect("reinstall");
        assert_eq!(fs::read_to_string(&path).expect("read"), PYTHON_RUNTIME);
        assert_eq!(
            fs::read_to_string(dir.path().join(ZYGOTE_FILE)).expect("read"),
            PYTHON_ZYGOTE
        );
        assert_eq!(
            fs::read(dir.path().join(JAIL_FILE)).expect("read"),
            JAIL_LIBRARY
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(leftovers.len(), 3, "no temp files left");
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
