//! cgroups v1 and v2 behind one [`Cgroup`] type (DESIGN.md §3.3).
//!
//! [`Hierarchy::detect`] reads a mountinfo text and picks v1 when the
//! controllers we need (memory, pids, cpu, freezer) are mounted as v1
//! hierarchies (this machine: a hybrid host), else the unified v2 mount.
//! Every file operation goes through [`CgroupFs`], so the logic is tested on
//! an in-memory fake without root; [`RealFs`] is the kernel's cgroupfs.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Controllers a sandbox cgroup uses.
const V1_CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "freezer"];
/// CFS period used for cpu limits (100 ms, the kernel default).
const CPU_PERIOD_US: u64 = 100_000;
/// How long freezing may take before it is an error.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of the cgroup layer; each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Writing a control file failed.
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        /// The control file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading a control file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The control file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Creating or removing a cgroup directory failed.
    #[error("cannot {what} cgroup {path}: {source}")]
    Dir {
        /// `create` or `remove`.
        what: &'static str,
        /// The cgroup directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The host has no usable cgroup hierarchy.
    #[error("no usable cgroup hierarchy: {0}")]
    NoHierarchy(String),
    /// A freeze or thaw did not take effect in time.
    #[error("cgroup {path} did not reach {state} within {timeout:?}")]
    Stuck {
        /// The cgroup.
        path: PathBuf,
        /// The state waited for.
        state: &'static str,
        /// How long we waited.
        timeout: Duration,
    },
}

/// File operations on a cgroup filesystem.
pub trait CgroupFs: Send + Sync + Debug {
    /// Creates a cgroup directory (and missing parents).
    fn mkdir(&self, path: &Path) -> std::io::Result<()>;
    /// Removes an empty cgroup directory.
    fn rmdir(&self, path: &Path) -> std::io::Result<()>;
    /// Writes a control file.
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()>;
    /// Reads a control file.
    fn read(&self, path: &Path) -> std::io::Result<String>;
    /// Names of the sub-directories (child cgroups) of `path`.
    fn children(&self, path: &Path) -> std::io::Result<Vec<String>>;
}

/// The kernel's cgroupfs.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl CgroupFs for RealFs {
    fn mkdir(&self, path: &Path) -> std::io::Result<()> {
        match fs::create_dir_all(path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    }
    fn rmdir(&self, path: &Path) -> std::io::Result<()> {
        fs::remove_dir(path)
    }
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
        // One write(2) per value: cgroupfs acts on each write call.
        use std::io::Write;
        fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .write_all(value.as_bytes())
    }
    fn read(&self, path: &Path) -> std::io::Result<String> {
        fs::read_to_string(path)
    }
    fn children(&self, path: &Path) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }
}

/// Which cgroup layout the host has, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// One mount per controller (memory, pids, cpu, freezer).
    V1 {
        /// Mount point of each controller.
        mounts: BTreeMap<String, PathBuf>,
    },
    /// The unified hierarchy.
    V2 {
        /// Its mount point.
        root: PathBuf,
    },
}

impl Hierarchy {
    /// Picks the hierarchy from `/proc/self/mountinfo` text: v1 when every
    /// controller we need is a v1 mount, else a cgroup2 mount.
    pub fn detect(mountinfo: &str) -> Result<Self, CgroupError> {
        let mut v1 = BTreeMap::new();
        let mut v2 = None;
        for line in mountinfo.lines() {
            // mountinfo: ... mount_point ... - fstype source super_options
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = left.split_whitespace().nth(4) else {
                continue;
            };
            let mut right = right.split_whitespace();
            let (fstype, _source, options) =
                (right.next(), right.next(), right.next().unwrap_or(""));
            match fstype {
                Some("cgroup") => {
                    for opt in options.split(',') {
                        if V1_CONTROLLERS.contains(&opt) {
                            v1.entry(opt.to_string())
                                .or_insert_with(|| PathBuf::from(unescape_mount_path(mount_point)));
                        }
                    }
                }
                Some("cgroup2") if v2.is_none() => {
                    v2 = Some(PathBuf::from(unescape_mount_path(mount_point)));
                }
                _ => {}
            }
        }
        if V1_CONTROLLERS.iter().all(|c| v1.contains_key(*c)) {
            return Ok(Self::V1 { mounts: v1 });
        }
        match v2 {
            Some(root) => Ok(Self::V2 { root }),
            None => Err(CgroupError::NoHierarchy(format!(
                "need v1 mounts of {} or a cgroup2 mount",
                V1_CONTROLLERS.join(", ")
            ))),
        }
    }

    /// 1 or 2.
    pub fn version(&self) -> u8 {
        match self {
            Self::V1 { .. } => 1,
            Self::V2 { .. } => 2,
        }
    }
}

/// Mount points in mountinfo escape space, tab, newline and backslash as
/// octal (`\040`).
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(v) = octal.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Limits a sandbox cgroup enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Memory limit in bytes.
    pub mem_bytes: u64,
    /// Most processes and threads.
    pub pids: u32,
    /// CPU share in percent of one core.
    pub cpu_percent: u32,
    /// Memory swappiness (v1 only; v2 has no per-cgroup swappiness).
    pub swappiness: u32,
}

/// One cgroup of a sandbox: a directory in each v1 controller hierarchy, or
/// one directory in the v2 hierarchy.
#[derive(Debug, Clone)]
pub struct Cgroup {
    fs: Arc<dyn CgroupFs>,
    hierarchy: Arc<Hierarchy>,
    /// Path relative to each hierarchy's root, e.g. `ol-1a2b/sb-7`.
    rel: String,
}

impl Cgroup {
    /// The cgroup at `rel` (not created yet).
    pub fn new(fs: Arc<dyn CgroupFs>, hierarchy: Arc<Hierarchy>, rel: &str) -> Self {
        Self {
            fs,
            hierarchy,
            rel: rel.trim_matches('/').to_string(),
        }
    }

    /// Path relative to the hierarchy roots.
    pub fn rel(&self) -> &str {
        &self.rel
    }

    /// Directory of this cgroup in the hierarchy that has `controller`
    /// (v2: the one directory).
    fn dir(&self, controller: &str) -> PathBuf {
        match &*self.hierarchy {
            Hierarchy::V1 { mounts } => mounts
                .get(controller)
                .map_or_else(|| PathBuf::from("/nonexistent"), |m| m.join(&self.rel)),
            Hierarchy::V2 { root } => root.join(&self.rel),
        }
    }

    /// Every directory of this cgroup (one per v1 controller, one for v2).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &*self.hierarchy {
            Hierarchy::V1 { .. } => V1_CONTROLLERS.iter().map(|c| self.dir(c)).collect(),
            Hierarchy::V2 { root } => vec![root.join(&self.rel)],
        }
    }

    /// The `cgroup.procs` files a process writes its pid to, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    fn write(&self, path: PathBuf, value: &str) -> Result<(), CgroupError> {
        self.fs
            .write(&path, value)
            .map_err(|source| CgroupError::Write {
                path,
                value: value.to_string(),
                source,
            })
    }

    fn read(&self, path: PathBuf) -> Result<String, CgroupError> {
        self.fs
            .read(&path)
            .map_err(|source| CgroupError::Read { path, source })
    }

    /// Creates the cgroup's directories. For v2 the parent must delegate
    /// the controllers (see [`Cgroup::enable_v2_controllers`]).
    pub fn create(&self) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            self.fs.mkdir(&dir).map_err(|source| CgroupError::Dir {
                what: "create",
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// v2: lets children of this cgroup use every controller it has
    /// (writes `+c` to `cgroup.subtree_control`). Returns the enabled ones.
    pub fn enable_v2_controllers(&self) -> Result<Vec<String>, CgroupError> {
        let Hierarchy::V2 { root } = &*self.hierarchy else {
            return Ok(Vec::new());
        };
        let dir = root.join(&self.rel);
        let available = self.read(dir.join("cgroup.controllers"))?;
        let wanted: Vec<String> = available
            .split_whitespace()
            .filter(|c| matches!(*c, "memory" | "pids" | "cpu"))
            .map(str::to_string)
            .collect();
        if !wanted.is_empty() {
            let value = wanted
                .iter()
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(" ");
            self.write(dir.join("cgroup.subtree_control"), &value)?;
        }
        Ok(wanted)
    }

    /// Controllers usable in this cgroup (v1: all we need; v2: those listed
    /// in `cgroup.controllers`).
    pub fn controllers(&self) -> Result<Vec<String>, CgroupError> {
        match &*self.hierarchy {
            Hierarchy::V1 { .. } => Ok(V1_CONTROLLERS.iter().map(|c| c.to_string()).collect()),
            Hierarchy::V2 { root } => Ok(self
                .read(root.join(&self.rel).join("cgroup.controllers"))?
                .split_whitespace()
                .map(str::to_string)
                .collect()),
        }
    }

    /// Applies `limits`. On v2, a controller the cgroup does not have is
    /// skipped (this host binds them all to v1); `controllers` says which.
    pub fn set_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let quota = (limits.cpu_percent as u64 * CPU_PERIOD_US) / 100;
        match &*self.hierarchy {
            Hierarchy::V1 { .. } => {
                let mem = self.dir("memory");
                self.write(
                    mem.join("memory.limit_in_bytes"),
                    &limits.mem_bytes.to_string(),
                )?;
                self.write(
                    mem.join("memory.swappiness"),
                    &limits.swappiness.to_string(),
                )?;
                self.write(self.dir("pids").join("pids.max"), &limits.pids.to_string())?;
                let cpu = self.dir("cpu");
                self.write(cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                self.write(cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
            Hierarchy::V2 { root } => {
                let dir = root.join(&self.rel);
                let have = self.controllers()?;
                let has = |c: &str| have.iter().any(|h| h == c);
                if has("memory") {
                    self.write(dir.join("memory.max"), &limits.mem_bytes.to_string())?;
                    // memory.swap.max exists only with swap accounting.
                    let swap = dir.join("memory.swap.max");
                    if self.fs.read(&swap).is_ok() {
                        self.write(swap, "0")?;
                    }
                }
                if has("pids") {
                    self.write(dir.join("pids.max"), &limits.pids.to_string())?;
                }
                if has("cpu") {
                    self.write(dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                }
            }
        }
        Ok(())
    }

    /// Sets only the memory limit (to shrink a paused sandbox).
    pub fn set_mem_limit(&self, bytes: u64) -> Result<(), CgroupError> {
        match &*self.hierarchy {
            Hierarchy::V1 { .. } => self.write(
                self.dir("memory").join("memory.limit_in_bytes"),
                &bytes.to_string(),
            ),
            Hierarchy::V2 { .. } => {
                self.write(self.dir("memory").join("memory.max"), &bytes.to_string())
            }
        }
    }

    /// Moves process `pid` into this cgroup.
    pub fn attach(&self, pid: u32) -> Result<(), CgroupError> {
        let pid = pid.to_string();
        for procs in self.procs_files() {
            self.write(procs, &pid)?;
        }
        Ok(())
    }

    /// Pids of every process in the cgroup.
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let procs = match &*self.hierarchy {
            Hierarchy::V1 { .. } => self.dir("pids").join("cgroup.procs"),
            Hierarchy::V2 { root } => root.join(&self.rel).join("cgroup.procs"),
        };
        Ok(self
            .read(procs)?
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }

    /// Freezes every process and waits until the kernel says frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.set_frozen(true)
    }

    /// Thaws a frozen cgroup and waits until it runs again.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let (file, value, state_file, done): (PathBuf, &str, PathBuf, &'static str) =
            match &*self.hierarchy {
                Hierarchy::V1 { .. } => {
                    let f = self.dir("freezer").join("freezer.state");
                    let v = if frozen { "FROZEN" } else { "THAWED" };
                    (f.clone(), v, f, v)
                }
                Hierarchy::V2 { root } => {
                    let d = root.join(&self.rel);
                    let (v, done) = if frozen {
                        ("1", "frozen 1")
                    } else {
                        ("0", "frozen 0")
                    };
                    (d.join("cgroup.freeze"), v, d.join("cgroup.events"), done)
                }
            };
        self.write(file, value)?;
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        let mut spins = 0u32;
        loop {
            let state = self.read(state_file.clone())?;
            if state.lines().any(|l| l.trim() == done) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::Stuck {
                    path: state_file,
                    state: done,
                    timeout: FREEZE_TIMEOUT,
                });
            }
            // Freezing usually completes within ~100 µs: spin briefly, then
            // back off.
            spins += 1;
            if spins > 100 {
                std::thread::sleep(Duration::from_micros(200));
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Memory in use, in bytes.
    pub fn mem_usage(&self) -> Result<u64, CgroupError> {
        let path = match &*self.hierarchy {
            Hierarchy::V1 { .. } => self.dir("memory").join("memory.usage_in_bytes"),
            Hierarchy::V2 { root } => root.join(&self.rel).join("memory.current"),
        };
        Ok(self.read(path)?.trim().parse().unwrap_or(0))
    }

    /// How many processes the kernel's OOM killer has killed in this
    /// cgroup so far. On v2 without the memory controller (this host binds
    /// it to v1) there is no `memory.events` and no cgroup OOM kill: 0.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let path = match &*self.hierarchy {
            Hierarchy::V1 { .. } => self.dir("memory").join("memory.oom_control"),
            Hierarchy::V2 { root } => {
                if !self.controllers()?.iter().any(|c| c == "memory") {
                    return Ok(0);
                }
                root.join(&self.rel).join("memory.events")
            }
        };
        let text = self.read(path)?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    }

    /// Drops what memory the cgroup still has charged after its processes
    /// died (v1 `memory.force_empty`; v2 needs nothing: page cache of dead
    /// processes is reclaimed under pressure like any other).
    pub fn reclaim_memory(&self) -> Result<(), CgroupError> {
        match &*self.hierarchy {
            Hierarchy::V1 { .. } => self.write(self.dir("memory").join("memory.force_empty"), "0"),
            Hierarchy::V2 { .. } => Ok(()),
        }
    }

    /// Kills every process in the cgroup: v2 `cgroup.kill` when the kernel
    /// has it, else freeze, SIGKILL each pid, thaw (so none can fork away
    /// in between).
    pub fn kill_all(&self, kill: &dyn Fn(u32)) -> Result<(), CgroupError> {
        if let Hierarchy::V2 { root } = &*self.hierarchy {
            let file = root.join(&self.rel).join("cgroup.kill");
            if self.fs.write(&file, "1").is_ok() {
                return Ok(());
            }
        }
        let frozen = self.freeze().is_ok();
        for pid in self.pids()? {
            kill(pid);
        }
        if frozen {
            self.thaw()?;
        }
        Ok(())
    }

    /// Removes the cgroup's directories (it must hold no process).
    pub fn remove(&self) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            match self.fs.rmdir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(CgroupError::Dir {
                        what: "remove",
                        path: dir,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Names of the child cgroups (looked up in the first hierarchy).
    pub fn children(&self) -> Vec<String> {
        self.dirs()
            .first()
            .and_then(|d| self.fs.children(d).ok())
            .unwrap_or_default()
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! An in-memory cgroupfs that acts like the kernel where the logic
    //! depends on it: control files appear with mkdir, freezing updates
    //! the state files, rmdir fails while processes are inside.

    use super::*;
    use std::sync::Mutex;

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
}

#[cfg(test)]
mod tests {
    use super::fake::FakeFs;
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const PURE_V2: &str = "\
29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
";

    fn v1() -> Arc<Hierarchy> {
        Arc::new(Hierarchy::detect(HYBRID).expect("v1"))
    }

    fn v2() -> Arc<Hierarchy> {
        Arc::new(Hierarchy::detect(PURE_V2).expect("v2"))
    }

    #[test]
    fn detects_hybrid_as_v1_and_unified_as_v2() {
        let Hierarchy::V1 { mounts } = &*v1() else {
            panic!("hybrid must be v1");
        };
        assert_eq!(mounts["memory"], PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(mounts["cpu"], PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(
            *v2(),
            Hierarchy::V2 {
                root: "/sys/fs/cgroup".into()
            }
        );
        // v1 without a freezer falls back to the unified mount.
        let partial: String = HYBRID
            .lines()
            .filter(|l| !l.contains("freezer"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(Hierarchy::detect(&partial).expect("v2").version(), 2);
        assert!(Hierarchy::detect("1 2 0:1 / / rw - ext4 /dev/vda rw").is_err());
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }

    #[test]
    fn v1_limits_attach_freeze_and_remove() {
        let fs = Arc::new(FakeFs::default());
        let cg = Cgroup::new(fs.clone(), v1(), "/ol-w1/sb-3/");
        assert_eq!(cg.rel(), "ol-w1/sb-3");
        cg.create().expect("create");
        for c in V1_CONTROLLERS {
            assert!(fs.has_dir(format!("/sys/fs/cgroup/{c}/ol-w1/sb-3")), "{c}");
        }
        cg.set_limits(&CgroupLimits {
            mem_bytes: 50 << 20,
            pids: 10,
            cpu_percent: 150,
            swappiness: 0,
        })
        .expect("limits");
        let m = "/sys/fs/cgroup/memory/ol-w1/sb-3";
        assert_eq!(
            fs.get(format!("{m}/memory.limit_in_bytes")).as_deref(),
            Some("52428800")
        );
        assert_eq!(
            fs.get(format!("{m}/memory.swappiness")).as_deref(),
            Some("0")
        );
        assert_eq!(
            fs.get("/sys/fs/cgroup/pids/ol-w1/sb-3/pids.max").as_deref(),
            Some("10")
        );
        assert_eq!(
            fs.get("/sys/fs/cgroup/cpu/ol-w1/sb-3/cpu.cfs_quota_us")
                .as_deref(),
            Some("150000")
        );

        cg.attach(42).expect("attach");
        assert_eq!(cg.pids().expect("pids"), vec![42]);
        for procs in cg.procs_files() {
            assert_eq!(
                fs.get(&procs).as_deref(),
                Some("42\n"),
                "{}",
                procs.display()
            );
        }
        cg.freeze().expect("freeze");
        assert_eq!(
            fs.get("/sys/fs/cgroup/freezer/ol-w1/sb-3/freezer.state")
                .as_deref(),
            Some("FROZEN")
        );
        cg.thaw().expect("thaw");

        fs.set(format!("{m}/memory.usage_in_bytes"), "1234\n");
        assert_eq!(cg.mem_usage().expect("usage"), 1234);
        fs.set(
            format!("{m}/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        assert_eq!(cg.oom_kills().expect("oom"), 2);

        // Busy cgroups cannot be removed; emptied ones can, twice.
        assert!(cg.remove().is_err());
        for procs in cg.procs_files() {
            fs.set(procs, "");
        }
        cg.remove().expect("remove");
        cg.remove().expect("remove again is fine");
        assert!(!fs.has_dir(m));
    }

    #[test]
    fn v2_enables_controllers_and_skips_missing_ones() {
        let fs = Arc::new(FakeFs::default());
        let parent = Cgroup::new(fs.clone(), v2(), "ol-w2");
        parent.create().expect("create parent");
        fs.set(
            "/sys/fs/cgroup/ol-w2/cgroup.controllers",
            "cpu io memory pids\n",
        );
        assert_eq!(
            parent.enable_v2_controllers().expect("enable"),
            vec!["cpu", "memory", "pids"]
        );
        assert_eq!(
            fs.get("/sys/fs/cgroup/ol-w2/cgroup.subtree_control")
                .as_deref(),
            Some("+cpu +memory +pids")
        );

        let cg = Cgroup::new(fs.clone(), v2(), "ol-w2/sb-1");
        cg.create().expect("create");
        fs.set(
            "/sys/fs/cgroup/ol-w2/sb-1/cgroup.controllers",
            "memory pids\n",
        );
        cg.set_limits(&CgroupLimits {
            mem_bytes: 1 << 20,
            pids: 5,
            cpu_percent: 50,
            swappiness: 0,
        })
        .expect("limits");
        let d = "/sys/fs/cgroup/ol-w2/sb-1";
        assert_eq!(
            fs.get(format!("{d}/memory.max")).as_deref(),
            Some("1048576")
        );
        assert_eq!(fs.get(format!("{d}/pids.max")).as_deref(), Some("5"));
        assert_eq!(
            fs.get(format!("{d}/cpu.max")),
            None,
            "cpu is not delegated here"
        );

        cg.freeze().expect("freeze");
        assert_eq!(fs.get(format!("{d}/cgroup.freeze")).as_deref(), Some("1"));
        cg.thaw().expect("thaw");
        fs.set(
            format!("{d}/memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        );
        assert_eq!(cg.oom_kills().expect("oom"), 1);
        // Without the memory controller there is no memory.events: 0 kills.
        let bare = Cgroup::new(fs.clone(), v2(), "ol-w2/sb-2");
        bare.create().expect("create");
        fs.set("/sys/fs/cgroup/ol-w2/sb-2/cgroup.controllers", "pids\n");
        assert_eq!(bare.oom_kills().expect("oom without memory"), 0);
        assert_eq!(parent.children(), vec!["sb-1", "sb-2"]);
    }

    #[test]
    fn kill_all_signals_every_pid_while_frozen() {
        let fs = Arc::new(FakeFs::default());
        let cg = Cgroup::new(fs.clone(), v1(), "ol-w3/sb-1");
        cg.create().expect("create");
        cg.attach(7).expect("attach");
        cg.attach(8).expect("attach");
        let killed = std::sync::Mutex::new(Vec::new());
        cg.kill_all(&|pid| killed.lock().expect("lock").push(pid))
            .expect("kill");
        assert_eq!(*killed.lock().expect("lock"), vec![7, 8]);
        let writes: Vec<String> = fs
            .writes
            .lock()
            .expect("lock")
            .iter()
            .filter(|(p, _)| p.ends_with("freezer.state"))
            .map(|(_, v)| v.clone())
            .collect();
        assert_eq!(writes, vec!["FROZEN", "THAWED"]);
    }

    #[test]
    fn write_errors_name_the_file() {
        let fs = Arc::new(FakeFs::default());
        let cg = Cgroup::new(fs, v1(), "ol-w4/missing");
        let err = cg.attach(1).expect_err("not created");
        assert!(
            err.to_string()
                .contains("/sys/fs/cgroup/memory/ol-w4/missing/cgroup.procs"),
            "{err}"
        );
    }
}
