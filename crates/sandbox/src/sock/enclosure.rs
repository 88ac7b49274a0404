//! What a `sock` sandbox holds on the host, whichever way it started
//! (fresh through the init, forked from a zygote): its cgroup and its
//! scratch dir. Pausing freezes the cgroup (and may shrink its memory
//! limit); tearing down kills everything in it and frees the cgroup (kept
//! for reuse, or removed) and the scratch dir.

use std::sync::Arc;

use super::cgroup::pool::CgroupPool;
use super::cgroup::{Cgroup, CgroupError};
use super::{cgroup_err, kill_pid};
use crate::SandboxError;
use crate::scratch::Scratch;

/// What a `sock` sandbox holds on the host: its cgroup and scratch dir.
#[derive(Debug)]
pub(crate) struct Enclosure {
    pub(crate) cgroup: Cgroup,
    pub(crate) scratch: Scratch,
    /// Normal memory limit, when paused sandboxes are downsized.
    pub(crate) downsize: Option<u64>,
    /// OOM kills its cgroup counted before this sandbox (a reused cgroup).
    pub(crate) oom_baseline: u64,
    /// Where its cgroup goes for reuse when it dies (else it is removed).
    pub(crate) recycle: Option<Arc<CgroupPool>>,
}

impl Enclosure {
    /// Freezes the cgroup; with `downsize` (its normal memory limit), then
    /// lowers the limit to what it uses, so a paused sandbox cannot grow
    /// (OpenLambda's `downsize_paused_mem`). The kernel may refuse a limit
    /// at the usage (it tries to reclaim first); then the limit stays.
    pub(crate) fn pause(&self) -> Result<(), SandboxError> {
        self.cgroup.freeze().map_err(cgroup_err)?;
        if self.downsize.is_some()
            && let Ok(used) = self.cgroup.mem_usage()
        {
            let _ = self.cgroup.set_mem_limit(used.next_multiple_of(4096));
        }
        Ok(())
    }

    /// Restores the normal memory limit (if downsized), then thaws.
    pub(crate) fn unpause(&self) -> Result<(), SandboxError> {
        if let Some(limit) = self.downsize {
            self.cgroup.set_mem_limit(limit).map_err(cgroup_err)?;
        }
        self.cgroup.thaw().map_err(cgroup_err)
    }

    pub(crate) fn mem_usage(&self) -> Result<u64, SandboxError> {
        self.cgroup.mem_usage().map_err(cgroup_err)
    }

    pub(crate) fn cgroup_name(&self) -> Option<String> {
        Some(self.cgroup.rel().to_string())
    }

    pub(crate) fn oom_killed(&self) -> bool {
        self.cgroup.oom_kills().is_ok_and(|n| n > self.oom_baseline)
    }

    /// Kills every process of the sandbox (they end soon after: the
    /// kernel tears them down).
    pub(crate) fn kill(&self) {
        let _ = self.cgroup.kill_all(&kill_pid);
    }

    /// Kills every process of the sandbox and removes its cgroup and its
    /// scratch dir.
    pub(crate) fn tear_down(&self) -> Result<(), SandboxError> {
        let removed = release_cgroup(&self.cgroup, self.recycle.as_deref()).map_err(cgroup_err);
        self.scratch.remove();
        removed
    }
}

/// Frees a dead sandbox's cgroup: back to `recycle` for reuse, if given,
/// else killed and removed.
pub(crate) fn release_cgroup(cg: &Cgroup, recycle: Option<&CgroupPool>) -> Result<(), CgroupError> {
    match recycle {
        Some(pool) => pool.recycle(cg.clone(), &kill_pid),
        None => cg.discard(&kill_pid),
    }
}
