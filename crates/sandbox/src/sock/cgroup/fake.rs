//! An in-memory cgroupfs for unit tests, acting like the kernel where the
//! logic depends on it: control files appear with mkdir, freezing updates
//! the state files, rmdir fails while processes are inside.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::CgroupFs;

/// mountinfo of a hybrid host: every controller a sandbox needs on v1,
/// and the unified mount beside them.
pub(crate) const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

/// mountinfo of a host with only the unified hierarchy.
pub(crate) const PURE_V2: &str = "\
29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
";

#[derive(Debug, Default)]
pub(crate) struct FakeFs {
    pub(crate) files: Mutex<BTreeMap<PathBuf, String>>,
    pub(crate) dirs: Mutex<Vec<PathBuf>>,
    pub(crate) writes: Mutex<Vec<(PathBuf, String)>>,
}

impl FakeFs {
    pub(crate) fn set(&self, path: impl Into<PathBuf>, value: &str) {
        self.files
            .lock()
            .expect("lock")
            .insert(path.into(), value.to_string());
    }
    pub(crate) fn get(&self, path: impl AsRef<Path>) -> Option<String> {
        self.files.lock().expect("lock").get(path.as_ref()).cloned()
    }
    pub(crate) fn has_dir(&self, path: impl AsRef<Path>) -> bool {
        self.dirs
            .lock()
            .expect("lock")
            .iter()
            .any(|d| d == path.as_ref())
    }
}

impl CgroupFs for FakeFs {
    fn mkdir(&self, path: &Path) -> std::io::Result<()> {
        let mut dirs = self.dirs.lock().expect("lock");
        if !dirs.iter().any(|d| d == path) {
            dirs.push(path.to_path_buf());
        }
        drop(dirs);
        self.set(path.join("cgroup.procs"), "");
        self.set(path.join("cgroup.events"), "populated 0\nfrozen 0\n");
        self.set(path.join("freezer.state"), "THAWED\n");
        Ok(())
    }
    fn rmdir(&self, path: &Path) -> std::io::Result<()> {
        if !self.has_dir(path) {
            return Err(std::io::ErrorKind::NotFound.into());
        }
        if self
            .get(path.join("cgroup.procs"))
            .is_some_and(|p| !p.trim().is_empty())
        {
            return Err(std::io::Error::from_raw_os_error(libc::EBUSY));
        }
        self.dirs.lock().expect("lock").retain(|d| d != path);
        self.files
            .lock()
            .expect("lock")
            .retain(|f, _| !f.starts_with(path));
        Ok(())
    }
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        if !self.has_dir(parent) {
            return Err(std::io::ErrorKind::NotFound.into());
        }
        self.writes
            .lock()
            .expect("lock")
            .push((path.to_path_buf(), value.to_string()));
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        match name {
            "cgroup.procs" => {
                let old = self.get(path).unwrap_or_default();
                self.set(path, &format!("{old}{value}\n"));
            }
            "cgroup.freeze" => {
                self.set(path, value);
                self.set(
                    parent.join("cgroup.events"),
                    &format!("populated 1\nfrozen {value}\n"),
                );
            }
            _ => self.set(path, value),
        }
        Ok(())
    }
    fn read(&self, path: &Path) -> std::io::Result<String> {
        self.get(path)
            .ok_or_else(|| std::io::ErrorKind::NotFound.into())
    }
    fn children(&self, path: &Path) -> std::io::Result<Vec<String>> {
        let mut out: Vec<String> = self
            .dirs
            .lock()
            .expect("lock")
            .iter()
            .filter(|d| d.parent() == Some(path))
            .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        out.sort();
        Ok(out)
    }
}
