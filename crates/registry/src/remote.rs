//! What the remote backends ([`crate::HttpRegistry`], [`crate::S3Registry`])
//! share: a cache that holds each version of a lambda unpacked once, under
//! a directory named after a hash of the version the server gave (its
//! ETag, typically), so no server string ever forms a path.

use std::path::{Path, PathBuf};

use crate::archive::unpack_once;
use crate::{LambdaCode, RegistryError, UnpackLimits};

/// Unpacked versions of lambdas: `ROOT/NAME/<hash of version>/`.
#[derive(Debug)]
pub(crate) struct VersionCache {
    root: PathBuf,
    limits: UnpackLimits,
}

impl VersionCache {
    /// A cache in `root` (created when first needed).
    pub(crate) fn new(root: PathBuf) -> Self {
        Self {
            root,
            limits: UnpackLimits::default(),
        }
    }

    /// Most bytes a compressed bundle may have.
    pub(crate) fn max_compressed_bytes(&self) -> u64 {
        self.limits.max_compressed_bytes
    }

    /// [`RegistryError::CompressedTooLarge`] when `len` bytes are more than
    /// a bundle may have.
    pub(crate) fn check_size(&self, len: u64) -> Result<(), RegistryError> {
        if len > self.limits.max_compressed_bytes {
            return Err(RegistryError::CompressedTooLarge {
                limit: self.limits.max_compressed_bytes,
            });
        }
        Ok(())
    }

    fn dir(&self, name: &str, version: &str) -> PathBuf {
        self.root
            .join(name)
            .join(format!("{:016x}", fnv1a(version.as_bytes())))
    }

    /// Lambda `name` at `version`, if that version is unpacked already
    /// (by this process or an earlier one).
    pub(crate) fn get(&self, name: &str, version: &str) -> Option<LambdaCode> {
        let dir = self.dir(name, version);
        dir.is_dir().then(|| LambdaCode {
            dir,
            version: version.to_string(),
        })
    }

    /// Lambda `name` at `version` from the bundle `body`, unpacked with
    /// every hostile-input check unless that version is there already.
    pub(crate) fn unpack(
        &self,
        name: &str,
        version: &str,
        body: &[u8],
    ) -> Result<LambdaCode, RegistryError> {
        self.check_size(body.len() as u64)?;
        let dir = self.dir(name, version);
        unpack_once(body, &dir, &self.limits)?;
        Ok(LambdaCode {
            dir,
            version: version.to_string(),
        })
    }
}

/// FNV-1a, to turn a server's string into a file name.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `url` with any `user:password@` taken out, for logs and `/stats`.
pub(crate) fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// A version token for a bundle that came with no validators: a hash of
/// its bytes and their count.
pub(crate) fn content_hash(body: &[u8]) -> String {
    format!("{:016x}-{}", fnv1a(body), body.len())
}

/// Where a remote registry at `location` (its URL, with anything else
/// that tells one store from another, such as an S3 endpoint) keeps its
/// unpacked code under `root`: `root/<scheme>-<hash>`.
pub fn cache_dir_for(root: &Path, location: &str) -> PathBuf {
    let scheme = location
        .split_once("://")
        .map(|(s, _)| s)
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or("remote");
    root.join(format!("{scheme}-{:016x}", fnv1a(location.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_dirs_are_safe_names() {
        let cache = VersionCache::new(PathBuf::from("/c"));
        let dir = cache.dir("x", "\"etag/../y\"");
        assert_eq!(dir.parent(), Some(Path::new("/c/x")));
        assert_ne!(dir, cache.dir("x", "other"));
    }

    #[test]
    fn locations_never_show_credentials() {
        assert_eq!(
            without_userinfo("http://u:secret@h:1/registry"),
            "http://h:1/registry"
        );
        assert_eq!(without_userinfo("http://h:1/a@b"), "http://h:1/a@b");
        assert_eq!(without_userinfo("/srv/registry"), "/srv/registry");
    }

    #[test]
    fn cache_dirs_are_per_location_and_named_by_scheme() {
        let root = Path::new("/c");
        let dir = cache_dir_for(root, "http://h:1");
        assert!(
            dir.to_string_lossy().starts_with("/c/http-"),
            "{}",
            dir.display()
        );
        assert_ne!(dir, cache_dir_for(root, "http://h:2"));
        let s3 = cache_dir_for(root, "s3://b/p at http://127.0.0.1:9000");
        assert!(
            s3.to_string_lossy().starts_with("/c/s3-"),
            "{}",
            s3.display()
        );
        let odd = cache_dir_for(root, "../x://y");
        assert!(
            odd.to_string_lossy().starts_with("/c/remote-"),
            "{}",
            odd.display()
        );
    }
}
