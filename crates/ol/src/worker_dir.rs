//! Which worker directory a command works on: `-p DIR`, else `$OL_DIR`,
//! else `./default-ol`; errors about it say which of these chose it and
//! how to choose another.

use std::path::PathBuf;

use anyhow::{Result, bail};
use ol_worker::WorkerDir;

use crate::DirArg;

/// The environment variable naming the worker directory.
pub const OL_DIR: &str = "OL_DIR";
/// The worker directory when neither `-p` nor `$OL_DIR` names one.
pub const DEFAULT_DIR: &str = "default-ol";

impl DirArg {
    /// The directory and what chose it (from -p, from $OL_DIR, default).
    pub fn chosen(&self) -> (PathBuf, &'static str) {
        if let Some(path) = &self.path {
            return (path.clone(), "from -p");
        }
        match std::env::var_os(OL_DIR) {
            Some(dir) if !dir.is_empty() => (PathBuf::from(dir), "from $OL_DIR"),
            _ => (PathBuf::from(DEFAULT_DIR), "default: no -p, no $OL_DIR"),
        }
    }

    /// The directory (absolute when it can be made so).
    pub fn path(&self) -> PathBuf {
        let (path, _) = self.chosen();
        std::path::absolute(&path).unwrap_or(path)
    }

    /// The worker directory, which must have been made by `ol worker init`.
    pub fn open(&self) -> Result<WorkerDir> {
        let (path, by) = self.chosen();
        let shown = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
        if !shown.join("config.json").is_file() {
            bail!(
                "no worker directory at {} ({by}; it has no config.json): \
                 make one with `ol worker init -p {}`, or choose another with -p DIR or OL_DIR=DIR",
                shown.display(),
                path.display()
            );
        }
        Ok(WorkerDir::open_dir(&shown)?)
    }

    /// The worker directory, which may not exist yet (`down` and
    /// `force-cleanup` have nothing to do then).
    pub fn open_any(&self) -> Result<WorkerDir> {
        Ok(WorkerDir::open_dir(&self.path())?)
    }
}
