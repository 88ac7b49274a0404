//! uv's cached interpreter queries, carried into each install's own cache.
//!
//! Before uv resolves or installs anything it asks the interpreter about
//! itself (a Python run of ~50–70 ms here) and keeps the answer in its
//! cache (`interpreter-vN/KEY/FILE.msgpack`, a few KB, keyed by the
//! interpreter's path and checked against its modification time). The
//! resolve leaves that answer in the worker's package cache; an install
//! with a cache of its own (`UvCache::Private`) would ask again. So each
//! such install's cache starts with a copy of those files: `six` from
//! PyPI took 0.16–0.17 s with a fresh cache and 0.09–0.10 s with the
//! query's answer in it (uv 0.13, three runs each).
//!
//! The worker's package cache is written only by uv and pip (trusted code,
//! handling untrusted packages) in installer sandboxes, but as the sandbox
//! uid, so the copy follows no link: every dir is opened relative to its
//! parent with `O_NOFOLLOW`, only regular files named `*.msgpack` are
//! read, at most [`MAX_FILES`] of at most [`MAX_BYTES`]. What uv then does
//! with the copy is what it would do with the package cache itself.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};

/// The start of the name of uv's interpreter cache dirs (one per cache
/// format version: `interpreter-v4`, `interpreter-v5`).
const DIR_PREFIX: &str = "interpreter-v";
/// The end of the name of each cached answer.
const FILE_SUFFIX: &str = ".msgpack";
/// Most files copied (one per interpreter and uv version: a handful).
const MAX_FILES: usize = 16;
/// Largest file copied (uv's are ~4 KB).
const MAX_BYTES: u64 = 1 << 20;

/// Files of the interpreter cache copied into an install's cache: where
/// each is, and its inode, to tell afterwards whether uv wrote its own.
#[derive(Debug, Default)]
pub(super) struct Seeded(Vec<(PathBuf, u64)>);

impl Seeded {
    /// Whether anything was copied.
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether uv queried the interpreter again in `cache` (where these
    /// files were copied): its answer is a file of the interpreter cache
    /// that is not one of ours (uv writes a new file and renames it over
    /// the old one).
    pub(super) fn queried_again(&self, cache: &Path) -> bool {
        interpreter_files(cache)
            .iter()
            .any(|(path, ino)| !self.0.contains(&(path.clone(), *ino)))
    }
}

/// Copies the interpreter cache of uv cache `from` into uv cache `to` (the
/// dirs made as needed, everything made writable for the installer
/// sandbox by `writable`). Nothing is copied when `from` has none.
pub(super) fn seed(
    from: &Path,
    to: &Path,
    writable: impl Fn(&Path) -> std::io::Result<()>,
) -> std::io::Result<Seeded> {
    let mut seeded = Seeded::default();
    for (rel, bytes) in read_entries(from)? {
        let path = to.join(&rel);
        let mut dir = to.to_path_buf();
        for part in rel.parent().into_iter().flat_map(Path::components) {
            dir.push(part);
            if !dir.is_dir() {
                fs::create_dir(&dir)?;
                writable(&dir)?;
            }
        }
        fs::write(&path, &bytes)?;
        writable(&path)?;
        seeded.0.push((path.clone(), fs::metadata(&path)?.ino()));
    }
    Ok(seeded)
}

/// The interpreter cache of uv cache `cache`: each file's path relative to
/// it and its bytes (see the module doc for what is taken). A cache that
/// does not exist has none.
fn read_entries(cache: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut entries = Vec::new();
    for (key, key_fd) in key_dirs(cache)? {
        for name in names(&key_fd)? {
            if entries.len() == MAX_FILES {
                return Ok(entries);
            }
            if !name.ends_with(FILE_SUFFIX.as_bytes()) {
                continue;
            }
            if let Some(bytes) = read_regular(&key_fd, &name)? {
                entries.push((key.join(OsStr::from_bytes(&name)), bytes));
            }
        }
    }
    Ok(entries)
}

/// The key dirs of the interpreter cache of uv cache `cache`
/// (`interpreter-vN/KEY`, relative to it), each opened, reached through
/// no link. A cache that does not exist has none.
fn key_dirs(cache: &Path) -> std::io::Result<Vec<(PathBuf, OwnedFd)>> {
    let root = match open_dir(rustix::fs::CWD, cache.as_os_str().as_bytes()) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut dirs = Vec::new();
    for (version, version_fd) in subdirs(&root, |name| name.starts_with(DIR_PREFIX.as_bytes()))? {
        for (key, key_fd) in subdirs(&version_fd, |_| true)? {
            let rel = Path::new(OsStr::from_bytes(&version)).join(OsStr::from_bytes(&key));
            dirs.push((rel, key_fd));
        }
    }
    Ok(dirs)
}

/// Opens dir `name` of `parent`, refusing a link.
fn open_dir(parent: impl AsFd, name: &[u8]) -> std::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(parent, name, flags, Mode::empty())?)
}

/// The names in dir `dir` but `.` and `..`.
fn names(dir: &OwnedFd) -> std::io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// The dirs of `dir` whose name `keep` takes, opened (links and other
/// files are left out).
fn subdirs(
    dir: &OwnedFd,
    keep: impl Fn(&[u8]) -> bool,
) -> std::io::Result<Vec<(Vec<u8>, OwnedFd)>> {
    Ok(names(dir)?
        .into_iter()
        .filter(|name| keep(name))
        .filter_map(|name| open_dir(dir, &name).ok().map(|fd| (name, fd)))
        .collect())
}

/// The bytes of `name` in `dir` if it is a regular file (not a link, a
/// FIFO, a device) of at most [`MAX_BYTES`].
fn read_regular(dir: &OwnedFd, name: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let Ok(fd) = rustix::fs::openat(dir, name, flags, Mode::empty()) else {
        return Ok(None);
    };
    let stat = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile
        || stat.st_size as u64 > MAX_BYTES
    {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    fs::File::from(fd)
        .take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= MAX_BYTES).then_some(bytes))
}

/// The files of the interpreter cache of uv cache `cache` (any kind, links
/// not followed), with their inodes.
fn interpreter_files(cache: &Path) -> Vec<(PathBuf, u64)> {
    let mut files = Vec::new();
    for (key, key_fd) in key_dirs(cache).unwrap_or_default() {
        for name in names(&key_fd).unwrap_or_default() {
            let stat = rustix::fs::statat(&key_fd, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW);
            if let Ok(stat) = stat {
                files.push((cache.join(&key).join(OsStr::from_bytes(&name)), stat.st_ino));
            }
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A uv cache with two interpreter answers and what must not be taken:
    /// a link to a file outside, a linked key dir, a linked version dir,
    /// another file name, a FIFO, a file too large, and other cache dirs.
    fn cache(root: &Path) -> PathBuf {
        let cache = root.join("uv-cache");
        let outside = root.join("outside");
        fs::create_dir_all(outside.join("k")).expect("test fs");
        fs::write(outside.join("secret.msgpack"), "secret").expect("test fs");
        fs::write(outside.join("k/secret.msgpack"), "secret").expect("test fs");
        let v5 = cache.join("interpreter-v5");
        fs::create_dir_all(v5.join("aaaa")).expect("test fs");
        fs::create_dir_all(cache.join("interpreter-v4/bbbb")).expect("test fs");
        fs::create_dir_all(cache.join("wheels-v8/cccc")).expect("test fs");
        fs::write(v5.join("aaaa/one.msgpack"), "one").expect("test fs");
        fs::write(cache.join("interpreter-v4/bbbb/two.msgpack"), "two").expect("test fs");
        fs::write(cache.join("wheels-v8/cccc/x.msgpack"), "wheel").expect("test fs");
        symlink(outside.join("secret.msgpack"), v5.join("aaaa/link.msgpack")).expect("test fs");
        symlink(outside.join("k"), v5.join("linked-key")).expect("test fs");
        symlink(&outside, cache.join("interpreter-v6")).expect("test fs");
        fs::write(v5.join("aaaa/notes.txt"), "text").expect("test fs");
        nix::unistd::mkfifo(&v5.join("aaaa/fifo.msgpack"), nix::sys::stat::Mode::S_IRWXU)
            .expect("test fs");
        let big = vec![b'x'; MAX_BYTES as usize + 1];
        fs::write(v5.join("aaaa/big.msgpack"), big).expect("test fs");
        cache
    }

    #[test]
    fn only_the_regular_answer_files_are_taken_and_no_link_is_followed() {
        let tmp = tempfile::tempdir().expect("test fs");
        let mut entries = read_entries(&cache(tmp.path())).expect("test fs");
        entries.sort();
        let got: Vec<(String, String)> = entries
            .into_iter()
            .map(|(p, b)| {
                (
                    p.display().to_string(),
                    String::from_utf8(b).expect("test fs"),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("interpreter-v4/bbbb/two.msgpack".into(), "two".into()),
                ("interpreter-v5/aaaa/one.msgpack".into(), "one".into()),
            ]
        );
        assert!(
            read_entries(&tmp.path().join("none"))
                .expect("test fs")
                .is_empty()
        );
        // A cache that is itself a link is not read either.
        symlink(tmp.path().join("uv-cache"), tmp.path().join("link")).expect("test fs");
        assert!(read_entries(&tmp.path().join("link")).is_err());
    }

    #[test]
    fn a_seeded_cache_tells_whether_uv_wrote_an_answer_of_its_own() {
        let tmp = tempfile::tempdir().expect("test fs");
        let from = cache(tmp.path());
        let to = tmp.path().join("install-cache");
        fs::create_dir(&to).expect("test fs");
        let made = std::cell::RefCell::new(Vec::new());
        let seeded = seed(&from, &to, |p| {
            made.borrow_mut()
                .push(p.strip_prefix(&to).expect("test fs").to_path_buf());
            Ok(())
        })
        .expect("test fs");
        assert!(!seeded.is_empty());
        assert_eq!(
            fs::read_to_string(to.join("interpreter-v5/aaaa/one.msgpack")).expect("test fs"),
            "one"
        );
        let mut made = made.into_inner();
        made.sort();
        let made: Vec<String> = made.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            made,
            [
                "interpreter-v4",
                "interpreter-v4/bbbb",
                "interpreter-v4/bbbb/two.msgpack",
                "interpreter-v5",
                "interpreter-v5/aaaa",
                "interpreter-v5/aaaa/one.msgpack",
            ]
        );
        assert!(!seeded.queried_again(&to));
        // What uv does when it queries: a new file renamed over the old.
        let answer = to.join("interpreter-v5/aaaa/one.msgpack");
        fs::write(to.join("interpreter-v5/aaaa/.tmp"), "new").expect("test fs");
        fs::rename(to.join("interpreter-v5/aaaa/.tmp"), &answer).expect("test fs");
        assert!(seeded.queried_again(&to));
        // Or an answer under a key of its own.
        let fresh = tempfile::tempdir().expect("test fs");
        let seeded = seed(&from, fresh.path(), |_| Ok(())).expect("test fs");
        fs::create_dir(fresh.path().join("interpreter-v5/dddd")).expect("test fs");
        fs::write(fresh.path().join("interpreter-v5/dddd/x.msgpack"), "x").expect("test fs");
        assert!(seeded.queried_again(fresh.path()));
    }
}
