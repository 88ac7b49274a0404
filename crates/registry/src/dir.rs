//! [`DirRegistry`]: a local directory where lambda `NAME` is the directory
//! `ROOT/NAME/` or the archive `ROOT/NAME.tar.gz` (the directory wins).
//! Archives are unpacked once per version into a cache directory.

use std::collections::BTreeSet;
use std::fs::{self, File, Metadata};
use std::io::{self, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::archive::{StagedLambda, unpack_once};
use crate::bundle::has_top_level_python;
use crate::{LambdaCode, Registry, RegistryError, UnpackLimits, io_error, validate_name};

/// Suffix of lambdas stored as archives.
const ARCHIVE_SUFFIX: &str = ".tar.gz";

/// A registry that is a local directory: lambda `NAME` is `ROOT/NAME/`, or
/// else `ROOT/NAME.tar.gz` (a gzipped tar of the lambda's files, at its
/// root or under a single top-level directory such as `NAME/`).
///
/// An archive is unpacked, with the checks of [`unpack_lambda`], into
/// `CACHE/NAME/<mtime_ns>-<size>/` the first time that version is fetched;
/// older versions of the same lambda are removed from the cache then.
///
/// [`LambdaCode::version`] is, for a directory,
/// `dir-<newest mtime in ns>-<entries>-<bytes>` over the directory itself
/// and everything below it (symlinks not followed): editing, adding,
/// deleting or renaming anything changes it, except an edit that keeps a
/// file's size within the file system's timestamp granularity of the
/// previous change. For an archive it is `tgz-<mtime_ns>-<size>` of the
/// archive; replace archives atomically (write, then rename) so a fetch
/// never sees half of one.
#[derive(Debug, Clone)]
pub struct DirRegistry {
    root: PathBuf,
    cache: PathBuf,
    limits: UnpackLimits,
}

impl DirRegistry {
    /// A registry rooted at `root`, caching unpacked archives in
    /// `root/.cache` (hidden from [`Registry::list`]). Prefer
    /// [`DirRegistry::with_cache`] to keep the registry directory clean.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let cache = root.join(".cache");
        Self::with_cache(root, cache)
    }

    /// A registry rooted at `root`, unpacking archives under `cache`.
    pub fn with_cache(root: impl Into<PathBuf>, cache: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            cache: cache.into(),
            limits: UnpackLimits::default(),
        }
    }

    /// The same registry with other unpacking limits (for archives in the
    /// registry and for [`DirRegistry::install`]).
    pub fn with_limits(mut self, limits: UnpackLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The directory this registry reads.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where archives are unpacked.
    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// Installs lambda `name` from the gzipped tar `tar_gz` (untrusted:
    /// same checks and limits as [`unpack_lambda`]). The archive must hold
    /// at least one regular `.py` file at its top level
    /// ([`RegistryError::NoEntryFile`] otherwise). `ROOT/NAME/` is then
    /// replaced atomically (an exchange of directories where the file
    /// system allows it); the old code is deleted afterwards, and so are a
    /// `ROOT/NAME.tar.gz` and its cache, which the directory would shadow.
    pub fn install(&self, name: &str, tar_gz: &[u8]) -> Result<LambdaCode, RegistryError> {
        validate_name(name)?;
        fs::create_dir_all(&self.root).map_err(io_error(&self.root))?;
        let staged = StagedLambda::unpack(tar_gz, &self.root, name, &self.limits)?;
        if !has_top_level_python(staged.root())? {
            return Err(RegistryError::NoEntryFile(name.to_string()));
        }
        let target = self.root.join(name);
        replace_dir(staged.root(), &target)?;
        // Dropping `staged` deletes the old code, now where the new was.
        drop(staged);
        remove_file_if_present(&self.archive_path(name))?;
        remove_dir_if_present(&self.cache.join(name))?;
        Ok(LambdaCode {
            version: dir_version(&target)?,
            dir: target,
        })
    }

    /// Deletes lambda `name`: `ROOT/NAME/`, `ROOT/NAME.tar.gz` and its
    /// unpacked cache. [`RegistryError::NotFound`] when there was neither a
    /// directory nor an archive.
    pub fn remove(&self, name: &str) -> Result<(), RegistryError> {
        validate_name(name)?;
        let removed_dir = remove_dir_if_present(&self.root.join(name))?;
        let removed_archive = remove_file_if_present(&self.archive_path(name))?;
        remove_dir_if_present(&self.cache.join(name))?;
        if removed_dir || removed_archive {
            Ok(())
        } else {
            Err(RegistryError::NotFound(name.to_string()))
        }
    }

    fn archive_path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}{ARCHIVE_SUFFIX}"))
    }

    /// Lambda `name` from `ROOT/NAME.tar.gz`, unpacked into the cache.
    fn fetch_archive(&self, name: &str) -> Result<Option<LambdaCode>, RegistryError> {
        let archive = self.archive_path(name);
        let file = match File::open(&archive) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(RegistryError::Io {
                    path: archive,
                    source,
                });
            }
        };
        // Stat the open file, so the key names exactly what is read.
        let meta = file.metadata().map_err(io_error(&archive))?;
        if !meta.is_file() {
            return Ok(None);
        }
        let key = format!("{}-{}", mtime_ns(&meta), meta.len());
        let versions = self.cache.join(name);
        let dir = versions.join(&key);
        let code = LambdaCode {
            dir: dir.clone(),
            version: format!("tgz-{key}"),
        };
        if dir.is_dir() {
            return Ok(Some(code));
        }
        unpack_once(BufReader::new(file), &dir, &self.limits)?;
        prune_versions(&versions, &key)?;
        Ok(Some(code))
    }
}

impl Registry for DirRegistry {
    fn kind(&self) -> &'static str {
        "dir"
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn fetch(&self, name: &str) -> Result<Option<LambdaCode>, RegistryError> {
        validate_name(name)?;
        let dir = self.root.join(name);
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(Some(LambdaCode {
                version: dir_version(&dir)?,
                dir,
            })),
            Ok(_) => self.fetch_archive(name),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.fetch_archive(name),
            Err(source) => Err(RegistryError::Io { path: dir, source }),
        }
    }

    fn list(&self) -> Result<Vec<String>, RegistryError> {
        let io_err = io_error(&self.root);
        let entries = fs::read_dir(&self.root)
            .and_then(|it| it.collect::<io::Result<Vec<_>>>())
            .map_err(io_err)?;
        let mut names = BTreeSet::new();
        for entry in entries {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let name = match file_name.strip_suffix(ARCHIVE_SUFFIX) {
                Some(stem) if path.is_file() => stem.to_string(),
                _ if path.is_dir() => file_name,
                _ => continue,
            };
            if validate_name(&name).is_ok() {
                names.insert(name);
            }
        }
        Ok(names.into_iter().collect())
    }
}

/// The version token of a lambda directory (see [`DirRegistry`]).
fn dir_version(dir: &Path) -> Result<String, RegistryError> {
    let top = fs::symlink_metadata(dir).map_err(io_error(dir))?;
    let mut newest = mtime_ns(&top);
    let (mut entries, mut bytes) = (0u64, 0u64);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let listing = match fs::read_dir(&current) {
            Ok(listing) => listing,
            // Deleted while we walk: the next fetch sees the new state.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(RegistryError::Io {
                    path: current,
                    source,
                });
            }
        };
        for entry in listing {
            let entry = entry.map_err(io_error(&current))?;
            // Does not follow symlinks, so no loops.
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(RegistryError::Io {
                        path: entry.path(),
                        source,
                    });
                }
            };
            newest = newest.max(mtime_ns(&meta));
            entries += 1;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                bytes += meta.len();
            }
        }
    }
    Ok(format!("dir-{newest}-{entries}-{bytes}"))
}

fn mtime_ns(meta: &Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

/// Puts directory `new` at `target`, replacing any directory there, and
/// leaves the old one at `new` for the caller to delete.
fn replace_dir(new: &Path, target: &Path) -> Result<(), RegistryError> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::errno::Errno;
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        match renameat2(
            AT_FDCWD,
            new,
            AT_FDCWD,
            target,
            RenameFlags::RENAME_EXCHANGE,
        ) {
            Ok(()) => return Ok(()),
            // No old version: a plain rename below.
            Err(Errno::ENOENT) => {}
            // The file system cannot exchange: move the old one aside.
            Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {}
            Err(e) => {
                return Err(RegistryError::Io {
                    path: target.to_path_buf(),
                    source: e.into(),
                });
            }
        }
    }
    if target.exists() {
        // Brief window without `target`; only where exchange is missing.
        let mut aside = new.as_os_str().to_owned();
        aside.push(".old");
        let aside = PathBuf::from(aside);
        fs::rename(target, &aside).map_err(io_error(target))?;
        fs::rename(new, target).map_err(io_error(target))?;
        fs::rename(&aside, new).map_err(io_error(new))?;
        Ok(())
    } else {
        fs::rename(new, target).map_err(io_error(target))
    }
}

/// Removes cached versions in `versions` other than `keep`. Staging
/// directories of concurrent unpacks (dot names) are left alone.
fn prune_versions(versions: &Path, keep: &str) -> Result<(), RegistryError> {
    for entry in fs::read_dir(versions).map_err(io_error(versions))? {
        let entry = entry.map_err(io_error(versions))?;
        let file_name = entry.file_name();
        let name = file_name.to_string_lossy();
        if name != keep && !name.starts_with('.') {
            remove_dir_if_present(&entry.path())?;
        }
    }
    Ok(())
}

/// Deletes a directory tree (or a symlink to one, not its target); `false`
/// if there was none. The tree is first renamed to a hidden name so no
/// reader sees it half-deleted.
fn remove_dir_if_present(dir: &Path) -> Result<bool, RegistryError> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(m) if m.is_symlink() && dir.is_dir() => return remove_file_if_present(dir),
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(RegistryError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    let doomed = tempfile::Builder::new()
        .prefix(".removing-")
        .tempdir_in(parent)
        .map_err(io_error(parent))?;
    let target = doomed.path().join("old");
    match fs::rename(dir, &target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(RegistryError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
    }
    doomed.close().map_err(io_error(&target))?;
    Ok(true)
}

/// Deletes a file; `false` if there was none.
fn remove_file_if_present(path: &Path) -> Result<bool, RegistryError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(RegistryError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_registry_finds_lists_and_rejects() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::create_dir(root.path().join("hello")).expect("mkdir");
        fs::create_dir(root.path().join("echo")).expect("mkdir");
        fs::write(root.path().join("notes.txt"), "x").expect("write");
        fs::create_dir(root.path().join("bad.name")).expect("mkdir");
        let reg = DirRegistry::new(root.path());

        let hello = reg.fetch("hello").expect("fetch").expect("hello exists");
        assert_eq!(hello.dir, root.path().join("hello"));
        assert!(hello.version.starts_with("dir-"), "{}", hello.version);
        assert_eq!(reg.fetch("missing").expect("fetch"), None);
        assert_eq!(reg.fetch("notes").expect("fetch"), None);
        assert!(matches!(
            reg.fetch("../etc"),
            Err(RegistryError::InvalidName(_))
        ));
        assert_eq!(reg.list().expect("list"), vec!["echo", "hello"]);
    }

    #[test]
    fn replace_dir_swaps_and_keeps_old_for_deletion() {
        let root = tempfile::tempdir().expect("tempdir");
        let new = root.path().join("new");
        let target = root.path().join("target");
        fs::create_dir(&new).expect("mkdir");
        fs::write(new.join("v"), "2").expect("write");
        replace_dir(&new, &target).expect("first install");
        assert_eq!(fs::read_to_string(target.join("v")).expect("read"), "2");
        assert!(!new.exists());

        fs::create_dir(&new).expect("mkdir");
        fs::write(new.join("v"), "3").expect("write");
        replace_dir(&new, &target).expect("replace");
        assert_eq!(fs::read_to_string(target.join("v")).expect("read"), "3");
        assert_eq!(fs::read_to_string(new.join("v")).expect("old"), "2");
    }

    #[test]
    fn remove_dir_if_present_reports_absence() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("d");
        assert!(!remove_dir_if_present(&dir).expect("absent"));
        fs::create_dir_all(dir.join("sub")).expect("mkdir");
        assert!(remove_dir_if_present(&dir).expect("present"));
        assert_eq!(fs::read_dir(root.path()).expect("ls").count(), 0);
    }
}
