//! Reused cgroups (`features.reuse_cgroups`, docs/architecture.md §3.3): a dead
//! sandbox's cgroup is emptied and kept for the next sandbox instead of
//! being removed and made again (rmdir + mkdir of every v1 controller's
//! directory, ~235 µs against ~40 µs to reuse, docs/benchmarks.md, "Floors").
//!
//! A reused cgroup keeps its kernel counters; the one that matters, the
//! OOM-kill count, is read when the cgroup is handed out so a sandbox only
//! counts its own OOM kills (see [`Recycled::oom_baseline`]).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{Cgroup, CgroupError};

/// How long the processes of a killed sandbox may take to leave.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(2);

/// Emptied cgroups waiting for their next sandbox.
#[derive(Debug)]
pub(crate) struct CgroupPool {
    free: Mutex<Vec<Cgroup>>,
    /// Most cgroups kept; beyond it they are removed.
    capacity: usize,
}

/// A cgroup taken from the pool.
#[derive(Debug)]
pub(crate) struct Recycled {
    pub(crate) cgroup: Cgroup,
    /// OOM kills it had counted before this sandbox.
    pub(crate) oom_baseline: u64,
}

impl CgroupPool {
    /// A pool keeping up to `capacity` cgroups (0: none are reused).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            free: Mutex::new(Vec::new()),
            capacity,
        }
    }

    /// Whether cgroups are reused at all.
    pub(crate) fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// An emptied cgroup, if one is free.
    pub(crate) fn take(&self) -> Option<Recycled> {
        let cgroup = self.lock().pop()?;
        let oom_baseline = cgroup.oom_kills().unwrap_or(0);
        Some(Recycled {
            cgroup,
            oom_baseline,
        })
    }

    /// Kills every process of `cg`, waits for them to leave, and keeps it
    /// for reuse; removes it instead when the pool is full or off, or the
    /// cgroup does not empty.
    pub(crate) fn recycle(&self, cg: Cgroup, kill: &dyn Fn(u32)) -> Result<(), CgroupError> {
        if !self.enabled() || self.lock().len() >= self.capacity {
            return cg.discard(kill);
        }
        let emptied = cg.kill_all(kill).and_then(|()| wait_empty(&cg, kill));
        if emptied.is_err() {
            return cg.discard(kill);
        }
        // v1 keeps the dead sandbox's page cache charged to the cgroup:
        // hand the next one a cgroup that starts near zero.
        let _ = cg.reclaim_memory();
        self.lock().push(cg);
        Ok(())
    }

    /// Every free cgroup, leaving the pool empty (to remove them).
    pub(crate) fn drain(&self) -> Vec<Cgroup> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Cgroup>> {
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Waits until no process is left in `cg`, killing stragglers.
fn wait_empty(cg: &Cgroup, kill: &dyn Fn(u32)) -> Result<(), CgroupError> {
    let deadline = Instant::now() + EMPTY_TIMEOUT;
    loop {
        let pids = cg.pids()?;
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::Stuck {
                path: cg.procs_files().into_iter().next().unwrap_or_default(),
                state: "empty",
                timeout: EMPTY_TIMEOUT,
            });
        }
        pids.into_iter().for_each(kill);
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::sock::cgroup::fake::{FakeFs, HYBRID};
    use crate::sock::cgroup::{CgroupFs, Hierarchy};

    fn cgroup(fs: &Arc<FakeFs>, name: &str) -> Cgroup {
        let hierarchy = Hierarchy::detect(HYBRID).expect("v1");
        let cg = hierarchy
            .cgroups(Arc::clone(fs) as Arc<dyn CgroupFs>)
            .cgroup(name);
        cg.create().expect("create");
        cg
    }

    fn procs(name: &str) -> PathBuf {
        PathBuf::from(format!("/sys/fs/cgroup/pids/{name}/cgroup.procs"))
    }

    #[test]
    fn recycled_cgroup_is_emptied_kept_and_handed_out_with_its_oom_count() {
        let fs = Arc::new(FakeFs::default());
        let cg = cgroup(&fs, "ol-x/sb-1");
        fs.set(procs("ol-x/sb-1"), "41\n42\n");
        fs.set(
            "/sys/fs/cgroup/memory/ol-x/sb-1/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        );
        let pool = CgroupPool::new(4);
        let killed = Mutex::new(Vec::new());
        let fs2 = Arc::clone(&fs);
        let kill = move |pid: u32| {
            killed.lock().expect("lock").push(pid);
            // The kernel empties the cgroup once its processes are dead.
            fs2.set(procs("ol-x/sb-1"), "");
        };
        pool.recycle(cg, &kill).expect("recycle");
        assert!(
            fs.has_dir("/sys/fs/cgroup/pids/ol-x/sb-1"),
            "kept, not removed"
        );
        assert_eq!(fs.get(procs("ol-x/sb-1")).as_deref(), Some(""));
        let again = pool.take().expect("a free cgroup");
        assert_eq!(again.cgroup.rel(), "ol-x/sb-1");
        assert_eq!(again.oom_baseline, 3);
        assert!(pool.take().is_none());
    }

    #[test]
    fn full_or_disabled_pool_removes_the_cgroup() {
        let fs = Arc::new(FakeFs::default());
        let off = CgroupPool::new(0);
        off.recycle(cgroup(&fs, "ol-x/a"), &|_| {})
            .expect("removed");
        assert!(!fs.has_dir("/sys/fs/cgroup/pids/ol-x/a"));
        let one = CgroupPool::new(1);
        one.recycle(cgroup(&fs, "ol-x/b"), &|_| {}).expect("kept");
        one.recycle(cgroup(&fs, "ol-x/c"), &|_| {})
            .expect("removed");
        assert!(fs.has_dir("/sys/fs/cgroup/pids/ol-x/b"));
        assert!(!fs.has_dir("/sys/fs/cgroup/pids/ol-x/c"));
        assert_eq!(one.drain().len(), 1);
        assert!(one.take().is_none());
    }
}
