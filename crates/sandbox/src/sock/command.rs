//! Commands run to completion in a `sock` sandbox of their own (the
//! package installer, docs/architecture.md §3.8): through the sandbox init, in their
//! own cgroup with the command's limits, in namespaces (the host's
//! network if asked), over a root of the system dirs plus the command's
//! dirs, as the sandbox user; killed at `runtime_sec`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::cgroup::Cgroup;
use super::init::InitSpec;
use super::pool::PoolInner;
use super::rootfs::{self, CommandSources, MountOp, MountPlan, inside};
use super::{cgroup_err, cgroup_limits, kill_pid};
use crate::logs::LogPipes;
use crate::scratch::Scratch;
use crate::supervise::finish_command;
use crate::{CommandOutput, CommandSpec, SandboxError};

impl PoolInner {
    /// Runs `cmd` in a sandbox of its own and removes the sandbox after.
    pub(super) fn run_command(&self, cmd: &CommandSpec) -> Result<CommandOutput, SandboxError> {
        let id = self.new_id(&cmd.name);
        let cgroup = self.cgroup(&id);
        let scratch = Scratch::create(&self.cfg.scratch_root, &id)?;
        let ran = self.run_in(cmd, &cgroup, &scratch);
        let _ = cgroup.discard(&kill_pid);
        let _ = fs::remove_dir_all(&scratch.dir);
        ran
    }

    fn run_in(
        &self,
        cmd: &CommandSpec,
        cgroup: &Cgroup,
        scratch: &Scratch,
    ) -> Result<CommandOutput, SandboxError> {
        cgroup.create().map_err(cgroup_err)?;
        cgroup
            .set_limits(&cgroup_limits(&cmd.limits))
            .map_err(cgroup_err)?;
        let plan = rootfs::command_plan(&CommandSources {
            base: &self.cfg.base,
            base_kind: self.cfg.base_kind,
            python_prefix: &self.cfg.python_prefix,
            writable: &cmd.writable,
            readable: &cmd.readable,
            host_dns: cmd.network,
            disk_mb: cmd.limits.disk_mb,
        });
        // Made here, removed when the command is done: the base keeps no
        // trace of a command's dirs.
        let _mount_points = MountPoints::make(&plan).map_err(|source| SandboxError::Io {
            what: "cannot make the mount points of",
            path: plan.root.clone(),
            source,
        })?;
        let init = InitSpec {
            share_network: cmd.network,
            ..self.sandbox_init(cgroup, plan, cmd.argv.clone(), cmd.env.clone(), inside::TMP)
        };
        let mut init = self.init_command(&init)?;
        let LogPipes {
            stdout,
            stderr,
            drained,
        } = scratch.log_pipes(cmd.limits.log_kb)?;
        let spawned = init
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn();
        // The command holds our copies of the log pipes' write ends: they
        // must be closed before its output can end (which finish_command
        // waits for).
        drop(init);
        let mut child = spawned.map_err(|source| SandboxError::Spawn {
            program: self.cfg.init_exe.clone(),
            source,
        })?;
        scratch.record_pid(child.id())?;
        finish_command(
            &mut child,
            &cmd.limits,
            &scratch.dir,
            &drained,
            || {
                let _ = cgroup.kill_all(&kill_pid);
            },
            || cgroup.oom_kills().is_ok_and(|n| n > 0),
        )
    }
}

/// The mount points a command's [`MountPlan`] needs that the base lacks
/// (its dirs are bound at their host paths, and an installer's staging dir
/// is new for each install), made on the host before the command starts
/// and removed, when empty, once it is done: without this the base would
/// keep an empty dir chain per install. Targets under a tmpfs of the plan
/// are left to the sandbox init, which makes them in that tmpfs.
struct MountPoints {
    /// Dirs made, outermost first.
    made: Vec<PathBuf>,
}

impl MountPoints {
    fn make(plan: &MountPlan) -> std::io::Result<Self> {
        let mut made = Vec::new();
        // What an earlier mount covers is not in the base.
        let mut mounted: Vec<&Path> = Vec::new();
        for op in &plan.ops {
            let target = match op {
                MountOp::Bind { target, .. } | MountOp::Tmpfs { target, .. } => target,
                _ => continue,
            };
            let covered = mounted.iter().any(|m| target.starts_with(m));
            mounted.push(target);
            if covered || !matches!(op, MountOp::Bind { .. }) {
                continue;
            }
            let mut missing = Vec::new();
            let mut dir = target.as_path();
            while fs::symlink_metadata(dir).is_err() {
                missing.push(dir.to_path_buf());
                match dir.parent() {
                    Some(parent) => dir = parent,
                    None => break,
                }
            }
            // Under a link (`lib -> usr/lib`), the path is in a mount of the
            // sandbox's, not in the base: the init finds or makes it there.
            if missing.is_empty() || !dir.is_dir() {
                continue;
            }
            fs::create_dir_all(target)?;
            made.extend(missing.into_iter().rev());
        }
        Ok(Self { made })
    }
}

impl Drop for MountPoints {
    fn drop(&mut self) {
        // Innermost first; a dir another command still uses is not empty.
        for dir in self.made.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_the_base_lacks_are_made_and_removed_and_nothing_else() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join("base");
        fs::create_dir_all(base.join("usr")).expect("mkdir");
        fs::create_dir_all(base.join("srv/shared")).expect("mkdir");
        let bind = |target: &str| MountOp::Bind {
            source: PathBuf::from("/"),
            target: base.join(target),
            writable: false,
        };
        let plan = MountPlan {
            root: base.clone(),
            ops: vec![
                bind("usr"),
                MountOp::Tmpfs {
                    target: base.join("tmp"),
                    options: String::new(),
                },
                bind("tmp/in-the-tmpfs"),
                bind("usr/local/in-the-usr-bind"),
                bind("lib/through-a-link"),
                bind("srv/shared/staging/7"),
                bind("work/cache"),
            ],
        };
        std::os::unix::fs::symlink("usr/lib", base.join("lib")).expect("symlink");
        let points = MountPoints::make(&plan).expect("make");
        for made in ["srv/shared/staging/7", "work/cache"] {
            assert!(base.join(made).is_dir(), "{made}");
        }
        assert!(
            !base.join("tmp").exists(),
            "the init makes those, in the tmpfs"
        );
        // Another command's mount point under a shared dir stays.
        fs::create_dir_all(base.join("srv/shared/staging/8")).expect("mkdir");
        drop(points);
        assert!(!base.join("work").exists());
        assert!(!base.join("srv/shared/staging/7").exists());
        assert!(base.join("srv/shared/staging/8").is_dir());
        assert!(base.join("usr").is_dir());
    }
}
