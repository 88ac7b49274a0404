//! Where lambda code comes from (docs/architecture.md §3.9, docs/registry.md):
//! the [`Registry`] trait and its backends, [`DirRegistry`] (a directory
//! holding one sub-directory or `NAME.tar.gz` per lambda),
//! [`HttpRegistry`] (`BASE/NAME.tar.gz` with conditional GETs) and
//! [`S3Registry`] (`s3://BUCKET/PREFIX/NAME.tar.gz` on AWS S3, MinIO or any
//! S3 API, revalidated by ETag), and [`Monitored`], which keeps the health
//! of any of them for `/stats`.
//!
//! Also what every backend and upload path shares: [`unpack_lambda`] (safe
//! against hostile archives), [`pack_lambda`] (for `ol admin install DIR`)
//! and [`check_bundle`] (the checks an upload passes before anything is
//! stored); and the cluster's side of S3: [`upload`] (`ol cluster upload`)
//! and [`code_store`], an S3 API server over a directory (`ol cluster
//! registry`).

mod archive;
mod bridge;
mod bundle;
pub mod code_store;
mod dir;
mod health;
mod http;
mod remote;
mod s3;

use std::path::PathBuf;

pub use archive::{PackProgress, UnpackLimits, pack_lambda, pack_lambda_with, unpack_lambda};
pub use bundle::check_bundle;
pub use dir::DirRegistry;
pub use health::{Health, Monitored};
pub use http::HttpRegistry;
pub use remote::cache_dir_for;
pub use s3::{S3Config, S3ConfigError, S3Registry, Uploaded, upload};

/// Longest lambda name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// A lambda's code as the registry found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LambdaCode {
    /// Directory holding the code (`f.py`, `requirements.txt`, `ol.yaml`...).
    pub dir: PathBuf,
    /// Opaque token that changes whenever the code changes, so a caller
    /// holding an older `LambdaCode` knows to re-load. Compare for equality
    /// only; the format is the backend's (see [`DirRegistry`]).
    pub version: String,
}

/// Errors of the registry layer.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A remote registry failed or answered something unusable.
    #[error("registry: {0}")]
    Remote(String),
    /// The name is not `[A-Za-z0-9_-]{1,64}`.
    #[error("invalid lambda name {0:?}: use 1 to 64 of A-Z a-z 0-9 _ -")]
    InvalidName(String),
    /// Reading or writing the store failed.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The registry has no lambda of that name.
    #[error("no lambda named {0:?} in the registry")]
    NotFound(String),
    /// An uploaded lambda has nothing the runtime could start.
    #[error(
        "lambda {0:?} has no .py file at the top level of its archive: \
         add f.py (def f(event)), app.py or lambda_func.py"
    )]
    NoEntryFile(String),
    /// The input is not a readable gzipped tar archive.
    #[error("not a valid tar.gz archive: {source}")]
    BadArchive {
        /// What the gzip or tar reader reported.
        source: std::io::Error,
    },
    /// The compressed archive is larger than [`UnpackLimits::max_compressed_bytes`].
    #[error("archive is larger than the limit of {limit} bytes compressed")]
    CompressedTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The archive unpacks to more than [`UnpackLimits::max_unpacked_bytes`].
    #[error("archive unpacks to more than the limit of {limit} bytes (stopped at entry {entry:?})")]
    UnpackedTooLarge {
        /// The entry being unpacked when the limit was reached.
        entry: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The archive has more than [`UnpackLimits::max_entries`] entries.
    #[error("archive has more than the limit of {limit} entries (stopped at entry {entry:?})")]
    TooManyEntries {
        /// The first entry over the limit.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// An archive entry has an absolute path.
    #[error(
        "archive entry {entry:?} has an absolute path: lambda archives hold relative paths only"
    )]
    AbsolutePath {
        /// The entry's path as written in the archive.
        entry: String,
    },
    /// An archive entry's path has a `..` component.
    #[error(
        "archive entry {entry:?} has a `..` component: paths may not leave the lambda's directory"
    )]
    PathTraversal {
        /// The entry's path as written in the archive.
        entry: String,
    },
    /// An archive entry's path is empty or not a usable file name.
    #[error("archive entry {entry:?} has an unusable path: {reason}")]
    InvalidEntryPath {
        /// The entry's path as written in the archive (lossy UTF-8).
        entry: String,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// An archive entry is a symlink or hardlink; all links are refused,
    /// wherever they point, so no later write can be redirected through one.
    #[error(
        "archive entry {entry:?} is a {kind} to {target:?}: links are not allowed in lambda archives"
    )]
    LinkEntry {
        /// The entry's path as written in the archive.
        entry: String,
        /// `symlink` or `hardlink`.
        kind: &'static str,
        /// Where the link points, as written in the archive.
        target: String,
    },
    /// An archive entry is neither a regular file nor a directory (device,
    /// fifo, sparse file, unknown type).
    #[error("archive entry {entry:?} is a {kind}: only regular files and directories are allowed")]
    SpecialFile {
        /// The entry's path as written in the archive.
        entry: String,
        /// What kind of entry it is.
        kind: String,
    },
    /// The bundle's config (ol.yaml) is refused by the check the uploader
    /// gave [`check_bundle`].
    #[error("{message}")]
    BadConfig {
        /// The lambda.
        name: String,
        /// What the check said.
        message: String,
    },
    /// The store refused the request's credentials: a wrong or missing
    /// access key or secret key.
    #[error(
        "{what}: refused with {status}: the store does not accept this access key and secret key"
    )]
    Denied {
        /// The request and where it went (`HEAD s3://bucket/key at http://...`).
        what: String,
        /// `403 Forbidden` or `401 Unauthorized`.
        status: &'static str,
    },
    /// An S3 registry's config can never work.
    #[error(transparent)]
    S3Config(#[from] S3ConfigError),
    /// A local lambda directory holds something that cannot go in an archive.
    #[error("cannot pack {path}: {reason}")]
    CannotPack {
        /// The offending file.
        path: PathBuf,
        /// Why it cannot be packed.
        reason: &'static str,
    },
}

/// A store of lambdas, looked up by name.
pub trait Registry: Send + Sync {
    /// Short backend name (`dir`, `http`, `s3`).
    fn kind(&self) -> &'static str;
    /// Where the code comes from, for logs and `/stats` (a path or a URL;
    /// never a secret).
    fn location(&self) -> String;
    /// The code of lambda `name`, or `None` when the registry has no such
    /// lambda. Blocks (file or network I/O).
    fn fetch(&self, name: &str) -> Result<Option<LambdaCode>, RegistryError>;
    /// Names of every lambda, sorted.
    fn list(&self) -> Result<Vec<String>, RegistryError>;
}

/// Wraps an OS error with the path it concerns.
fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks that `name` can name a lambda: `[A-Za-z0-9_-]{1,64}`. This also
/// keeps names from ever forming a path (`..`, `/`).
pub fn validate_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(RegistryError::InvalidName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for good in ["hello", "a", "A-b_9", &"x".repeat(64)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "..", "a/b", "a.b", "é", "a b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
