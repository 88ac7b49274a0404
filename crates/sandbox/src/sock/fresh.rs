//! Sandboxes started fresh through the sandbox init ([`super::init`]): the
//! root zygote, and lambdas when no zygote works. The worker starts the
//! `ol` binary as the init with an [`InitSpec`] (its cgroup, the mounts of
//! its root, its seccomp filter, the program) and keeps the init's outer
//! process as its handle, [`SockSandbox`].

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use ol_obs::Phase;

use super::cgroup::Cgroup;
use super::enclosure::Enclosure;
use super::init::{INIT_ARG, INIT_FAILED, InitSpec};
use super::pool::PoolInner;
use super::rootfs::{self, MountPlan, RootSources, inside};
use super::seccomp::Profile;
use super::{base_env, cgroup_err, cgroup_limits, package_paths};
use crate::logs::{Drained, LogPipes};
use crate::runtime::{RUNTIME_FILE, ZYGOTE_FILE, start_program};
use crate::scratch::Scratch;
use crate::supervise::{RUNTIME_FD, describe_exit, spawn_with_runtime_fd};
use crate::{Limits, Sandbox, SandboxError, SandboxSpec, io_err};

/// What a sandbox init runs.
pub(super) enum Program<'a> {
    /// The runtime serving one lambda.
    Lambda(&'a SandboxSpec),
    /// A zygote forking lambda sandboxes.
    Zygote,
}

impl PoolInner {
    fn init_spec(&self, what: &Program<'_>, cgroup: &Cgroup, limits: &Limits) -> InitSpec {
        let code = match what {
            Program::Lambda(spec) => Some(spec.code_dir.as_path()),
            Program::Zygote => None,
        };
        let plan = rootfs::lambda_plan(&RootSources {
            base: &self.cfg.base,
            base_kind: self.cfg.base_kind,
            python_prefix: &self.cfg.python_prefix,
            code,
            disk_mb: limits.disk_mb,
            packages: &self.cfg.packages,
            runtime: &self.cfg.runtime_dir,
        });
        let python = self.cfg.python.display().to_string();
        let in_runtime_dir = |file: &str| format!("{}/{file}", inside::RUNTIME);
        let fd = RUNTIME_FD.to_string();
        let (argv, extra_env) = match what {
            Program::Lambda(spec) => (
                vec![
                    python,
                    "-I".into(),
                    "-S".into(),
                    "-c".into(),
                    start_program(inside::RUNTIME, RUNTIME_FILE),
                    "--fd".into(),
                    fd,
                    "--code".into(),
                    inside::HANDLER.into(),
                    "--name".into(),
                    spec.lambda.clone(),
                    "--packages".into(),
                    package_paths(&spec.packages).join(":"),
                ],
                spec.env.clone(),
            ),
            Program::Zygote => {
                let mut argv = vec![
                    python,
                    "-I".into(),
                    "-S".into(),
                    "-c".into(),
                    start_program(inside::RUNTIME, ZYGOTE_FILE),
                    "--fd".into(),
                    fd,
                    "--jail".into(),
                    in_runtime_dir(crate::runtime::JAIL_FILE),
                ];
                if self.cfg.seccomp {
                    // The filter its children's lambdas get.
                    argv.extend([
                        "--seccomp".into(),
                        in_runtime_dir(Profile::Lambda.file_name()),
                    ]);
                }
                (argv, Vec::new())
            }
        };
        let mut env = base_env();
        env.extend(extra_env);
        let cwd = match what {
            Program::Lambda(_) => inside::HANDLER,
            Program::Zygote => "/",
        };
        let zygote = matches!(what, Program::Zygote);
        InitSpec {
            zygote,
            runtime_fd: true,
            seccomp: self.seccomp_file(if zygote {
                Profile::Zygote
            } else {
                Profile::Lambda
            }),
            ..self.sandbox_init(cgroup, plan, argv, env, cwd)
        }
    }

    /// The compiled filter of `profile`, when seccomp is on.
    fn seccomp_file(&self, profile: Profile) -> Option<PathBuf> {
        self.cfg
            .seccomp
            .then(|| self.cfg.runtime_dir.join(profile.file_name()))
    }

    /// What every sandbox init gets: `cgroup`, `plan`, the lambda seccomp
    /// filter (when on), the program; no zygote privileges, no runtime
    /// socket and no host network unless the caller says otherwise.
    pub(super) fn sandbox_init(
        &self,
        cgroup: &Cgroup,
        plan: MountPlan,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: &str,
    ) -> InitSpec {
        InitSpec {
            cgroup_procs: cgroup.join_files(),
            plan,
            hostname: ol_jail::child::HOSTNAME.into(),
            seccomp: self.seccomp_file(Profile::Lambda),
            argv,
            env,
            cwd: cwd.into(),
            zygote: false,
            runtime_fd: false,
            share_network: false,
        }
    }

    /// The command that starts the sandbox init with `init` (as JSON), with
    /// nothing of the worker's environment.
    pub(super) fn init_command(&self, init: &InitSpec) -> Result<Command, SandboxError> {
        let json = serde_json::to_string(init)
            .map_err(|e| SandboxError::StartFailed(format!("cannot encode init spec: {e}")))?;
        let mut cmd = Command::new(&self.cfg.init_exe);
        cmd.arg(INIT_ARG).arg(json).env_clear();
        Ok(cmd)
    }

    /// Starts a sandbox through the sandbox init (a fresh interpreter).
    pub(super) fn spawn(
        &self,
        what: &Program<'_>,
        id: &str,
        cgroup: &Cgroup,
        limits: &Limits,
    ) -> Result<(SockSandbox, UnixStream), SandboxError> {
        let scratch = Scratch::create(&self.cfg.scratch_root, id)?;
        self.spawn_in(what, id, cgroup, limits, &scratch)
            .inspect_err(|_| scratch.remove())
    }

    /// [`Self::spawn`] with its scratch dir made (removed by the caller
    /// when this fails).
    fn spawn_in(
        &self,
        what: &Program<'_>,
        id: &str,
        cgroup: &Cgroup,
        limits: &Limits,
        scratch: &Scratch,
    ) -> Result<(SockSandbox, UnixStream), SandboxError> {
        let (ours, theirs) =
            UnixStream::pair().map_err(io_err("cannot create socket pair for", &scratch.path()))?;
        // A lambda's cold start, not the zygote's own start.
        let cgroup_phase = matches!(what, Program::Lambda(_)).then(|| Phase::SockCgroup.enter());
        cgroup.create().map_err(cgroup_err)?;
        cgroup
            .set_limits(&cgroup_limits(limits))
            .map_err(cgroup_err)?;
        drop(cgroup_phase);
        let mut cmd = self.init_command(&self.init_spec(what, cgroup, limits))?;
        let LogPipes {
            stdout,
            stderr,
            drained,
            tag,
        } = scratch.log_pipes(limits.log_kb)?;
        if let Program::Lambda(spec) = what {
            tag.route(spec.log_sink(id));
        }
        let child = spawn_with_runtime_fd(&mut cmd, stdout, stderr, theirs)?;
        let pid = child.id();
        let sandbox = SockSandbox {
            id: id.to_string(),
            pid,
            child,
            drained,
            log_tag: tag,
            enclosure: Enclosure {
                cgroup: cgroup.clone(),
                scratch: scratch.clone(),
                downsize: self.downsize(limits),
                oom_baseline: 0,
                recycle: None,
            },
            destroyed: false,
        };
        scratch.record_pid(pid)?;
        Ok((sandbox, ours))
    }
}

/// One `sock` sandbox started fresh: the init process outside the
/// namespaces (our child) and its enclosure.
#[derive(Debug)]
pub(super) struct SockSandbox {
    id: String,
    pid: u32,
    child: Child,
    /// When its logs are all written out.
    drained: Drained,
    /// Routes a lambda's output to its lambda's log.
    log_tag: crate::lambda_logs::LogTag,
    enclosure: Enclosure,
    destroyed: bool,
}

impl Sandbox for SockSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn log_tag(&self) -> Option<&crate::lambda_logs::LogTag> {
        Some(&self.log_tag)
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    fn pause(&self) -> Result<(), SandboxError> {
        self.enclosure.pause()
    }

    fn unpause(&self) -> Result<(), SandboxError> {
        self.enclosure.unpause()
    }

    fn destroy(&mut self) -> Result<(), SandboxError> {
        if self.destroyed {
            return Ok(());
        }
        self.destroyed = true;
        let _ = self.child.kill();
        let removed = self.enclosure.tear_down();
        let _ = self.child.wait();
        removed
    }

    fn mem_usage(&self) -> Result<u64, SandboxError> {
        self.enclosure.mem_usage()
    }

    fn exit_reason(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok().flatten()?;
        if status.code() == Some(INIT_FAILED) {
            self.drained.wait(Duration::from_millis(200));
            let stderr = fs::read_to_string(self.enclosure.scratch.path().join("stderr"))
                .unwrap_or_default();
            let last = stderr
                .lines()
                .rev()
                .find(|l| l.starts_with("ol sandbox init:"));
            return Some(format!(
                "failed to start: {}",
                last.unwrap_or("see the sandbox's stderr")
            ));
        }
        Some(describe_exit(status))
    }

    fn cgroup(&self) -> Option<String> {
        self.enclosure.cgroup_name()
    }

    fn oom_killed(&self) -> bool {
        self.enclosure.oom_killed()
    }
}

impl Drop for SockSandbox {
    fn drop(&mut self) {
        let _ = self.destroy();
    }
}
