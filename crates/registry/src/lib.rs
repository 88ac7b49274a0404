//! Where lambda code comes from (DESIGN.md §3.9): the [`Registry`] trait and
//! its backends. Today: [`DirRegistry`], a directory holding one
//! sub-directory per lambda. The HTTP and S3 backends come later behind the
//! same trait.

use std::fs;
use std::path::{Path, PathBuf};

/// Longest lambda name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// A lambda's code as the registry found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LambdaCode {
    /// Directory holding the code (`f.py`, `requirements.txt`, `ol.yaml`...).
    pub dir: PathBuf,
}

/// Errors of the registry layer.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The name is not `[A-Za-z0-9_-]{1,64}`.
    #[error("invalid lambda name {0:?}: use 1 to 64 of A-Z a-z 0-9 _ -")]
    InvalidName(String),
    /// Reading the store failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A store of lambdas, looked up by name.
pub trait Registry: Send + Sync {
    /// Short backend name (`dir`, `http`, `s3`).
    fn kind(&self) -> &'static str;
    /// The code of lambda `name`, or `None` when the registry has no such
    /// lambda. Blocks (file or network I/O).
    fn fetch(&self, name: &str) -> Result<Option<LambdaCode>, RegistryError>;
    /// Names of every lambda, sorted.
    fn list(&self) -> Result<Vec<String>, RegistryError>;
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

/// A registry that is a local directory: lambda `NAME` is `ROOT/NAME/`.
#[derive(Debug, Clone)]
pub struct DirRegistry {
    root: PathBuf,
}

impl DirRegistry {
    /// A registry rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory this registry reads.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Registry for DirRegistry {
    fn kind(&self) -> &'static str {
        "dir"
    }

    fn fetch(&self, name: &str) -> Result<Option<LambdaCode>, RegistryError> {
        validate_name(name)?;
        let dir = self.root.join(name);
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(Some(LambdaCode { dir })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RegistryError::Io { path: dir, source }),
        }
    }

    fn list(&self) -> Result<Vec<String>, RegistryError> {
        let io_err = |source| RegistryError::Io {
            path: self.root.clone(),
            source,
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate_name(&name).is_ok() && entry.path().is_dir() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
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

    #[test]
    fn dir_registry_finds_lists_and_rejects() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::create_dir(root.path().join("hello")).expect("mkdir");
        fs::create_dir(root.path().join("echo")).expect("mkdir");
        fs::write(root.path().join("notes.txt"), "x").expect("write");
        fs::create_dir(root.path().join("bad.name")).expect("mkdir");
        let reg = DirRegistry::new(root.path());

        assert_eq!(
            reg.fetch("hello").expect("fetch"),
            Some(LambdaCode {
                dir: root.path().join("hello")
            })
        );
        assert_eq!(reg.fetch("missing").expect("fetch"), None);
        assert_eq!(reg.fetch("notes").expect("fetch"), None);
        assert!(matches!(
            reg.fetch("../etc"),
            Err(RegistryError::InvalidName(_))
        ));
        assert_eq!(reg.list().expect("list"), vec!["echo", "hello"]);
    }
}
