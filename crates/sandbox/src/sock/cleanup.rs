//! Removing what a worker left after a crash (or at `ol worker down`):
//! the processes of every cgroup under its parent cgroup `ol-<id>/`, those
//! cgroups, and the scratch dirs with the processes their pid files name.
//! Safe to run with no worker alive.

use std::path::Path;

use super::{cgroup_err, host_cgroups, kill_pid};
use crate::SandboxError;
use crate::scratch::cleanup_scratch;

/// Kills and removes everything worker `worker_id` left: the processes of
/// every cgroup under `ol-<id>/`, those cgroups (and the parent itself when
/// `remove_parent`), and the scratch dirs. Returns how many sandboxes were
/// found.
pub(crate) fn cleanup(
    worker_id: &str,
    scratch_root: &Path,
    remove_parent: bool,
) -> Result<usize, SandboxError> {
    let mut found = cleanup_scratch(scratch_root)?;
    let Ok(cgroups) = host_cgroups() else {
        return Ok(found);
    };
    let parent = cgroups.cgroup(worker_id);
    let names = parent.children_anywhere();
    for name in &names {
        cgroups
            .cgroup(&format!("{worker_id}/{name}"))
            .discard(&kill_pid)
            .map_err(cgroup_err)?;
    }
    found = found.max(names.len());
    if remove_parent {
        parent.remove_retrying(&kill_pid).map_err(cgroup_err)?;
    }
    Ok(found)
}
