//! The cluster directory (docs/cluster.md): six subdirectories, as
//! OpenLambda's admin tool lays them out, and the workers configured in
//! it.
//!
//! ```text
//! ROOT/config/template.json     every worker setting (`new`, `setconf`)
//! ROOT/config/worker-<N>.json   worker N's: the template, its port, its state dir
//! ROOT/logs/worker-<N>.out|pid  its log and pid
//! ROOT/base/                    the sandboxes' root file system, shared
//! ROOT/packages/                installed packages, shared
//! ROOT/registry/                the code store (a local directory by default)
//! ROOT/workers/worker-<N>/      worker N's own state (never shared)
//! ROOT/workers/package-cache/   the installers' download cache, shared
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use ol_worker::{Config, WorkerDir};

use crate::{ClusterError, io_err};

/// The six subdirectories of a cluster.
const SUBDIRS: [&str; 6] = ["config", "logs", "base", "packages", "registry", "workers"];

/// A cluster directory.
#[derive(Debug, Clone)]
pub struct Cluster {
    root: PathBuf,
}

/// A worker configured in a cluster (`config/worker-<N>.json`).
#[derive(Debug, Clone)]
pub struct ClusterWorker {
    /// Its number N.
    pub index: u32,
    /// `worker-<N>`.
    pub name: String,
    /// Its config file.
    pub config_file: PathBuf,
    /// Its port, as configured.
    pub port: u16,
    /// Where its files are.
    pub dir: WorkerDir,
}

impl Cluster {
    /// Makes the cluster directory `root` (`ol cluster new`): its six
    /// subdirectories and its template ([`crate::template::create`]).
    /// Refuses a path that exists; removes what it made when it fails.
    pub fn create(root: &Path) -> Result<Self, ClusterError> {
        let cluster = Self::at(root);
        if fs::symlink_metadata(cluster.root()).is_ok() {
            return Err(ClusterError::Usage(format!(
                "{} already exists; `ol cluster new` makes a new directory: pick another --cluster or delete it first",
                cluster.root.display()
            )));
        }
        let made = SUBDIRS
            .iter()
            .try_for_each(|sub| {
                let dir = cluster.root.join(sub);
                fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))
            })
            .and_then(|()| crate::template::create(&cluster));
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&cluster.root);
            return Err(e);
        }
        Ok(cluster)
    }

    /// The cluster at `root`, which `ol cluster new` made.
    pub fn open(root: &Path) -> Result<Self, ClusterError> {
        let cluster = Self::at(root);
        if !cluster.template().is_file() {
            return Err(ClusterError::Usage(format!(
                "{} is not a cluster directory (it has no config/template.json); make one with `ol cluster new --cluster {}`",
                cluster.root.display(),
                root.display()
            )));
        }
        Ok(cluster)
    }

    pub(crate) fn at(root: &Path) -> Self {
        Self {
            root: std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf()),
        }
    }

    /// The cluster directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `config/`.
    pub fn config_dir(&self) -> PathBuf {
        self.root.join("config")
    }
    /// `config/template.json`: every worker setting.
    pub fn template(&self) -> PathBuf {
        self.config_dir().join("template.json")
    }
    /// `logs/`.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// `base/`: the sandboxes' root file system, shared by the workers.
    pub fn base(&self) -> PathBuf {
        self.root.join("base")
    }
    /// `packages/`: installed packages, shared by the workers.
    pub fn packages(&self) -> PathBuf {
        self.root.join("packages")
    }
    /// `registry/`: the default code store, a local directory.
    pub fn registry(&self) -> PathBuf {
        self.root.join("registry")
    }
    /// `workers/`: each worker's state dir, and their download cache.
    pub fn workers_dir(&self) -> PathBuf {
        self.root.join("workers")
    }
    /// The package installers' download cache, shared by the workers (in
    /// `workers/`: `packages/` is visible to lambdas, the cache need not be).
    pub fn package_cache(&self) -> PathBuf {
        self.workers_dir().join("package-cache")
    }

    /// `worker-<N>`.
    pub fn worker_name(index: u32) -> String {
        format!("worker-{index}")
    }
    /// `config/worker-<N>.json`.
    pub fn worker_config(&self, index: u32) -> PathBuf {
        self.config_dir()
            .join(format!("{}.json", Self::worker_name(index)))
    }
    /// `workers/worker-<N>/`: worker N's state dir.
    pub fn worker_state(&self, index: u32) -> PathBuf {
        self.workers_dir().join(Self::worker_name(index))
    }
    /// `logs/worker-<N>.out`: worker N's log.
    pub fn worker_log(&self, index: u32) -> PathBuf {
        self.logs()
            .join(format!("{}.out", Self::worker_name(index)))
    }
    /// `logs/worker-<N>.pid`: worker N's pid, one number.
    pub fn worker_pid_file(&self, index: u32) -> PathBuf {
        self.logs()
            .join(format!("{}.pid", Self::worker_name(index)))
    }

    /// The workers configured (a `config/worker-<N>.json` each), by N.
    pub fn workers(&self) -> Result<Vec<ClusterWorker>, ClusterError> {
        let dir = self.config_dir();
        let mut found = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("cannot list", &dir))? {
            let entry = entry.map_err(io_err("cannot list", &dir))?;
            let Some(index) = worker_index(&entry.file_name().to_string_lossy()) else {
                continue;
            };
            let config_file = entry.path();
            // Its paths and port only: no check against this machine.
            let config = Config::read(&config_file, &[])?;
            found.push(ClusterWorker {
                index,
                name: Self::worker_name(index),
                port: config.worker_port,
                dir: WorkerDir::locate(&config_file, &config),
                config_file,
            });
        }
        found.sort_by_key(|w| w.index);
        Ok(found)
    }
}

/// N of a file named `worker-<N>.json`.
fn worker_index(file_name: &str) -> Option<u32> {
    let n = file_name.strip_prefix("worker-")?.strip_suffix(".json")?;
    // "worker-01.json" is no worker's: N is written plainly.
    n.parse().ok().filter(|i: &u32| i.to_string() == n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_files_are_named_by_their_number() {
        assert_eq!(worker_index("worker-0.json"), Some(0));
        assert_eq!(worker_index("worker-12.json"), Some(12));
        for other in [
            "template.json",
            "worker-.json",
            "worker-01.json",
            "worker-1.json.tmp1",
            "worker-x.json",
        ] {
            assert_eq!(worker_index(other), None, "{other}");
        }
        let c = Cluster::at(Path::new("/c"));
        assert_eq!(c.worker_config(3), Path::new("/c/config/worker-3.json"));
        assert_eq!(c.worker_state(3), Path::new("/c/workers/worker-3"));
        assert_eq!(c.worker_log(3), Path::new("/c/logs/worker-3.out"));
        assert_eq!(c.worker_pid_file(3), Path::new("/c/logs/worker-3.pid"));
    }

    #[test]
    fn open_needs_a_cluster_and_create_refuses_an_existing_path() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let err = Cluster::open(tmp.path()).expect_err("no template");
        assert!(err.to_string().contains("not a cluster directory"), "{err}");
        let err = Cluster::create(tmp.path()).expect_err("exists");
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(
            fs::read_dir(tmp.path()).expect("ls").count(),
            0,
            "untouched"
        );
    }
}
