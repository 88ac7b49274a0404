//! The package store's rule: what lambdas import is written by the worker,
//! never by a sandbox's uid.
//!
//! An installer sandbox writes into a private staging dir (its uid owns
//! it); before that tree joins the store, [`seal`] walks it without
//! following links and makes it the worker's: every entry owned by the
//! worker (root), nothing writable by group or others, directories
//! readable by all. What an install never legitimately produces is
//! refused instead: symlinks leading out of the tree, device nodes,
//! FIFOs and sockets, setuid/setgid files, and files with hard links.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::PackageError;

/// Why a staged tree may not join the store.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// A symlink that is absolute or climbs out of the tree.
    #[error("{path} is a symlink leading out of the package ({target})")]
    Symlink {
        /// The link.
        path: PathBuf,
        /// Where it points.
        target: PathBuf,
    },
    /// A device node, FIFO or socket.
    #[error("{0} is not a regular file, directory or symlink")]
    Special(PathBuf),
    /// A setuid or setgid file.
    #[error("{0} is setuid or setgid")]
    SetId(PathBuf),
    /// A file with more than one name.
    #[error("{0} has hard links")]
    HardLink(PathBuf),
    /// A file system operation failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Makes the tree at `root` the worker's (see the module doc), or says
/// why it may not join the store. Run it only once nothing else can write
/// the tree (its sandbox is gone).
pub fn seal(root: &Path) -> Result<(), SealError> {
    let as_root = nix::unistd::geteuid().is_root();
    let mut todo = vec![root.to_path_buf()];
    while let Some(path) = todo.pop() {
        let io = |what: &'static str| {
            let path = path.clone();
            move |source| SealError::Io { what, path, source }
        };
        let meta = fs::symlink_metadata(&path).map_err(io("inspect"))?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target = fs::read_link(&path).map_err(io("read link"))?;
            let Ok(inside) = path.strip_prefix(root) else {
                return Err(SealError::Symlink { path, target });
            };
            if !stays_inside(inside, &target) {
                return Err(SealError::Symlink { path, target });
            }
        } else if kind.is_dir() {
            for entry in fs::read_dir(&path).map_err(io("list"))? {
                todo.push(entry.map_err(io("list"))?.path());
            }
        } else if kind.is_file() {
            if meta.mode() & 0o6000 != 0 {
                return Err(SealError::SetId(path));
            }
            if meta.nlink() > 1 {
                return Err(SealError::HardLink(path));
            }
        } else {
            return Err(SealError::Special(path));
        }
        if as_root {
            std::os::unix::fs::lchown(&path, Some(0), Some(0)).map_err(io("chown"))?;
        }
        // (A symlink's own mode means nothing; chmod would follow it.)
        if !kind.is_symlink() {
            let mode = if kind.is_dir() {
                0o755
            } else {
                // Keep whether it is executable; readable by all.
                (meta.mode() & 0o755) | 0o644
            };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io("chmod"))?;
        }
    }
    Ok(())
}

/// Creates `dir` (if missing) for the worker alone: root's, mode 0700.
pub(super) fn private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Creates `dir` (if missing) readable by sandboxes, writable by the
/// worker alone.
pub(super) fn shared_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
}

/// Writes a file the worker owns (a new one, renamed over the old, so a
/// reader never sees half of it).
pub(super) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), PackageError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    fs::write(&tmp, bytes)
        .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)))
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            PackageError::Installer(format!("cannot write {}: {e}", path.display()))
        })
}

/// Whether a symlink at `link` (relative to the tree's root) pointing to
/// `target` resolves inside the tree, by its text alone.
fn stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    // Depth of the link's directory below the root.
    let mut depth = link.components().count().saturating_sub(1) as isize;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => depth -= 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_may_only_stay_inside() {
        assert!(stays_inside(Path::new("a/link"), Path::new("b")));
        assert!(stays_inside(Path::new("a/link"), Path::new("../b/c")));
        assert!(!stays_inside(Path::new("a/link"), Path::new("../../x")));
        assert!(!stays_inside(Path::new("link"), Path::new("..")));
        assert!(!stays_inside(Path::new("a/link"), Path::new("/etc/passwd")));
        assert!(!stays_inside(
            Path::new("a/link"),
            Path::new("b/../../../x")
        ));
    }

    #[test]
    fn seal_makes_the_tree_read_only_to_others_and_refuses_oddities() {
        let tmp = tempfile::tempdir().expect("tmp");
        let pkg = tmp.path().join("pkg");
        fs::create_dir_all(pkg.join("mod/sub")).expect("dirs");
        fs::write(pkg.join("mod/__init__.py"), "x = 1\n").expect("file");
        fs::write(pkg.join("mod/tool"), "#!/bin/sh\n").expect("file");
        fs::set_permissions(pkg.join("mod/tool"), fs::Permissions::from_mode(0o777))
            .expect("chmod");
        fs::set_permissions(pkg.join("mod/sub"), fs::Permissions::from_mode(0o777)).expect("chmod");
        symlink("../mod/__init__.py", pkg.join("mod/sub/alias.py")).expect("symlink");
        seal(&pkg).expect("seal");
        let mode = |p: &str| {
            fs::symlink_metadata(pkg.join(p))
                .expect("meta")
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("mod/__init__.py"), 0o644);
        assert_eq!(mode("mod/tool"), 0o755);
        assert_eq!(mode("mod/sub"), 0o755);

        let out = tmp.path().join("out");
        fs::create_dir_all(&out).expect("dir");
        symlink("/etc/passwd", out.join("passwd")).expect("symlink");
        assert!(matches!(seal(&out), Err(SealError::Symlink { .. })));
        fs::remove_file(out.join("passwd")).expect("rm");
        symlink("../../elsewhere", out.join("up")).expect("symlink");
        assert!(matches!(seal(&out), Err(SealError::Symlink { .. })));
        fs::remove_file(out.join("up")).expect("rm");

        fs::write(out.join("suid"), "").expect("file");
        fs::set_permissions(out.join("suid"), fs::Permissions::from_mode(0o4755)).expect("chmod");
        assert!(matches!(seal(&out), Err(SealError::SetId(_))));
        fs::remove_file(out.join("suid")).expect("rm");

        fs::write(out.join("a"), "").expect("file");
        fs::hard_link(out.join("a"), out.join("b")).expect("link");
        assert!(matches!(seal(&out), Err(SealError::HardLink(_))));
        fs::remove_file(out.join("b")).expect("rm");

        nix::unistd::mkfifo(&out.join("fifo"), nix::sys::stat::Mode::S_IRWXU).expect("fifo");
        assert!(matches!(seal(&out), Err(SealError::Special(_))));
        fs::remove_file(out.join("fifo")).expect("rm");
        seal(&out).expect("clean again");
    }

    #[test]
    #[ignore = "needs root"]
    fn seal_as_root_makes_every_entry_roots() {
        let tmp = tempfile::tempdir().expect("tmp");
        let pkg = tmp.path().join("pkg");
        fs::create_dir_all(pkg.join("mod")).expect("dirs");
        fs::write(pkg.join("mod/__init__.py"), "x = 1\n").expect("file");
        symlink("__init__.py", pkg.join("mod/alias.py")).expect("symlink");
        // As an installer sandbox leaves a tree: the sandbox user's.
        let entries = ["", "mod", "mod/__init__.py", "mod/alias.py"];
        for entry in entries {
            std::os::unix::fs::lchown(pkg.join(entry), Some(65534), Some(65534)).expect("chown");
        }
        seal(&pkg).expect("seal");
        for entry in entries {
            let meta = fs::symlink_metadata(pkg.join(entry)).expect("meta");
            assert_eq!((meta.uid(), meta.gid()), (0, 0), "{entry:?}");
        }
    }
}
