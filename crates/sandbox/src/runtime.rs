//! The Python runtime that runs inside every sandbox (and its zygote, and
//! the jail library zygotes load), embedded in the binary so `ol` needs no
//! other files, and written into a worker's runtime dir. Finding an
//! interpreter to run it with is `ol-base`'s job.

use std::fs;
use std::path::{Path, PathBuf};

use crate::sock::rootfs::BaseKind;
use crate::{SandboxError, io_err};

/// Source of `runtimes/python/ol_runtime.py`.
pub const PYTHON_RUNTIME: &str = include_str!("../../../runtimes/python/ol_runtime.py");
/// File name the runtime is installed under.
pub const RUNTIME_FILE: &str = "ol_runtime.py";
/// Source of `runtimes/python/ol_zygote.py`.
pub const PYTHON_ZYGOTE: &str = include_str!("../../../runtimes/python/ol_zygote.py");
/// File name the zygote is installed under.
pub const ZYGOTE_FILE: &str = "ol_zygote.py";
/// Source of the stand-in lambda zygotes and blanks load to warm up.
pub const STAND_IN_LAMBDA: &str = include_str!("../../../runtimes/python/warm-up/f.py");
/// Dir (in the runtime dir) the stand-in lambda is installed in; the
/// zygote finds it next to itself (`STAND_IN_DIR` in ol_zygote.py).
pub const STAND_IN_DIR: &str = "warm-up";
/// File name of the stand-in lambda in [`STAND_IN_DIR`].
pub const STAND_IN_FILE: &str = "f.py";
/// The jail's shared library (crates/jail, built by this crate's build
/// script), which zygotes load to enter their children's sandboxes.
pub const JAIL_LIBRARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libol_jail.so"));
/// File name the jail library is installed under.
pub const JAIL_FILE: &str = "libol_jail.so";

/// Writes the embedded runtime, zygote, stand-in lambda and jail library
/// into `dir` (replacing older copies atomically) and returns the
/// runtime's path.
pub fn install_runtime(dir: &Path) -> Result<PathBuf, SandboxError> {
    fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
    install_file(dir, ZYGOTE_FILE, PYTHON_ZYGOTE.as_bytes())?;
    install_file(dir, JAIL_FILE, JAIL_LIBRARY)?;
    let stand_in = dir.join(STAND_IN_DIR);
    fs::create_dir_all(&stand_in).map_err(io_err("cannot create", &stand_in))?;
    install_file(&stand_in, STAND_IN_FILE, STAND_IN_LAMBDA.as_bytes())?;
    install_file(dir, RUNTIME_FILE, PYTHON_RUNTIME.as_bytes())
}

/// Where [`compile_runtime`] notes what it compiled (sources and
/// interpreter), so that it runs once per change.
const COMPILED_STAMP: &str = "__pycache__/.ol-compiled";

/// What [`compile_runtime`] runs: checked-hash pycs (valid while the
/// source is the same, whatever its mtime), named as sandboxes see them.
const COMPILE_PY: &str = r#"import py_compile, sys
for name in sys.argv[2:]:
    py_compile.compile(sys.argv[1] + '/' + name, dfile='/ol/' + name, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
"#;

/// The `-c` program a sandbox's Python runs to start `file` (the runtime
/// or the zygote) from the runtime dir, which sandboxes see at `dir`:
/// importing it, rather than running it as a script (which Python
/// compiles at every start: ~3 ms for the zygote, ~4 ms for the runtime),
/// uses the byte-compiled copy [`compile_runtime`] left in `__pycache__`.
/// The arguments that follow are `sys.argv[1:]` for its `main`.
pub fn start_program(dir: &str, file: &str) -> String {
    let module = file.strip_suffix(".py").unwrap_or(file);
    format!("import sys; sys.path.insert(0, '{dir}'); import {module}; sys.exit({module}.main())")
}

/// Byte-compiles the runtime and the zygote into `dir/__pycache__` with
/// `python`, the interpreter sandboxes run, once per runtime and
/// interpreter: sandboxes see `dir` read-only, so without it every zygote
/// start compiled both again (~7 ms of its start, on the first call's
/// path).
/// Only over a base that takes the host's interpreter (the one the host
/// runs at the path sandboxes see); a failure only costs that time, so it
/// is logged.
pub fn compile_runtime(dir: &Path, python: &Path, base: BaseKind) {
    if base.is_self_contained() {
        return;
    }
    let stamp_path = dir.join(COMPILED_STAMP);
    let stamp = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (PYTHON_RUNTIME, PYTHON_ZYGOTE, python).hash(&mut h);
        format!("{:016x}\n", h.finish())
    };
    if fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return;
    }
    let out = std::process::Command::new(python)
        .args(["-I", "-S", "-c", COMPILE_PY])
        .arg(dir)
        .args([RUNTIME_FILE, ZYGOTE_FILE])
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => {
            if let Err(e) = fs::write(&stamp_path, stamp) {
                tracing::warn!("cannot write {}: {e}", stamp_path.display());
            }
        }
        Ok(out) => tracing::warn!(
            "cannot byte-compile the runtime with {}: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => tracing::warn!(
            "cannot byte-compile the runtime with {}: {e}",
            python.display()
        ),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zygote_holds_no_syscall_numbers_or_kernel_constants() {
        // One jail, in Rust: the zygote only calls the jail's library.
        for needle in [
            "syscall(",
            "prctl(",
            "unshare(",
            "CLONE_",
            "MS_",
            "PR_",
            "SIOC",
            "ioctl(",
            "mount(",
            "setresuid(",
            "0x",
        ] {
            assert!(
                !PYTHON_ZYGOTE.contains(needle),
                "ol_zygote.py holds {needle:?}: every step of entering a sandbox belongs to the jail"
            );
        }
        assert!(PYTHON_ZYGOTE.contains("ol_jail_fork_blank"));
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
        assert_eq!(
            fs::read_to_string(dir.path().join(STAND_IN_DIR).join(STAND_IN_FILE)).expect("read"),
            STAND_IN_LAMBDA
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(leftovers.len(), 4, "no temp files left");
    }
}
