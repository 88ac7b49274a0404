//! Commands run to completion in a `sock` sandbox of their own (the
//! package installer, docs/architecture.md §3.8): through the sandbox init, in their
//! own cgroup with the command's limits, in namespaces (the host's
//! network if asked), over a root of the system dirs plus the command's
//! dirs, as the sandbox user; killed at `runtime_sec`.

use std::process::Stdio;

use super::cgroup::Cgroup;
use super::init::InitSpec;
use super::pool::PoolInner;
use super::rootfs::{self, CommandSources, inside};
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
        scratch.remove();
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
        if cmd.idle {
            // Best effort: without cpu.idle (before Linux 5.15) it runs
            // at a lambda's priority.
            if let Err(e) = cgroup.set_cpu_idle(true) {
                tracing::debug!(command = %cmd.name, "not idle: {e}");
            }
        }
        let plan = rootfs::command_plan(&CommandSources {
            base: &self.cfg.base,
            base_kind: self.cfg.base_kind,
            python_prefix: &self.cfg.python_prefix,
            writable: &cmd.writable,
            readable: &cmd.readable,
            host_dns: cmd.network,
            disk_mb: cmd.limits.disk_mb,
        });
        let init = InitSpec {
            share_network: cmd.network,
            ..self.sandbox_init(cgroup, plan, cmd.argv.clone(), cmd.env.clone(), inside::TMP)
        };
        let mut init = self.init_command(&init)?;
        let LogPipes {
            stdout,
            stderr,
            drained,
            ..
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
            &scratch.path(),
            &drained,
            || {
                let _ = cgroup.kill_all(&kill_pid);
            },
            || cgroup.oom_kills().is_ok_and(|n| n > 0),
        )
    }
}
