//! cgroup v2: one unified hierarchy, so a cgroup is one directory; its
//! parent must delegate the controllers it uses, and the kernel may lack
//! some of them here (a hybrid host binds them to v1).

use std::path::PathBuf;

use super::{CPU_PERIOD_US, CgroupError, CgroupLimits, Files, Freezer, Version};

/// Controllers a sandbox cgroup uses, when the parent has them.
const WANTED: [&str; 3] = ["memory", "pids", "cpu"];

/// The unified hierarchy of a host.
#[derive(Debug)]
pub(super) struct V2 {
    files: Files,
    /// Its mount point.
    root: PathBuf,
}

impl V2 {
    pub(super) fn new(files: Files, root: PathBuf) -> Self {
        Self { files, root }
    }

    fn dir(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn has(&self, rel: &str, controller: &str) -> Result<bool, CgroupError> {
        Ok(self.controllers(rel)?.iter().any(|c| c == controller))
    }
}

impl Version for V2 {
    fn number(&self) -> u8 {
        2
    }

    fn files(&self) -> &Files {
        &self.files
    }

    fn dirs(&self, rel: &str) -> Vec<PathBuf> {
        vec![self.dir(rel)]
    }

    fn procs(&self, rel: &str) -> PathBuf {
        self.dir(rel).join("cgroup.procs")
    }

    fn join_file(&self) -> &'static str {
        "cgroup.procs"
    }

    fn delegate_controllers(&self, rel: &str) -> Result<Vec<String>, CgroupError> {
        let dir = self.dir(rel);
        let available = self.files.read(dir.join("cgroup.controllers"))?;
        let wanted: Vec<String> = available
            .split_whitespace()
            .filter(|c| WANTED.contains(c))
            .map(str::to_string)
            .collect();
        if !wanted.is_empty() {
            let value = wanted
                .iter()
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(" ");
            self.files
                .write(dir.join("cgroup.subtree_control"), &value)?;
        }
        Ok(wanted)
    }

    fn controllers(&self, rel: &str) -> Result<Vec<String>, CgroupError> {
        Ok(self
            .files
            .read(self.dir(rel).join("cgroup.controllers"))?
            .split_whitespace()
            .map(str::to_string)
            .collect())
    }

    fn set_limits(&self, rel: &str, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let dir = self.dir(rel);
        let have = self.controllers(rel)?;
        let has = |c: &str| have.iter().any(|h| h == c);
        if has("memory") {
            self.files
                .write(dir.join("memory.max"), &limits.mem_bytes.to_string())?;
            // memory.swap.max exists only with swap accounting.
            let swap = dir.join("memory.swap.max");
            if self.files.fs().read(&swap).is_ok() {
                self.files.write(swap, "0")?;
            }
        }
        if has("pids") {
            self.files
                .write(dir.join("pids.max"), &limits.pids.to_string())?;
        }
        if has("cpu") {
            self.files.write(
                dir.join("cpu.max"),
                &format!("{} {CPU_PERIOD_US}", limits.cpu_quota_us()),
            )?;
        }
        Ok(())
    }

    fn cpu_idle_file(&self, rel: &str) -> PathBuf {
        self.dir(rel).join("cpu.idle")
    }

    fn set_mem_limit(&self, rel: &str, bytes: u64) -> Result<(), CgroupError> {
        self.files
            .write(self.dir(rel).join("memory.max"), &bytes.to_string())
    }

    fn freezer(&self, rel: &str, frozen: bool) -> Freezer {
        let dir = self.dir(rel);
        let (value, done) = if frozen {
            ("1", "frozen 1")
        } else {
            ("0", "frozen 0")
        };
        Freezer {
            file: dir.join("cgroup.freeze"),
            value,
            state: dir.join("cgroup.events"),
            done,
        }
    }

    fn mem_usage_file(&self, rel: &str) -> PathBuf {
        self.dir(rel).join("memory.current")
    }

    fn oom_file(&self, rel: &str) -> Result<Option<PathBuf>, CgroupError> {
        // Without the memory controller there is no memory.events.
        Ok(self
            .has(rel, "memory")?
            .then(|| self.dir(rel).join("memory.events")))
    }

    fn reclaim_memory(&self, _rel: &str) -> Result<(), CgroupError> {
        // Page cache of dead processes is reclaimed under pressure like
        // any other.
        Ok(())
    }

    fn kill(&self, rel: &str) -> bool {
        // cgroup.kill exists since Linux 5.14.
        self.files
            .fs()
            .write(&self.dir(rel).join("cgroup.kill"), "1")
            .is_ok()
    }
}
