//! cgroup v1: a hierarchy per controller, each mounted on its own, so a
//! cgroup is one directory in each of the trees of the controllers a
//! sandbox uses (memory, pids, cpu, freezer).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{CPU_PERIOD_US, CgroupError, CgroupLimits, Files, Freezer, Version};

/// Controllers a sandbox cgroup uses: a v1 host must mount all of them.
pub(super) const CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "freezer"];

/// The v1 hierarchies of a host.
#[derive(Debug)]
pub(super) struct V1 {
    files: Files,
    /// Mount point of each controller of [`CONTROLLERS`].
    mounts: BTreeMap<String, PathBuf>,
}

impl V1 {
    pub(super) fn new(files: Files, mounts: BTreeMap<String, PathBuf>) -> Self {
        Self { files, mounts }
    }

    /// Directory of cgroup `rel` in the hierarchy of `controller`.
    fn dir(&self, controller: &str, rel: &str) -> PathBuf {
        self.mounts
            .get(controller)
            .map_or_else(|| PathBuf::from("/nonexistent"), |m| m.join(rel))
    }
}

impl Version for V1 {
    fn number(&self) -> u8 {
        1
    }

    fn files(&self) -> &Files {
        &self.files
    }

    fn dirs(&self, rel: &str) -> Vec<PathBuf> {
        CONTROLLERS.iter().map(|c| self.dir(c, rel)).collect()
    }

    fn procs(&self, rel: &str) -> PathBuf {
        self.dir("pids", rel).join("cgroup.procs")
    }

    fn join_file(&self) -> &'static str {
        "tasks"
    }

    fn delegate_controllers(&self, _rel: &str) -> Result<Vec<String>, CgroupError> {
        // Every v1 controller is usable at every level.
        Ok(Vec::new())
    }

    fn controllers(&self, _rel: &str) -> Result<Vec<String>, CgroupError> {
        Ok(CONTROLLERS.iter().map(|c| c.to_string()).collect())
    }

    fn set_limits(&self, rel: &str, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let mem = self.dir("memory", rel);
        self.files.write(
            mem.join("memory.limit_in_bytes"),
            &limits.mem_bytes.to_string(),
        )?;
        self.files.write(
            mem.join("memory.swappiness"),
            &limits.swappiness.to_string(),
        )?;
        self.files.write(
            self.dir("pids", rel).join("pids.max"),
            &limits.pids.to_string(),
        )?;
        let cpu = self.dir("cpu", rel);
        self.files
            .write(cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
        self.files.write(
            cpu.join("cpu.cfs_quota_us"),
            &limits.cpu_quota_us().to_string(),
        )
    }

    fn set_mem_limit(&self, rel: &str, bytes: u64) -> Result<(), CgroupError> {
        self.files.write(
            self.dir("memory", rel).join("memory.limit_in_bytes"),
            &bytes.to_string(),
        )
    }

    fn cpu_idle_file(&self, rel: &str) -> PathBuf {
        self.dir("cpu", rel).join("cpu.idle")
    }

    fn freezer(&self, rel: &str, frozen: bool) -> Freezer {
        // The state file is the one written, and says the state reached.
        let file = self.dir("freezer", rel).join("freezer.state");
        let value = if frozen { "FROZEN" } else { "THAWED" };
        Freezer {
            file: file.clone(),
            value,
            state: file,
            done: value,
        }
    }

    fn mem_usage_file(&self, rel: &str) -> PathBuf {
        self.dir("memory", rel).join("memory.usage_in_bytes")
    }

    fn oom_file(&self, rel: &str) -> Result<Option<PathBuf>, CgroupError> {
        Ok(Some(self.dir("memory", rel).join("memory.oom_control")))
    }

    fn reclaim_memory(&self, rel: &str) -> Result<(), CgroupError> {
        self.files
            .write(self.dir("memory", rel).join("memory.force_empty"), "0")
    }

    fn kill(&self, _rel: &str) -> bool {
        // v1 has no cgroup.kill: the caller freezes and signals each pid.
        false
    }
}
