//! Bytecode for installed packages. A package dir is read-only to every
//! sandbox, so Python cannot cache what it compiles there: without pycs,
//! every zygote and sandbox that imports a package compiles its modules
//! again (numpy's import: 0.27 s from source, 0.08 s from pycs; pandas'
//! ~1.0 s against 0.2 s). uv installs no pycs, and compiling every file at
//! install time would hold up the first call (numpy's 487 files: ~1.1 s on
//! two cores), so each package is compiled once, in the background, after
//! its install: the first zygote compiles what it imports as before, every
//! later one reads pycs.
//!
//! The compile runs [`scripts::COMPILE`] in an installer sandbox of its
//! own: no network, idle CPU priority, the package read-only and a staging
//! dir its only writable place. The worker then [`adopt`]s what it wrote,
//! trusting none of it: only checked-hash pycs (PEP 552: Python uses one
//! only while the hash it records matches its source's), only where
//! Python looks for the pyc of a source file the package has, each copied
//! into a new file the worker owns, as [`super::store::seal`] would leave
//! it. A pyc can only stand in for its own package's code, which runs
//! anyway. A compile that fails or is cut short costs only speed: what
//! has no pyc is compiled at import, as before.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Weak, mpsc};
use std::time::Instant;

use nix::fcntl::{Flock, FlockArg};
use serde::Deserialize;

use super::build::last_json;
use super::installer_sandbox::{Access, path_arg};
use super::store::write_file;
use super::{PackageError, PackagePuller, lock, scripts};

/// In a package dir: its bytecode is done, for the Python whose cache tag
/// the file holds (`cpython-311`).
const MARKER: &str = ".ol-bytecode";
/// Largest pyc adopted (the biggest in numpy and pandas are < 1 MiB).
const MAX_PYC: u64 = 64 << 20;
/// A pyc's header: magic (2 bytes and `\r\n`), flags, then the source's
/// hash; flags 0b11 is a checked-hash pyc (PEP 552).
const CHECKED_HASH_FLAGS: [u8; 4] = [3, 0, 0, 0];

/// What the compile said it did.
#[derive(Debug, Deserialize)]
struct Compiled {
    tag: String,
    compiled: u64,
    failed: u64,
}

/// What [`adopt`] took and refused.
#[derive(Debug, Default, PartialEq, Eq)]
struct Adopted {
    /// pycs copied into the package.
    taken: usize,
    /// Files left out: not a checked-hash pyc of a source the package has.
    refused: usize,
}

impl PackagePuller {
    /// Queues package dir `dir` for its bytecode; the one compile thread
    /// (started by the first call) skips it if it is done already.
    pub(super) fn compile_later(self: &Arc<Self>, dir: PathBuf) {
        let mut queue = lock(&self.bytecode_queue);
        if queue.is_none() {
            let (tx, rx) = mpsc::channel::<PathBuf>();
            let puller = Arc::downgrade(self);
            let started = std::thread::Builder::new()
                .name("ol-bytecode".into())
                .spawn(move || compile_queued(&puller, &rx));
            match started {
                Ok(_) => *queue = Some(tx),
                Err(e) => {
                    tracing::warn!("no bytecode thread: {e}");
                    return;
                }
            }
        }
        if let Some(tx) = queue.as_ref() {
            let _ = tx.send(dir);
        }
    }

    /// Whether package dir `dir` still wants its bytecode: no marker, or
    /// one for another Python.
    fn needs_bytecode(&self, dir: &Path) -> bool {
        fs::read_to_string(dir.join(MARKER)).map_or(true, |tag| tag.trim() != self.bytecode_tag())
    }

    /// The cache tag of the lambdas' Python (`cpython-311`), which names
    /// its pycs.
    fn bytecode_tag(&self) -> String {
        let (major, minor) = self.settings.python_version;
        format!("cpython-{major}{minor}")
    }

    /// Compiles package dir `dir` in an installer sandbox and adopts the
    /// pycs; marks it done when the compile ran to its end.
    fn compile_bytecode(&self, dir: &Path) -> Result<Adopted, PackageError> {
        let started = Instant::now();
        let label = dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let staging = self.staging(&format!("bytecode-{label}"))?;
        let out = staging.path().join("out");
        let ran = self.run(
            "bytecode",
            self.python_script(scripts::COMPILE, &[path_arg(dir), path_arg(&out)]),
            Access {
                background: true,
                ..Access::offline(&out, dir)
            },
        )?;
        // What a compile cut short wrote is as good as a whole one's.
        let adopted = adopt(&out, dir).map_err(|e| {
            PackageError::Installer(format!("cannot add bytecode to {}: {e}", dir.display()))
        })?;
        // Gone before the marker says done.
        drop(staging);
        match last_json::<Compiled>(&ran) {
            Ok(compiled) => {
                // The worker's own name for this Python, so the next
                // worker knows without running it.
                write_file(&dir.join(MARKER), self.bytecode_tag().as_bytes())?;
                tracing::info!(
                    package = %label,
                    tag = %compiled.tag,
                    compiled = compiled.compiled,
                    failed = compiled.failed,
                    adopted = adopted.taken,
                    refused = adopted.refused,
                    ms = started.elapsed().as_millis() as u64,
                    "bytecode"
                );
            }
            Err(e) => tracing::warn!(
                package = %label,
                adopted = adopted.taken,
                ms = started.elapsed().as_millis() as u64,
                "bytecode compile did not finish: {e}"
            ),
        }
        Ok(adopted)
    }
}

/// The compile thread: one package at a time, while the puller lives.
fn compile_queued(puller: &Weak<PackagePuller>, queue: &mpsc::Receiver<PathBuf>) {
    for dir in queue {
        let Some(puller) = puller.upgrade() else {
            return;
        };
        // Workers sharing a packages dir (a cluster's) compile a package
        // once: the others wait here, then find it done.
        let _held = fs::File::open(&dir)
            .ok()
            .and_then(|dir| Flock::lock(dir, FlockArg::LockExclusive).ok());
        if !puller.needs_bytecode(&dir) {
            continue;
        }
        if let Err(e) = puller.compile_bytecode(&dir) {
            tracing::warn!(package = %dir.display(), "no bytecode: {e}");
        }
    }
}

/// Copies the pycs the compile left in `out` into package dir `pkg` (see
/// the module doc for what is taken). Nothing else writes `out` now: its
/// sandbox is gone.
fn adopt(out: &Path, pkg: &Path) -> std::io::Result<Adopted> {
    let mut adopted = Adopted::default();
    let mut dirs = vec![out.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if !kind.is_dir() {
                // Files outside a __pycache__ dir, links, the rest.
                adopted.refused += 1;
            } else if entry.file_name() == "__pycache__" {
                let Ok(rel) = dir.strip_prefix(out) else {
                    continue;
                };
                adopt_cache_dir(&path, pkg, rel, &mut adopted)?;
            } else {
                dirs.push(path);
            }
        }
    }
    Ok(adopted)
}

/// Adopts the pycs of `cache` (`out/REL/__pycache__`) into
/// `pkg/REL/__pycache__`, if `pkg/REL` is a dir of the package's own (no
/// link on the way).
fn adopt_cache_dir(
    cache: &Path,
    pkg: &Path,
    rel: &Path,
    adopted: &mut Adopted,
) -> std::io::Result<()> {
    let files: Vec<fs::DirEntry> = fs::read_dir(cache)?.collect::<Result<_, _>>()?;
    let Some(src_dir) = real_dir_below(pkg, rel) else {
        adopted.refused += files.len();
        return Ok(());
    };
    let target_dir = src_dir.join("__pycache__");
    let mut exists = match fs::symlink_metadata(&target_dir) {
        Ok(m) if m.is_dir() => true,
        Ok(_) => {
            // A __pycache__ that is not a dir (a link the package
            // shipped): leave it be.
            adopted.refused += files.len();
            return Ok(());
        }
        Err(_) => false,
    };
    for entry in files {
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = match pyc_of_source(&entry, &src_dir, &name)? {
            Some(bytes) => bytes,
            None => {
                adopted.refused += 1;
                continue;
            }
        };
        if !exists {
            fs::create_dir(&target_dir)?;
            fs::set_permissions(&target_dir, fs::Permissions::from_mode(0o755))?;
            exists = true;
        }
        write_file(&target_dir.join(&name), &bytes)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        adopted.taken += 1;
    }
    Ok(())
}

/// `pkg/rel`, if every step of it is a real dir (not a link).
fn real_dir_below(pkg: &Path, rel: &Path) -> Option<PathBuf> {
    let mut dir = pkg.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(part) => dir.push(part),
            Component::CurDir => continue,
            _ => return None,
        }
        if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            return None;
        }
    }
    Some(dir)
}

/// The bytes of `entry` if it is a checked-hash pyc named for a source
/// file in `src_dir` (`NAME.TAG.pyc` for `NAME.py`), else `None`.
fn pyc_of_source(
    entry: &fs::DirEntry,
    src_dir: &Path,
    name: &str,
) -> std::io::Result<Option<Vec<u8>>> {
    let Some((stem, tag)) = name.strip_suffix(".pyc").and_then(|n| n.rsplit_once('.')) else {
        return Ok(None);
    };
    let tag_ok = !tag.is_empty()
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let source = src_dir.join(format!("{stem}.py"));
    if stem.is_empty() || !tag_ok || !fs::symlink_metadata(&source).is_ok_and(|m| m.is_file()) {
        return Ok(None);
    }
    let meta = entry.metadata()?;
    if !entry.file_type()?.is_file() || meta.len() > MAX_PYC {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    fs::File::open(entry.path())?
        .take(MAX_PYC + 1)
        .read_to_end(&mut bytes)?;
    let checked_hash =
        bytes.len() >= 16 && bytes[2..4] == *b"\r\n" && bytes[4..8] == CHECKED_HASH_FLAGS;
    Ok(checked_hash.then_some(bytes))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, symlink};
    use std::process::Command;

    use super::*;

    const PYTHON: &str = "/usr/bin/python3";

    /// A package tree: `pkg/mod/__init__.py`, `pkg/mod/sub/deep.py`, a file
    /// Python 3 cannot compile, a link to a source, and a dir link.
    fn package(root: &Path) -> PathBuf {
        let pkg = root.join("pkg");
        fs::create_dir_all(pkg.join("mod/sub")).expect("dirs");
        fs::write(
            pkg.join("mod/__init__.py"),
            "from mod.sub import deep\nX = deep.Y + 1\n",
        )
        .expect("init");
        fs::write(pkg.join("mod/sub/__init__.py"), "").expect("sub");
        fs::write(pkg.join("mod/sub/deep.py"), "Y = 41\n").expect("deep");
        fs::write(pkg.join("mod/py2.py"), "print 'old'\n").expect("py2");
        symlink("deep.py", pkg.join("mod/sub/alias.py")).expect("link");
        symlink("sub", pkg.join("mod/linked")).expect("dir link");
        pkg
    }

    /// Runs the compile script on `pkg`, writing into `out`; its JSON.
    fn compile(pkg: &Path, out: &Path) -> serde_json::Value {
        let run = Command::new(PYTHON)
            .args(["-I", "-c", scripts::COMPILE])
            .arg(pkg)
            .arg(out)
            .output()
            .expect("python3");
        assert!(run.status.success(), "{run:?}");
        serde_json::from_slice(&run.stdout).expect("json")
    }

    #[test]
    fn compiled_pycs_are_adopted_and_python_imports_them_without_compiling() {
        let tmp = tempfile::tempdir().expect("tmp");
        let pkg = package(tmp.path());
        let out = tmp.path().join("out");
        let said = compile(&pkg, &out);
        assert_eq!(
            (&said["compiled"], &said["failed"]),
            (&3.into(), &1.into()),
            "{said}"
        );
        let adopted = adopt(&out, &pkg).expect("adopt");
        assert_eq!(
            adopted,
            Adopted {
                taken: 3,
                refused: 0
            }
        );
        let tag = said["tag"].as_str().expect("tag");
        let pyc = pkg.join(format!("mod/sub/__pycache__/deep.{tag}.pyc"));
        let meta = fs::symlink_metadata(&pyc).expect("deep's pyc");
        assert_eq!((meta.mode() & 0o7777, meta.nlink()), (0o644, 1));
        let cache = fs::symlink_metadata(pkg.join("mod/__pycache__")).expect("cache dir");
        assert_eq!(cache.mode() & 0o7777, 0o755);
        // Python takes them: importing compiles nothing of the package
        // (the audit hook sees every `compile`), and reads its pycs.
        let check = "import sys\n\
            seen = []\n\
            sys.addaudithook(lambda ev, args: seen.append((ev, str(args[1]) if ev == 'compile' else '')))\n\
            sys.path.insert(0, sys.argv[1])\n\
            import mod\n\
            assert mod.X == 42\n\
            compiled = [f for ev, f in seen if ev == 'compile' and f.startswith(sys.argv[1])]\n\
            loads = [ev for ev, f in seen if ev == 'marshal.loads']\n\
            print(len(compiled), len(loads) >= 3)\n";
        let run = Command::new(PYTHON)
            .args(["-I", "-B", "-c", check])
            .arg(&pkg)
            .output()
            .expect("python3");
        assert!(run.status.success(), "{run:?}");
        assert_eq!(
            String::from_utf8_lossy(&run.stdout).trim(),
            "0 True",
            "{run:?}"
        );
    }

    #[test]
    fn only_checked_hash_pycs_of_the_packages_own_sources_are_taken() {
        let tmp = tempfile::tempdir().expect("tmp");
        let pkg = package(tmp.path());
        let out = tmp.path().join("out");
        compile(&pkg, &out);
        let cache = out.join("mod/__pycache__");
        let good = fs::read_dir(&cache)
            .expect("cache")
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("__init__."))
            .expect("init's pyc")
            .path();
        let mut timestamp = fs::read(&good).expect("pyc");
        timestamp[4..8].copy_from_slice(&[0, 0, 0, 0]);
        // A pyc validated by time, not hash; one for a source the package
        // lacks; a link to another file; a stray file; a pyc under a dir
        // the package has only as a link; and one beside no dir at all.
        fs::write(cache.join("stamped.x-1.pyc"), &timestamp).expect("stamped");
        fs::write(pkg.join("mod/stamped.py"), "").expect("stamped source");
        fs::copy(&good, cache.join("ghost.x-1.pyc")).expect("ghost");
        symlink("/etc/passwd", cache.join("py2.x-1.pyc")).expect("link");
        fs::write(out.join("mod/notes.txt"), "").expect("stray");
        fs::create_dir_all(out.join("mod/linked/__pycache__")).expect("linked");
        fs::copy(&good, out.join("mod/linked/__pycache__/deep.x-1.pyc")).expect("via link");
        fs::create_dir_all(out.join("nowhere/__pycache__")).expect("nowhere");
        fs::copy(&good, out.join("nowhere/__pycache__/a.x-1.pyc")).expect("nowhere pyc");
        let adopted = adopt(&out, &pkg).expect("adopt");
        assert_eq!(
            adopted,
            Adopted {
                taken: 3,
                refused: 6
            }
        );
        for gone in [
            "mod/__pycache__/stamped.x-1.pyc",
            "mod/__pycache__/ghost.x-1.pyc",
            "mod/__pycache__/py2.x-1.pyc",
            "mod/notes.txt",
            "mod/sub/__pycache__/deep.x-1.pyc",
            "nowhere",
        ] {
            assert!(
                fs::symlink_metadata(pkg.join(gone)).is_err(),
                "{gone} taken"
            );
        }
    }

    #[test]
    fn a_shipped_pycache_link_is_left_alone() {
        let tmp = tempfile::tempdir().expect("tmp");
        let pkg = package(tmp.path());
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir_all(&elsewhere).expect("elsewhere");
        symlink(&elsewhere, pkg.join("mod/__pycache__")).expect("link");
        let out = tmp.path().join("out");
        compile(&pkg, &out);
        let adopted = adopt(&out, &pkg).expect("adopt");
        assert_eq!(adopted.taken, 2, "{adopted:?}");
        assert_eq!(fs::read_dir(&elsewhere).expect("elsewhere").count(), 0);
    }
}
