//! cgroups v1 and v2 behind one [`Cgroup`] type (docs/architecture.md §3.3), in the
//! shape of Firecracker's jailer and youki's libcgroups:
//! - [`Hierarchy`] (`hierarchy.rs`) reads a mountinfo text, says which
//!   layout the host has and builds its [`Cgroups`];
//! - what differs between the versions (which file holds what, and what a
//!   version can do at all) is one trait, [`Version`], implemented once for
//!   v1 (`v1.rs`: a hierarchy per controller) and once for v2 (`v2.rs`:
//!   the unified hierarchy), so no method matches on the version;
//! - what both share (creating, attaching, freezing and waiting for it,
//!   killing everything inside, removing) is written once, here, on
//!   [`Cgroup`];
//! - [`pool`] keeps emptied cgroups for the next sandbox.
//!
//! Every file operation goes through [`CgroupFs`], so the logic is tested
//! on an in-memory fake (`fake.rs`) without root; [`RealFs`] is the
//! kernel's cgroupfs.

#[cfg(test)]
pub(crate) mod fake;
mod hierarchy;
pub(crate) mod pool;
mod v1;
mod v2;

use std::fmt::Debug;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use self::hierarchy::Hierarchy;

/// CFS period used for cpu limits (100 ms, the kernel default).
const CPU_PERIOD_US: u64 = 100_000;
/// How long freezing may take before it is an error.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the processes of a killed cgroup may keep it busy before
/// removing it is an error.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest sleeps between polls of a freeze (most take
/// ~100 µs).
const FREEZE_FIRST_WAIT: Duration = Duration::from_micros(50);
const FREEZE_MAX_WAIT: Duration = Duration::from_millis(1);
/// First and longest sleeps between tries to remove a killed cgroup.
const REMOVE_FIRST_WAIT: Duration = Duration::from_micros(200);
const REMOVE_MAX_WAIT: Duration = Duration::from_millis(2);

/// Sleeps that double from a first one up to a longest one.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    fn sleep(&mut self) {
        std::thread::sleep(self.next);
        self.next = (self.next * 2).min(self.max);
    }
}

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
    /// A freeze did not take effect in time.
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

impl CgroupLimits {
    /// CPU time per [`CPU_PERIOD_US`] that `cpu_percent` allows.
    fn cpu_quota_us(&self) -> u64 {
        (u64::from(self.cpu_percent) * CPU_PERIOD_US) / 100
    }
}

/// A [`CgroupFs`] whose failures name the control file (what both
/// versions read and write through).
#[derive(Debug, Clone)]
struct Files(Arc<dyn CgroupFs>);

impl Files {
    fn write(&self, path: PathBuf, value: &str) -> Result<(), CgroupError> {
        self.0
            .write(&path, value)
            .map_err(|source| CgroupError::Write {
                path,
                value: value.to_string(),
                source,
            })
    }

    fn read(&self, path: PathBuf) -> Result<String, CgroupError> {
        self.0
            .read(&path)
            .map_err(|source| CgroupError::Read { path, source })
    }

    /// The file system itself, for operations whose failure is an answer
    /// rather than an error.
    fn fs(&self) -> &dyn CgroupFs {
        &*self.0
    }
}

/// How a cgroup is frozen or thawed: `value` written to `file`, then (a
/// freeze) `state` read until one of its lines is `done`.
#[derive(Debug)]
struct Freezer {
    file: PathBuf,
    value: &'static str,
    state: PathBuf,
    done: &'static str,
}

/// What differs between cgroup v1 and v2: where a cgroup's files are and
/// what they hold. `rel` is always the cgroup's path relative to the
/// hierarchy roots (`ol-1a2b/sb-7`).
trait Version: Send + Sync + Debug {
    /// 1 or 2.
    fn number(&self) -> u8;
    /// The control files.
    fn files(&self) -> &Files;
    /// Every directory of the cgroup (one per v1 controller, one for v2).
    fn dirs(&self, rel: &str) -> Vec<PathBuf>;
    /// The `cgroup.procs` listing every process of the cgroup.
    fn procs(&self, rel: &str) -> PathBuf;
    /// The file in each of the cgroup's directories a new, single-threaded
    /// process writes `0` to, to join (see [`Cgroup::join_files`]).
    fn join_file(&self) -> &'static str;
    /// Lets children of the cgroup use the controllers we need; returns
    /// those enabled.
    fn delegate_controllers(&self, rel: &str) -> Result<Vec<String>, CgroupError>;
    /// Controllers usable in the cgroup.
    fn controllers(&self, rel: &str) -> Result<Vec<String>, CgroupError>;
    /// Applies `limits`.
    fn set_limits(&self, rel: &str, limits: &CgroupLimits) -> Result<(), CgroupError>;
    /// Sets only the memory limit.
    fn set_mem_limit(&self, rel: &str, bytes: u64) -> Result<(), CgroupError>;
    /// The `cpu.idle` file of the cgroup (Linux 5.15+): `1` schedules the
    /// whole cgroup as SCHED_IDLE against its siblings.
    fn cpu_idle_file(&self, rel: &str) -> PathBuf;
    /// How to freeze (`frozen`) or thaw the cgroup.
    fn freezer(&self, rel: &str, frozen: bool) -> Freezer;
    /// The file holding the memory in use, in bytes.
    fn mem_usage_file(&self, rel: &str) -> PathBuf;
    /// The file whose `oom_kill` line counts the cgroup's OOM kills; `None`
    /// when the cgroup has no memory accounting (so no OOM kill either).
    fn oom_file(&self, rel: &str) -> Result<Option<PathBuf>, CgroupError>;
    /// Drops the memory still charged to the cgroup after its processes
    /// died.
    fn reclaim_memory(&self, rel: &str) -> Result<(), CgroupError>;
    /// Kills every process of the cgroup with one write, where the kernel
    /// can; returns whether it did.
    fn kill(&self, rel: &str) -> bool;
}

/// The cgroups of one hierarchy (built by [`Hierarchy::cgroups`]).
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: Arc<dyn Version>,
}

impl Cgroups {
    /// The cgroup at `rel` (not created yet).
    pub fn cgroup(&self, rel: &str) -> Cgroup {
        Cgroup {
            version: Arc::clone(&self.version),
            rel: rel.trim_matches('/').to_string(),
        }
    }

    /// 1 or 2.
    pub fn version(&self) -> u8 {
        self.version.number()
    }
}

/// One cgroup of a sandbox: a directory in each v1 controller hierarchy, or
/// one directory in the v2 hierarchy.
#[derive(Debug, Clone)]
pub struct Cgroup {
    version: Arc<dyn Version>,
    /// Path relative to each hierarchy's root, e.g. `ol-1a2b/sb-7`.
    rel: String,
}

impl Cgroup {
    /// Path relative to the hierarchy roots.
    pub fn rel(&self) -> &str {
        &self.rel
    }

    fn files(&self) -> &Files {
        self.version.files()
    }

    /// Every directory of this cgroup (one per v1 controller, one for v2).
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.version.dirs(&self.rel)
    }

    /// The `cgroup.procs` files a process writes its pid to, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// The files a process with a single thread (a child just forked, an
    /// init before it starts any thread) writes `0` to, to join: on v1 each
    /// hierarchy's `tasks`, which moves the writing thread only and so
    /// spares the kernel's global threadgroup lock and the RCU grace
    /// period it waits for when idle (measured on this host: 0.14 ms to
    /// join four hierarchies instead of 11 ms, up to 23 ms, through
    /// `cgroup.procs`); on v2 `cgroup.procs` (`cgroup.threads` needs a
    /// threaded subtree).
    pub fn join_files(&self) -> Vec<PathBuf> {
        let name = self.version.join_file();
        self.dirs().into_iter().map(|d| d.join(name)).collect()
    }

    /// Creates the cgroup's directories. For v2 the parent must delegate
    /// the controllers (see [`Cgroup::delegate_controllers`]).
    pub fn create(&self) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            self.files()
                .fs()
                .mkdir(&dir)
                .map_err(|source| CgroupError::Dir {
                    what: "create",
                    path: dir.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Lets children of this cgroup use every controller it has that a
    /// sandbox needs (v2 writes `+c` to `cgroup.subtree_control`; v1 has
    /// nothing to delegate). Returns the enabled ones.
    pub fn delegate_controllers(&self) -> Result<Vec<String>, CgroupError> {
        self.version.delegate_controllers(&self.rel)
    }

    /// Controllers usable in this cgroup (v1: all we need; v2: those listed
    /// in `cgroup.controllers`).
    pub fn controllers(&self) -> Result<Vec<String>, CgroupError> {
        self.version.controllers(&self.rel)
    }

    /// Applies `limits`. On v2, a controller the cgroup does not have is
    /// skipped (this host binds them all to v1); `controllers` says which.
    pub fn set_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        self.version.set_limits(&self.rel, limits)
    }

    /// Sets only the memory limit (to shrink a paused sandbox).
    pub fn set_mem_limit(&self, bytes: u64) -> Result<(), CgroupError> {
        self.version.set_mem_limit(&self.rel, bytes)
    }

    /// Makes the cgroup's processes run only on CPU time nothing else
    /// wants (`cpu.idle` 1), or back to their normal share (0). Fails where
    /// the kernel has no `cpu.idle` or the cgroup no cpu controller.
    pub fn set_cpu_idle(&self, idle: bool) -> Result<(), CgroupError> {
        self.files().write(
            self.version.cpu_idle_file(&self.rel),
            if idle { "1" } else { "0" },
        )
    }

    /// Moves process `pid` into this cgroup.
    pub fn attach(&self, pid: u32) -> Result<(), CgroupError> {
        let pid = pid.to_string();
        for procs in self.procs_files() {
            self.files().write(procs, &pid)?;
        }
        Ok(())
    }

    /// Pids of every process in the cgroup.
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        Ok(self
            .files()
            .read(self.version.procs(&self.rel))?
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }

    /// Thaws a frozen cgroup. Nothing to wait for: the kernel has woken
    /// every task when the write returns (v1 `freezer.state`, v2
    /// `cgroup.freeze`), so this is one write, cheap enough to make on the
    /// call path (unlike a freeze, which waits for each task to stop).
    pub fn thaw(&self) -> Result<(), CgroupError> {
        let Freezer { file, value, .. } = self.version.freezer(&self.rel, false);
        self.files().write(file, value)
    }

    /// Freezes every process and waits until the kernel says frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        let Freezer {
            file,
            value,
            state,
            done,
        } = self.version.freezer(&self.rel, true);
        self.files().write(file, value)?;
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        let mut wait = Backoff::new(FREEZE_FIRST_WAIT, FREEZE_MAX_WAIT);
        loop {
            let now = self.files().read(state.clone())?;
            if now.lines().any(|l| l.trim() == done) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::Stuck {
                    path: state,
                    state: done,
                    timeout: FREEZE_TIMEOUT,
                });
            }
            // Each task freezes when it next runs: sleeping gives the CPU to
            // them (spinning or yielding took it from them on 2 busy vCPUs,
            // and each poll reopens a control file).
            wait.sleep();
        }
    }

    /// Memory in use, in bytes.
    pub fn mem_usage(&self) -> Result<u64, CgroupError> {
        let path = self.version.mem_usage_file(&self.rel);
        Ok(self.files().read(path)?.trim().parse().unwrap_or(0))
    }

    /// How many processes the kernel's OOM killer has killed in this
    /// cgroup so far. On v2 without the memory controller (this host binds
    /// it to v1) there is no `memory.events` and no cgroup OOM kill: 0.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let Some(path) = self.version.oom_file(&self.rel)? else {
            return Ok(0);
        };
        let text = self.files().read(path)?;
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
        self.version.reclaim_memory(&self.rel)
    }

    /// Kills every process in the cgroup: v2 `cgroup.kill` when the kernel
    /// has it, else freeze, `kill` each pid, thaw (so none can fork away
    /// in between).
    pub fn kill_all(&self, kill: &dyn Fn(u32)) -> Result<(), CgroupError> {
        if self.version.kill(&self.rel) {
            return Ok(());
        }
        // Nothing to freeze in an empty cgroup (one already killed).
        if self.pids()?.is_empty() {
            return Ok(());
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
            match self.files().fs().rmdir(&dir) {
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

    /// Kills every process of the cgroup (with `kill`, where the kernel
    /// cannot) and removes it.
    pub fn discard(&self, kill: &dyn Fn(u32)) -> Result<(), CgroupError> {
        let _ = self.kill_all(kill);
        self.remove_retrying(kill)
    }

    /// Removes a cgroup whose processes were just killed: rmdir fails with
    /// EBUSY until the kernel has finished tearing them down, so retry
    /// briefly, signalling what is left in between. Those were killed
    /// while frozen (or by the kernel), so none can fork away any more: no
    /// need to freeze again (freezing dying tasks was most of the cost).
    pub fn remove_retrying(&self, kill: &dyn Fn(u32)) -> Result<(), CgroupError> {
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        let mut wait = Backoff::new(REMOVE_FIRST_WAIT, REMOVE_MAX_WAIT);
        loop {
            match self.remove() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => {
                    if !self.version.kill(&self.rel) {
                        self.pids().unwrap_or_default().into_iter().for_each(kill);
                    }
                    wait.sleep();
                }
            }
        }
    }

    /// Names of the child cgroups (looked up in the first hierarchy).
    pub fn children(&self) -> Vec<String> {
        self.dirs()
            .first()
            .and_then(|d| self.files().fs().children(d).ok())
            .unwrap_or_default()
    }

    /// Names of the child cgroups in any of its hierarchies (on v1 each
    /// controller has its own tree, and leftovers of a crash may differ
    /// between them), sorted, each once.
    pub fn children_anywhere(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .dirs()
            .iter()
            .filter_map(|d| self.files().fs().children(d).ok())
            .flatten()
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{FakeFs, HYBRID, PURE_V2};
    use super::*;

    fn v1(fs: &Arc<FakeFs>) -> Cgroups {
        let hierarchy = Hierarchy::detect(HYBRID).expect("v1");
        hierarchy.cgroups(Arc::clone(fs) as Arc<dyn CgroupFs>)
    }

    fn v2(fs: &Arc<FakeFs>) -> Cgroups {
        let hierarchy = Hierarchy::detect(PURE_V2).expect("v2");
        hierarchy.cgroups(Arc::clone(fs) as Arc<dyn CgroupFs>)
    }

    #[test]
    fn v1_limits_attach_freeze_and_remove() {
        let fs = Arc::new(FakeFs::default());
        let cgroups = v1(&fs);
        assert_eq!(cgroups.version(), 1);
        let cg = cgroups.cgroup("/ol-w1/sb-3/");
        assert_eq!(cg.rel(), "ol-w1/sb-3");
        cg.create().expect("create");
        for c in v1::CONTROLLERS {
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
        let idle = "/sys/fs/cgroup/cpu/ol-w1/sb-3/cpu.idle";
        cg.set_cpu_idle(true).expect("idle");
        assert_eq!(fs.get(idle).as_deref(), Some("1"));
        cg.set_cpu_idle(false).expect("not idle");
        assert_eq!(fs.get(idle).as_deref(), Some("0"));

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
        let cgroups = v2(&fs);
        assert_eq!(cgroups.version(), 2);
        let parent = cgroups.cgroup("ol-w2");
        parent.create().expect("create parent");
        fs.set(
            "/sys/fs/cgroup/ol-w2/cgroup.controllers",
            "cpu io memory pids\n",
        );
        assert_eq!(
            parent.delegate_controllers().expect("enable"),
            vec!["cpu", "memory", "pids"]
        );
        assert_eq!(
            fs.get("/sys/fs/cgroup/ol-w2/cgroup.subtree_control")
                .as_deref(),
            Some("+cpu +memory +pids")
        );

        let cg = cgroups.cgroup("ol-w2/sb-1");
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
        cg.set_cpu_idle(true).expect("idle");
        assert_eq!(fs.get(format!("{d}/cpu.idle")).as_deref(), Some("1"));

        cg.freeze().expect("freeze");
        assert_eq!(fs.get(format!("{d}/cgroup.freeze")).as_deref(), Some("1"));
        cg.thaw().expect("thaw");
        fs.set(
            format!("{d}/memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        );
        assert_eq!(cg.oom_kills().expect("oom"), 1);
        // Without the memory controller there is no memory.events: 0 kills.
        let bare = cgroups.cgroup("ol-w2/sb-2");
        bare.create().expect("create");
        fs.set("/sys/fs/cgroup/ol-w2/sb-2/cgroup.controllers", "pids\n");
        assert_eq!(bare.oom_kills().expect("oom without memory"), 0);
        assert_eq!(parent.children(), vec!["sb-1", "sb-2"]);
    }

    #[test]
    fn kill_all_signals_every_pid_while_frozen() {
        let fs = Arc::new(FakeFs::default());
        let cg = v1(&fs).cgroup("ol-w3/sb-1");
        cg.create().expect("create");
        cg.attach(7).expect("attach");
        cg.attach(8).expect("attach");
        let killed = std::sync::Mutex::new(Vec::new());
        cg.kill_all(&|pid| killed.lock().expect("lock").push(pid))
            .expect("kill");
        assert_eq!(*killed.lock().expect("lock"), vec![7, 8]);
        assert_eq!(freezer_writes(&fs), vec!["FROZEN", "THAWED"]);
    }

    /// The freezer.state values written to `fs` so far.
    fn freezer_writes(fs: &FakeFs) -> Vec<String> {
        fs.writes
            .lock()
            .expect("lock")
            .iter()
            .filter(|(p, _)| p.ends_with("freezer.state"))
            .map(|(_, v)| v.clone())
            .collect()
    }

    #[test]
    fn an_empty_cgroup_is_not_frozen_and_a_slow_death_is_not_frozen_again() {
        let fs = Arc::new(FakeFs::default());
        let cg = v1(&fs).cgroup("ol-w6/sb-1");
        cg.create().expect("create");
        cg.kill_all(&|_| panic!("nothing to kill")).expect("kill");
        assert!(freezer_writes(&fs).is_empty());
        // Pid 7 takes three signals to be gone (the kernel is still tearing
        // it down): it is signalled again between tries, never frozen again.
        cg.attach(7).expect("attach");
        let procs = cg.procs_files();
        let fs2 = Arc::clone(&fs);
        let signals = std::sync::Mutex::new(0);
        let kill = move |pid: u32| {
            assert_eq!(pid, 7);
            let mut n = signals.lock().expect("lock");
            *n += 1;
            if *n == 3 {
                procs.iter().for_each(|p| fs2.set(p, ""));
            }
        };
        cg.discard(&kill).expect("discard");
        assert_eq!(freezer_writes(&fs), vec!["FROZEN", "THAWED"]);
        for dir in cg.dirs() {
            assert!(!fs.has_dir(&dir), "{}", dir.display());
        }
    }

    #[test]
    fn discard_kills_and_removes_and_children_are_found_in_every_tree() {
        let fs = Arc::new(FakeFs::default());
        let cgroups = v1(&fs);
        let parent = cgroups.cgroup("ol-w5");
        let cg = cgroups.cgroup("ol-w5/sb-1");
        cg.create().expect("create");
        // A leftover that only one controller's tree still has.
        fs.mkdir(Path::new("/sys/fs/cgroup/cpu/ol-w5/sb-9"))
            .expect("mkdir");
        assert_eq!(parent.children(), vec!["sb-1"]);
        assert_eq!(parent.children_anywhere(), vec!["sb-1", "sb-9"]);
        cg.attach(7).expect("attach");
        let procs = cg.procs_files();
        let fs2 = Arc::clone(&fs);
        // The kernel empties the cgroup once its processes are dead.
        let kill = move |_pid: u32| procs.iter().for_each(|p| fs2.set(p, ""));
        cg.discard(&kill).expect("discard");
        for dir in cg.dirs() {
            assert!(!fs.has_dir(&dir), "{}", dir.display());
        }
    }

    #[test]
    fn write_errors_name_the_file() {
        let fs = Arc::new(FakeFs::default());
        let cg = v1(&fs).cgroup("ol-w4/missing");
        let err = cg.attach(1).expect_err("not created");
        assert!(
            err.to_string()
                .contains("/sys/fs/cgroup/memory/ol-w4/missing/cgroup.procs"),
            "{err}"
        );
    }
}
