//! Lambda archives (`NAME.tar.gz`): packing a local directory, and
//! unpacking untrusted uploads so that nothing lands outside the
//! destination and no archive can exhaust memory or disk.
//!
//! The unpacker reads the tar stream *raw* (GNU long names and PAX headers
//! are parsed here, each capped at 1 MiB) because the tar crate's own
//! handling buffers those records whole, with no cap. Every size is counted
//! on the bytes actually streamed, never taken from a header or the gzip
//! trailer.

use std::cell::Cell;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use tempfile::TempDir;

use crate::{RegistryError, io_error};

/// Largest GNU long-name/long-link or PAX record accepted, in bytes.
const MAX_METADATA_RECORD: u64 = 1 << 20;

/// Decompressed bytes allowed per entry beyond file contents: its header,
/// padding, and a long-name or PAX header with its padding.
const STREAM_OVERHEAD_PER_ENTRY: u64 = 4 * 1024;

/// Size limits applied while unpacking an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Most bytes read from the compressed input (default 64 MiB).
    pub max_compressed_bytes: u64,
    /// Most bytes of file contents (plus name/PAX records) written out
    /// (default 256 MiB).
    pub max_unpacked_bytes: u64,
    /// Most files and directories in the archive (default 10,000).
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_compressed_bytes: 64 << 20,
            max_unpacked_bytes: 256 << 20,
            max_entries: 10_000,
        }
    }
}

/// Unpacks the gzipped tar `tar_gz` holding one lambda into `dest`, which
/// must not exist yet (its parent is created if missing).
///
/// The lambda's files may sit at the archive root or inside a single
/// top-level directory (as `tar czf NAME.tar.gz NAME/` makes; any name is
/// accepted, since a lambda with nothing but a directory at its top could
/// not run anyway); either way they end up directly in `dest`. Only regular files and directories
/// are accepted: links of any kind, devices, fifos, absolute paths and
/// `..` components are refused with an error naming the entry, as is any
/// archive over `limits`. Files get mode 0644 (0755 if any execute bit is
/// set in the archive), directories 0755; owners and mtimes are not
/// restored. The archive is unpacked into a temporary directory next to
/// `dest` and renamed into place only on success, so a failure leaves
/// nothing behind.
pub fn unpack_lambda(
    tar_gz: impl Read,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<(), RegistryError> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent).map_err(io_error(parent))?;
    let label = dest.file_name().unwrap_or(OsStr::new("lambda"));
    let staged = StagedLambda::unpack(tar_gz, parent, &label.to_string_lossy(), limits)?;
    fs::rename(staged.root(), dest).map_err(io_error(dest))
}

/// [`unpack_lambda`] into `dest` unless `dest` is there already: a cache's
/// entry for one version of a lambda. Another fetch of the same version
/// may unpack it at the same time; whichever renames first wins and the
/// other's work is dropped, so only a failure with no `dest` afterwards is
/// an error.
pub(crate) fn unpack_once(
    tar_gz: impl Read,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<(), RegistryError> {
    if dest.is_dir() {
        return Ok(());
    }
    match unpack_lambda(tar_gz, dest, limits) {
        Err(_) if dest.is_dir() => Ok(()),
        other => other,
    }
}

/// A lambda unpacked into a hidden temporary directory, removed on drop
/// unless its root has been renamed away.
#[derive(Debug)]
pub(crate) struct StagedLambda {
    /// Keeps the temporary directory alive; removes it on drop.
    _temp: TempDir,
    root: PathBuf,
}

impl StagedLambda {
    /// Unpacks `tar_gz` into a new hidden directory inside `parent`, named
    /// after `label` (see [`unpack_lambda`] for the rules).
    pub(crate) fn unpack(
        tar_gz: impl Read,
        parent: &Path,
        label: &str,
        limits: &UnpackLimits,
    ) -> Result<Self, RegistryError> {
        // The leading dot keeps the staging directory out of `list()` and
        // of cache pruning.
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{label}.unpack-"))
            .tempdir_in(parent)
            .map_err(io_error(parent))?;
        // Lambdas run as another uid: their code must be world-readable,
        // whatever the umask (and TempDir starts at 0700).
        set_mode(temp.path(), 0o755)?;
        Unpacker::new(temp.path(), limits).run(tar_gz)?;
        let root = lambda_root(temp.path())?;
        Ok(Self { _temp: temp, root })
    }

    /// The directory holding the lambda's files.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }
}

/// `dir` itself, or the directory `dir/X` when that is the only thing in
/// `dir`.
fn lambda_root(dir: &Path) -> Result<PathBuf, RegistryError> {
    let mut entries = fs::read_dir(dir).map_err(io_error(dir))?;
    let first = entries.next().transpose().map_err(io_error(dir))?;
    let Some(first) = first else {
        return Ok(dir.to_path_buf());
    };
    if entries.next().is_some() {
        return Ok(dir.to_path_buf());
    }
    let is_dir = first.file_type().map_err(io_error(&first.path()))?.is_dir();
    Ok(if is_dir {
        first.path()
    } else {
        dir.to_path_buf()
    })
}

/// Directories never packed: bytecode caches and version control.
const SKIPPED_DIRS: [&str; 5] = ["__pycache__", ".git", ".hg", ".svn", ".bzr"];

/// Makes a gzipped tar of the lambda directory `dir`: its regular files and
/// directories under relative paths at the archive root, sorted, skipping
/// `__pycache__` and version-control directories (`.git`, ...). Symlinks
/// and special files are an error ([`RegistryError::CannotPack`]), since
/// the receiving side refuses them.
pub fn pack_lambda(dir: &Path) -> Result<Vec<u8>, RegistryError> {
    pack_lambda_with(dir, &mut |_| {})
}

/// [`pack_lambda`], calling `progress` with the files and bytes packed so
/// far after each file (`ol admin install` shows it for large dirs).
pub fn pack_lambda_with(
    dir: &Path,
    progress: &mut dyn FnMut(PackProgress),
) -> Result<Vec<u8>, RegistryError> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    let mut done = PackProgress::default();
    append_tree(&mut builder, dir, Path::new(""), &mut done, progress)?;
    let gz = builder.into_inner().map_err(io_error(dir))?;
    gz.finish().map_err(io_error(dir))
}

/// How far [`pack_lambda_with`] got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackProgress {
    /// Files packed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

fn append_tree(
    builder: &mut tar::Builder<GzEncoder<Vec<u8>>>,
    base: &Path,
    rel: &Path,
    done: &mut PackProgress,
    progress: &mut dyn FnMut(PackProgress),
) -> Result<(), RegistryError> {
    let dir = base.join(rel);
    let mut entries = fs::read_dir(&dir)
        .and_then(|it| it.collect::<io::Result<Vec<_>>>())
        .map_err(io_error(&dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let rel_path = rel.join(entry.file_name());
        let meta = entry.metadata().map_err(io_error(&path))?;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
        header.set_uid(0);
        header.set_gid(0);
        if meta.is_dir() {
            if SKIPPED_DIRS.iter().any(|d| entry.file_name() == *d) {
                continue;
            }
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder
                .append_data(&mut header, &rel_path, io::empty())
                .map_err(io_error(&path))?;
            append_tree(builder, base, &rel_path, done, progress)?;
        } else if meta.is_file() {
            // Read whole so the header's size is exactly what follows, even
            // if the file changes meanwhile.
            let data = fs::read(&path).map_err(io_error(&path))?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(file_mode(meta.permissions().mode()));
            header.set_size(data.len() as u64);
            builder
                .append_data(&mut header, &rel_path, data.as_slice())
                .map_err(io_error(&path))?;
            done.files += 1;
            done.bytes += data.len() as u64;
            progress(*done);
        } else {
            let reason = if meta.is_symlink() {
                "symlinks are not allowed in lambdas; copy the file in instead"
            } else {
                "only regular files and directories can be packed"
            };
            return Err(RegistryError::CannotPack { path, reason });
        }
    }
    Ok(())
}

/// 0755 if any execute bit is set in `mode`, else 0644.
fn file_mode(mode: u32) -> u32 {
    if mode & 0o111 != 0 { 0o755 } else { 0o644 }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), RegistryError> {
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(io_error(path))
}

/// A reader that fails once more than `remaining` bytes would pass through
/// it, raising `tripped` so the caller can tell a limit from a corrupt
/// stream whatever the layers above make of the error.
struct CappedReader<'a, R> {
    inner: R,
    remaining: u64,
    tripped: &'a Cell<bool>,
}

impl<R: Read> Read for CappedReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            // Exactly at the limit is fine if the stream ends here.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.tripped.set(true);
            return Err(io::Error::other("size limit reached"));
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Path and link name of the next entry, set by GNU `L`/`K` records or a
/// PAX `x` header that precede it.
#[derive(Default)]
struct PendingMetadata {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
}

/// One unpacking run into an existing, empty directory.
struct Unpacker<'a> {
    dir: &'a Path,
    limits: &'a UnpackLimits,
    entries: u64,
    bytes: u64,
    /// The entry being read, for error messages.
    current: String,
}

impl<'a> Unpacker<'a> {
    fn new(dir: &'a Path, limits: &'a UnpackLimits) -> Self {
        Self {
            dir,
            limits,
            entries: 0,
            bytes: 0,
            current: String::new(),
        }
    }

    fn run(mut self, tar_gz: impl Read) -> Result<(), RegistryError> {
        let trips = Trips::default();
        let compressed = CappedReader {
            inner: tar_gz,
            remaining: self.limits.max_compressed_bytes,
            tripped: &trips.compressed,
        };
        // Bounds what the tar reader itself skips (padding, data of
        // directory entries, runs of headers) on top of what we count.
        let stream_cap = self.limits.max_unpacked_bytes.saturating_add(
            self.limits
                .max_entries
                .saturating_add(1)
                .saturating_mul(STREAM_OVERHEAD_PER_ENTRY),
        );
        let decoded = CappedReader {
            inner: MultiGzDecoder::new(BufReader::new(compressed)),
            remaining: stream_cap,
            tripped: &trips.stream,
        };
        let mut archive = tar::Archive::new(decoded);
        self.read_entries(&mut archive).map_err(|e| match e {
            UnpackFailure::Registry(e) => e,
            UnpackFailure::Read(source) => trips.verdict(source, self.limits, &self.current),
        })
    }

    fn read_entries<R: Read>(
        &mut self,
        archive: &mut tar::Archive<R>,
    ) -> Result<(), UnpackFailure> {
        let mut pending = PendingMetadata::default();
        for entry in archive.entries().map_err(UnpackFailure::Read)?.raw(true) {
            let mut entry = entry.map_err(UnpackFailure::Read)?;
            let kind = entry.header().entry_type();
            if kind.is_gnu_longname() {
                self.current = "(GNU long name record)".into();
                pending.path = Some(trim_nuls(self.read_record(&mut entry)?));
            } else if kind.is_gnu_longlink() {
                self.current = "(GNU long link record)".into();
                pending.link = Some(trim_nuls(self.read_record(&mut entry)?));
            } else if kind.is_pax_local_extensions() {
                self.current = "(PAX header)".into();
                let record = self.read_record(&mut entry)?;
                apply_pax(&record, &mut pending)?;
            } else if kind.is_pax_global_extensions() {
                self.current = "(PAX global header)".into();
                self.read_record(&mut entry)?;
            } else {
                let meta = std::mem::take(&mut pending);
                self.unpack_entry(&mut entry, meta)?;
            }
        }
        Ok(())
    }

    /// Reads a metadata record whole, refusing oversized ones.
    fn read_record(&mut self, entry: &mut impl Read) -> Result<Vec<u8>, UnpackFailure> {
        let mut record = Vec::new();
        entry
            .take(MAX_METADATA_RECORD + 1)
            .read_to_end(&mut record)
            .map_err(UnpackFailure::Read)?;
        if record.len() as u64 > MAX_METADATA_RECORD {
            return Err(UnpackFailure::Read(io::Error::other(format!(
                "{} larger than {MAX_METADATA_RECORD} bytes",
                self.current
            ))));
        }
        self.count_bytes(record.len())?;
        Ok(record)
    }

    fn unpack_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        meta: PendingMetadata,
    ) -> Result<(), UnpackFailure> {
        let raw_path = meta.path.unwrap_or_else(|| entry.path_bytes().into_owned());
        self.current = String::from_utf8_lossy(&raw_path).into_owned();
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(RegistryError::TooManyEntries {
                entry: self.current.clone(),
                limit: self.limits.max_entries,
            }
            .into());
        }
        let rel = self.relative_path(&raw_path)?;
        let header = entry.header();
        let kind = header.entry_type();
        if let Some(size) = meta.size
            && size != entry.size()
        {
            return Err(UnpackFailure::Read(io::Error::other(format!(
                "entry {:?}: PAX size {size} differs from header size {}",
                self.current,
                entry.size()
            ))));
        }
        if kind.is_hard_link() || kind.is_symlink() {
            let target = meta
                .link
                .or_else(|| entry.link_name_bytes().map(|l| l.into_owned()))
                .unwrap_or_default();
            return Err(RegistryError::LinkEntry {
                entry: self.current.clone(),
                kind: if kind.is_symlink() {
                    "symlink"
                } else {
                    "hardlink"
                },
                target: String::from_utf8_lossy(&target).into_owned(),
            }
            .into());
        }
        // Old (v7) archives mark directories only by a trailing slash.
        let is_dir = kind.is_dir() || (kind.is_file() && raw_path.ends_with(b"/"));
        if is_dir {
            return self.create_dirs(&rel).map_err(UnpackFailure::Registry);
        }
        if !(kind.is_file() || kind.is_contiguous()) {
            let special = if kind.is_character_special() {
                "character device".to_string()
            } else if kind.is_block_special() {
                "block device".to_string()
            } else if kind.is_fifo() {
                "fifo".to_string()
            } else if kind.is_gnu_sparse() {
                "sparse file".to_string()
            } else {
                format!("entry of unknown type {:?}", char::from(kind.as_byte()))
            };
            return Err(RegistryError::SpecialFile {
                entry: self.current.clone(),
                kind: special,
            }
            .into());
        }
        if rel.as_os_str().is_empty() {
            return Err(RegistryError::InvalidEntryPath {
                entry: self.current.clone(),
                reason: "a file needs a name",
            }
            .into());
        }
        let mode = file_mode(header.mode().unwrap_or(0o644));
        self.write_file(entry, &rel, mode)
    }

    /// The entry's path relative to the destination, with `.` components
    /// dropped; absolute paths and `..` are refused.
    fn relative_path(&self, raw: &[u8]) -> Result<PathBuf, RegistryError> {
        if raw.contains(&0) {
            return Err(RegistryError::InvalidEntryPath {
                entry: self.current.clone(),
                reason: "it contains a NUL byte",
            });
        }
        let mut rel = PathBuf::new();
        for component in Path::new(OsStr::from_bytes(raw)).components() {
            match component {
                Component::Normal(part) => rel.push(part),
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => {
                    return Err(RegistryError::AbsolutePath {
                        entry: self.current.clone(),
                    });
                }
                Component::ParentDir => {
                    return Err(RegistryError::PathTraversal {
                        entry: self.current.clone(),
                    });
                }
            }
        }
        Ok(rel)
    }

    /// Creates `rel` and its missing parents inside the destination, each
    /// with mode 0755. Nothing in the destination is a link (none are ever
    /// created), so every component stays inside it.
    fn create_dirs(&self, rel: &Path) -> Result<(), RegistryError> {
        let mut path = self.dir.to_path_buf();
        for part in rel.components() {
            path.push(part);
            match fs::create_dir(&path) {
                Ok(()) => set_mode(&path, 0o755)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(RegistryError::Io { path, source }),
            }
        }
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        mode: u32,
    ) -> Result<(), UnpackFailure> {
        if let Some(parent) = rel.parent() {
            self.create_dirs(parent)?;
        }
        let path = self.dir.join(rel);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            // Belt and braces: no link can exist here, but never follow one.
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_error(&path))?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(UnpackFailure::Read(e)),
            };
            // Counted before writing: nothing past the limit reaches disk.
            self.count_bytes(n)?;
            file.write_all(&buf[..n]).map_err(io_error(&path))?;
        }
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(io_error(&path))?;
        Ok(())
    }

    fn count_bytes(&mut self, n: usize) -> Result<(), RegistryError> {
        self.bytes = self.bytes.saturating_add(n as u64);
        if self.bytes > self.limits.max_unpacked_bytes {
            return Err(RegistryError::UnpackedTooLarge {
                entry: self.current.clone(),
                limit: self.limits.max_unpacked_bytes,
            });
        }
        Ok(())
    }
}

/// Which size limit, if any, made a reader fail.
#[derive(Default)]
struct Trips {
    compressed: Cell<bool>,
    stream: Cell<bool>,
}

impl Trips {
    /// Names a failed read: a tripped limit wins over what the gzip or tar
    /// layer made of it.
    fn verdict(&self, source: io::Error, limits: &UnpackLimits, entry: &str) -> RegistryError {
        if self.compressed.get() {
            RegistryError::CompressedTooLarge {
                limit: limits.max_compressed_bytes,
            }
        } else if self.stream.get() {
            RegistryError::UnpackedTooLarge {
                entry: entry.to_string(),
                limit: limits.max_unpacked_bytes,
            }
        } else {
            RegistryError::BadArchive { source }
        }
    }
}

/// Why unpacking stopped: a verdict already made, or a read error still to
/// be told apart from a tripped limit.
enum UnpackFailure {
    Registry(RegistryError),
    Read(io::Error),
}

impl From<RegistryError> for UnpackFailure {
    fn from(e: RegistryError) -> Self {
        Self::Registry(e)
    }
}

/// Records the `path`, `linkpath` and `size` keys of a PAX header.
fn apply_pax(record: &[u8], pending: &mut PendingMetadata) -> Result<(), UnpackFailure> {
    for ext in tar::PaxExtensions::new(record) {
        let ext = ext.map_err(UnpackFailure::Read)?;
        match ext.key_bytes() {
            b"path" => pending.path = Some(ext.value_bytes().to_vec()),
            b"linkpath" => pending.link = Some(ext.value_bytes().to_vec()),
            b"size" => {
                let size = ext
                    .value()
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| {
                        UnpackFailure::Read(io::Error::other("PAX size is not a number"))
                    })?;
                pending.size = Some(size);
            }
            _ => {}
        }
    }
    Ok(())
}

fn trim_nuls(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_reader_allows_exactly_the_limit() {
        let tripped = Cell::new(false);
        let mut r = CappedReader {
            inner: &[1u8, 2, 3][..],
            remaining: 3,
            tripped: &tripped,
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).expect("exactly at limit");
        assert_eq!(out, [1, 2, 3]);
        assert!(!tripped.get());

        let mut r = CappedReader {
            inner: &[1u8, 2, 3, 4][..],
            remaining: 3,
            tripped: &tripped,
        };
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        assert!(tripped.get());
    }

    #[test]
    fn packing_skips_version_control_and_counts_what_it_packs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lambda = dir.path().join("l");
        for sub in [".git/objects", ".hg", "__pycache__", "pkg"] {
            fs::create_dir_all(lambda.join(sub)).expect("mkdir");
        }
        fs::write(lambda.join(".git/objects/x"), "blob").expect("write");
        fs::write(lambda.join("__pycache__/f.pyc"), "pyc").expect("write");
        fs::write(lambda.join("f.py"), "def f(e):\n    return e\n").expect("write");
        fs::write(lambda.join("pkg/m.py"), "x = 1\n").expect("write");
        let mut seen = Vec::new();
        let archive = pack_lambda_with(&lambda, &mut |p| seen.push(p)).expect("pack");
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].files, 2);
        let out = dir.path().join("out");
        unpack_lambda(archive.as_slice(), &out, &UnpackLimits::default()).expect("unpack");
        assert!(out.join("f.py").is_file() && out.join("pkg/m.py").is_file());
        assert!(!out.join(".git").exists() && !out.join(".hg").exists());
        assert!(!out.join("__pycache__").exists());
    }

    #[test]
    fn file_modes_keep_only_the_execute_bit() {
        assert_eq!(file_mode(0o4777), 0o755);
        assert_eq!(file_mode(0o600), 0o644);
        assert_eq!(file_mode(0o700), 0o755);
    }

    #[test]
    fn pax_records_set_path_link_and_size() {
        let mut record = Vec::new();
        for (k, v) in [
            ("path", "a/long/name.py"),
            ("linkpath", "t"),
            ("size", "12"),
        ] {
            let line = format!(" {k}={v}\n");
            let len = line.len() + 2;
            record.extend_from_slice(format!("{len}{line}").as_bytes());
        }
        let mut pending = PendingMetadata::default();
        assert!(apply_pax(&record, &mut pending).is_ok());
        assert_eq!(pending.path.as_deref(), Some(&b"a/long/name.py"[..]));
        assert_eq!(pending.link.as_deref(), Some(&b"t"[..]));
        assert_eq!(pending.size, Some(12));
    }
}
