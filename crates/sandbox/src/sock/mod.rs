//! The `sock` backend (DESIGN.md §3.2–3.7, §3.13): each lambda runs in new
//! mount, pid, ipc, uts, network and cgroup namespaces, pivot_root'ed into
//! a root of read-only binds with size-bounded tmpfs scratch (`/host`,
//! `/tmp`), in a session of its own, as an unprivileged user with no
//! capabilities, under no_new_privs and a seccomp allow-list, inside its
//! own cgroup with memory, pids and cpu limits; its stdout and stderr are
//! pipes the worker drains into capped logs ([`crate::logs`]).
//!
//! Sandboxes are forked from zygotes ([`zygote`]): the root zygote has the
//! runtime imported, and the import cache adds child zygotes with packages
//! imported, started on first use. When no zygote works, a sandbox starts a
//! fresh interpreter through the sandbox init ([`init`]). Both enter their
//! sandboxes through the same jail (crates/jail). Everything a worker
//! creates is named under its worker id (`ol-<hash of the worker dir>`):
//! cgroups `ol-<id>/<sandbox>` and scratch dirs, so [`cleanup`] finds and
//! removes it after any crash. Mounts live only in the sandboxes' own
//! mount namespaces and die with them.

pub mod cgroup;
mod cgroup_pool;
pub mod debootstrap;
pub mod init;
pub mod rootfs;
pub mod seccomp;
mod zygote;

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ol_obs::{Phase, counters};

use self::cgroup::{Cgroup, CgroupError, CgroupFs, CgroupLimits, Hierarchy, RealFs};
use self::cgroup_pool::CgroupPool;
use self::init::{INIT_ARG, INIT_FAILED, InitSpec};
use self::rootfs::{BaseKind, CommandSources, MountPlan, RootSources, inside};
use self::seccomp::Profile;
use self::zygote::{Assignment, Blank, ChildZygote, ForkedSandbox, Zygote};
use crate::logs::{self, Drained, LogPipes};
use crate::process::{
    RUNTIME_FD, cleanup_scratch, describe_exit, finish_command, pid_record, spawn_with_runtime_fd,
};
use crate::{
    CommandOutput, CommandSpec, Limits, NewSandbox, Sandbox, SandboxError, SandboxPool,
    SandboxSpec, ZygoteNode, io_err,
};

/// Where a `sock` pool finds what it builds sandboxes from.
#[derive(Debug, Clone)]
pub struct SockConfig {
    /// Worker id (`ol-<hash>`), the name of its parent cgroup.
    pub worker_id: String,
    /// The base root file system (`DIR/base`).
    pub base: PathBuf,
    /// What the base is made of: a host base gets the host's system
    /// directories and Python bound in, a self-contained one does not.
    pub base_kind: BaseKind,
    /// Installed packages (`DIR/packages`).
    pub packages: PathBuf,
    /// Directory holding `ol_runtime.py`.
    pub runtime_dir: PathBuf,
    /// Per-sandbox scratch dirs.
    pub scratch_root: PathBuf,
    /// The real Python interpreter.
    pub python: PathBuf,
    /// Its installation prefix, bound read-only into sandboxes over a host
    /// base.
    pub python_prefix: PathBuf,
    /// The `ol` binary, run as the sandbox init.
    pub init_exe: PathBuf,
    /// Apply the seccomp filters (lambda and zygote profiles).
    pub seccomp: bool,
    /// Fork sandboxes from a zygote (else each starts a fresh interpreter).
    pub zygote: bool,
    /// Lower a paused sandbox's memory limit to what it uses.
    pub downsize_paused_mem: bool,
    /// Keep dead sandboxes' cgroups for new ones (`features.reuse_cgroups`).
    pub reuse_cgroups: bool,
    /// The limits blanks are made with: the worker's default lambda
    /// limits, so most assignments need no cgroup write.
    pub blank_limits: Limits,
}

/// The worker id of the worker directory `dir`: stable across restarts, so
/// a new worker (or `force-cleanup`) finds what an old one left.
pub fn worker_id(dir: &Path) -> String {
    // FNV-1a: tiny, stable, and enough to keep two worker dirs apart.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("ol-{:08x}", h as u32)
}

/// Blank sandboxes kept ready by the root zygote (see [`zygote::Blank`]).
const BLANKS: usize = 2;
/// Blank sandboxes kept ready by each import-cache zygote.
const NODE_BLANKS: usize = 1;
/// Most import-cache zygotes alive at once; beyond it the least recently
/// used one without live children goes.
const MAX_ZYGOTES: usize = 32;
/// How long a zygote that failed to start is not tried again.
const ZYGOTE_RETRY: Duration = Duration::from_secs(60);
/// The root zygote's key.
const ROOT: &str = "";
/// Most emptied cgroups kept for reuse.
const REUSED_CGROUPS: usize = 64;

/// Makes `sock` sandboxes. A background thread keeps [`BLANKS`] blank
/// sandboxes forked from the zygote ready, so a cold start only hands one
/// its lambda.
#[derive(Debug)]
pub struct SockPool {
    inner: Arc<PoolInner>,
    refill: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct PoolInner {
    cfg: SockConfig,
    fs: Arc<dyn CgroupFs>,
    hierarchy: Arc<Hierarchy>,
    /// Live zygotes by key ([`ROOT`] and import-cache nodes).
    zygotes: Mutex<HashMap<String, Arc<Zygote>>>,
    /// Zygotes that failed to start, and when.
    failed: Mutex<HashMap<String, Instant>>,
    /// Held while a zygote starts, so one key never starts twice.
    starting: Mutex<()>,
    /// Ready blanks by the key of the zygote that forked them.
    blanks: Mutex<HashMap<String, VecDeque<Blank>>>,
    /// Emptied cgroups for new blanks (when reused).
    cgroups: Arc<CgroupPool>,
    /// Wakes the refill thread (a blank was taken, or the pool closes).
    wake: Condvar,
    closing: AtomicBool,
    next_id: AtomicU64,
}

fn cgroup_err(e: CgroupError) -> SandboxError {
    SandboxError::Cgroup(e.to_string())
}

/// The host's cgroup hierarchy, from /proc/self/mountinfo.
pub fn host_hierarchy() -> Result<Hierarchy, SandboxError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("cannot read", Path::new("/proc/self/mountinfo")))?;
    Hierarchy::detect(&mountinfo).map_err(cgroup_err)
}

impl SockPool {
    /// A pool for the worker described by `cfg`: checks root, finds the
    /// cgroup hierarchy, creates the worker's parent cgroup and compiles
    /// the seccomp filter once.
    pub fn new(cfg: SockConfig) -> Result<Self, SandboxError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(SandboxError::StartFailed(
                "the sock sandbox needs root; run the worker as root or set \"sandbox\": \"process\"".into(),
            ));
        }
        let hierarchy = Arc::new(host_hierarchy()?);
        let fs: Arc<dyn CgroupFs> = Arc::new(RealFs);
        let parent = Cgroup::new(Arc::clone(&fs), Arc::clone(&hierarchy), &cfg.worker_id);
        parent.create().map_err(cgroup_err)?;
        parent.enable_v2_controllers().map_err(cgroup_err)?;
        fs::create_dir_all(&cfg.scratch_root)
            .map_err(io_err("cannot create", &cfg.scratch_root))?;
        if cfg.seccomp {
            // Compiled once per worker; sandboxes only install them.
            for profile in [Profile::Lambda, Profile::Zygote] {
                let prog = seccomp::compile(profile)
                    .map_err(|e| SandboxError::StartFailed(e.to_string()))?;
                crate::runtime::install_file(
                    &cfg.runtime_dir,
                    profile.file_name(),
                    &seccomp::to_bytes(&prog),
                )?;
            }
        }
        tracing::info!(
            cgroups = hierarchy.version(),
            seccomp = cfg.seccomp,
            worker_id = %cfg.worker_id,
            "sock sandboxes"
        );
        let reused = if cfg.reuse_cgroups { REUSED_CGROUPS } else { 0 };
        let inner = Arc::new(PoolInner {
            cfg,
            fs,
            hierarchy,
            zygotes: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            starting: Mutex::new(()),
            blanks: Mutex::new(HashMap::new()),
            cgroups: Arc::new(CgroupPool::new(reused)),
            wake: Condvar::new(),
            closing: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        });
        // Start the zygote now, so the first call does not wait for it.
        let refill = if inner.zygote(&[]).is_some() {
            let inner = Arc::clone(&inner);
            Some(
                std::thread::Builder::new()
                    .name("ol-blanks".into())
                    .spawn(move || inner.keep_blanks_ready())
                    .map_err(|e| {
                        SandboxError::StartFailed(format!("cannot start a thread: {e}"))
                    })?,
            )
        } else {
            None
        };
        Ok(Self { inner, refill })
    }

    /// Blank sandboxes ready now.
    pub fn blanks(&self) -> usize {
        self.inner.lock_blanks().values().map(VecDeque::len).sum()
    }
}

impl Drop for SockPool {
    fn drop(&mut self) {
        self.inner.closing.store(true, Ordering::Release);
        self.inner.wake.notify_all();
        if let Some(t) = self.refill.take() {
            let _ = t.join();
        }
        for (_, blanks) in self.inner.lock_blanks().drain() {
            blanks.into_iter().for_each(Blank::discard);
        }
        for cg in self.inner.cgroups.drain() {
            let _ = discard_cgroup(&cg);
        }
        // Children first: a child zygote lives in its parent's namespaces.
        let mut zygotes: Vec<(String, Arc<Zygote>)> = self.inner.lock_zygotes().drain().collect();
        zygotes.sort_by_key(|(key, _)| std::cmp::Reverse(key.len()));
        drop(zygotes);
    }
}

impl PoolInner {
    fn lock_blanks(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Blank>>> {
        self.blanks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_zygotes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Zygote>>> {
        self.zygotes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A live zygote short of ready blanks, if any: the root wants
    /// [`BLANKS`], each import-cache zygote [`NODE_BLANKS`].
    fn short_of_blanks(&self) -> Option<(String, Arc<Zygote>)> {
        let zygotes = self.lock_zygotes();
        let blanks = self.lock_blanks();
        zygotes
            .iter()
            .filter(|(_, z)| z.is_alive())
            .find(|(key, _)| {
                let want = if key.as_str() == ROOT {
                    BLANKS
                } else {
                    NODE_BLANKS
                };
                blanks.get(key.as_str()).map_or(0, VecDeque::len) < want
            })
            .map(|(key, z)| (key.clone(), Arc::clone(z)))
    }

    /// The refill thread: forks blanks until every zygote has its share
    /// ready, sleeps until one is taken, until the pool closes.
    fn keep_blanks_ready(&self) {
        loop {
            if self.closing.load(Ordering::Acquire) {
                return;
            }
            let Some((key, zygote)) = self.short_of_blanks() else {
                let blanks = self.lock_blanks();
                if !self.closing.load(Ordering::Acquire) {
                    let _ = self.wake.wait_timeout(blanks, Duration::from_secs(1));
                }
                continue;
            };
            match self.prefork(&zygote, true) {
                Ok(blank) => {
                    // The zygote may have been evicted meanwhile.
                    if self
                        .lock_zygotes()
                        .get(&key)
                        .is_some_and(|z| Arc::ptr_eq(z, &zygote))
                    {
                        self.lock_blanks().entry(key).or_default().push_back(blank);
                    } else {
                        blank.discard();
                    }
                }
                Err(e) => {
                    tracing::warn!("cannot fork a blank sandbox: {e}");
                    // Back off before trying again; wake early on close.
                    let blanks = self.lock_blanks();
                    let _ = self.wake.wait_timeout(blanks, Duration::from_secs(1));
                }
            }
        }
    }

    /// Forks one blank sandbox into a reused or new cgroup.
    fn prefork(&self, zygote: &Zygote, warm: bool) -> Result<Blank, SandboxError> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("sb-{n}");
        let (cgroup, oom_baseline) = match self.cgroups.take() {
            Some(reused) => (reused.cgroup, reused.oom_baseline),
            None => {
                let cgroup = self.cgroup(&id);
                cgroup.create().map_err(cgroup_err)?;
                (cgroup, 0)
            }
        };
        let limits = cgroup_limits(&self.cfg.blank_limits);
        let made = cgroup
            .set_limits(&limits)
            .map_err(cgroup_err)
            .and_then(|()| {
                zygote.prefork(&id, cgroup.clone(), self.cfg.blank_limits.disk_mb, warm)
            });
        match made {
            Ok(mut blank) => {
                blank.oom_baseline = oom_baseline;
                blank.recycle = self.cgroups.enabled().then(|| Arc::clone(&self.cgroups));
                blank.limits = Some(limits);
                // Its scratch dir and logs, ready to be renamed after its
                // sandbox.
                blank.scratch = Scratch::create(&self.cfg.scratch_root, &id)
                    .and_then(|s| {
                        s.log_pipes(self.cfg.blank_limits.log_kb)
                            .map(|logs| (s.dir, logs))
                    })
                    .ok();
                Ok(blank)
            }
            Err(e) => {
                let _ = discard_cgroup(&cgroup);
                Err(e)
            }
        }
    }

    /// A ready blank of zygote `key`, or a new one forked now.
    fn take_blank(&self, key: &str, zygote: &Zygote) -> Result<Blank, SandboxError> {
        let _phase = Phase::SockBlank.enter();
        let taken = self
            .lock_blanks()
            .get_mut(key)
            .and_then(VecDeque::pop_front);
        self.wake.notify_all();
        match taken {
            Some(blank) => {
                counters::BLANK_HITS.inc();
                Ok(blank)
            }
            None => {
                counters::BLANK_MISSES.inc();
                self.prefork(zygote, false)
            }
        }
    }

    /// The memory limit to restore after a downsized pause, when
    /// `downsize_paused_mem` is on.
    fn downsize(&self, limits: &Limits) -> Option<u64> {
        self.cfg
            .downsize_paused_mem
            .then(|| cgroup_limits(limits).mem_bytes)
    }

    /// A new sandbox for `spec`: a blank of the deepest working zygote of
    /// its chain handed the lambda, else a fresh interpreter.
    fn create(&self, spec: &SandboxSpec) -> Result<NewSandbox, SandboxError> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", spec.lambda);
        // A blank can fail (its zygote died, it was killed): one more try.
        for _ in 0..2 {
            let Some((key, zygote)) = Phase::ZygoteLookup.run(|| self.zygote(&spec.zygote)) else {
                break;
            };
            match self.take_blank(&key, &zygote) {
                Ok(blank) => match self.assign(blank, spec, &id, &zygote) {
                    Ok(mut made) => {
                        made.forked_from = Some(key);
                        return Ok(made);
                    }
                    Err(e) => tracing::warn!(sandbox = %id, "blank sandbox failed: {e}"),
                },
                Err(e) => tracing::warn!(sandbox = %id, "cannot fork a blank sandbox: {e}"),
            }
        }
        let cgroup = self.cgroup(&id);
        let _phase = Phase::SockSpawn.enter();
        counters::FRESH_STARTS.inc();
        self.spawn(&Program::Lambda(spec), &id, &cgroup, &spec.limits)
            .map(|(sandbox, conn)| NewSandbox {
                sandbox: Box::new(sandbox),
                conn,
                forked_from: None,
            })
            .inspect_err(|_| {
                let _ = discard_cgroup(&cgroup);
                let _ = fs::remove_dir_all(self.cfg.scratch_root.join(&id));
            })
    }

    /// Turns `blank` into the sandbox `id` of `spec`.
    fn assign(
        &self,
        blank: Blank,
        spec: &SandboxSpec,
        id: &str,
        zygote: &Arc<Zygote>,
    ) -> Result<NewSandbox, SandboxError> {
        let mut blank = blank;
        let made_ahead = blank.scratch.take().and_then(|(dir, logs)| {
            let named = self.cfg.scratch_root.join(id);
            match fs::rename(&dir, &named) {
                Ok(()) => Some((Scratch { dir: named }, logs)),
                Err(_) => {
                    let _ = fs::remove_dir_all(&dir);
                    None
                }
            }
        });
        // Made ahead with the worker's log cap: a lambda's own cap may be
        // lower.
        let (scratch, logs) = match made_ahead {
            Some((scratch, logs)) if spec.limits.log_kb == self.cfg.blank_limits.log_kb => {
                (scratch, Some(logs))
            }
            Some((scratch, _)) => (scratch, None),
            None => match Scratch::create(&self.cfg.scratch_root, id) {
                Ok(s) => (s, None),
                Err(e) => {
                    blank.discard();
                    return Err(e);
                }
            },
        };
        let limits = cgroup_limits(&spec.limits);
        // Blanks have the worker's limits already: most lambdas need no write.
        let set_limits = Phase::SockCgroup
            .run(|| {
                if blank.limits.as_ref() == Some(&limits) {
                    Ok(())
                } else {
                    blank.cgroup.set_limits(&limits)
                }
            })
            .map_err(cgroup_err);
        let logs = set_limits.and_then(|()| match logs {
            Some(logs) => Ok(logs),
            None => scratch.log_pipes(spec.limits.log_kb),
        });
        let handed = match logs {
            Ok(logs) => {
                let _phase = Phase::SockAssign.enter();
                let mut env = base_env();
                env.extend(spec.env.iter().cloned());
                zygote::assign(
                    &blank,
                    Assignment {
                        code_dir: &spec.code_dir,
                        disk_mb: spec.limits.disk_mb,
                        logs,
                        env: &env,
                        packages: &package_paths(&spec.packages),
                    },
                )
            }
            Err(e) => Err(e),
        };
        if let Err(e) = handed {
            blank.discard();
            let _ = fs::remove_dir_all(&scratch.dir);
            return Err(e);
        }
        let Blank {
            cgroup,
            conn,
            exit,
            oom_baseline,
            recycle,
            ..
        } = blank;
        Ok(NewSandbox {
            sandbox: Box::new(ForkedSandbox {
                id: id.to_string(),
                pid: std::sync::OnceLock::new(),
                enclosure: Enclosure {
                    cgroup,
                    scratch: scratch.dir,
                    downsize: self.downsize(&spec.limits),
                    oom_baseline,
                    recycle,
                },
                exit,
                exit_reason: None,
                destroyed: false,
                _zygote: Some(Arc::clone(zygote)),
            }),
            conn,
            forked_from: None,
        })
    }

    fn cgroup(&self, id: &str) -> Cgroup {
        Cgroup::new(
            Arc::clone(&self.fs),
            Arc::clone(&self.hierarchy),
            &format!("{}/{id}", self.cfg.worker_id),
        )
    }

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
                    in_runtime_dir(crate::runtime::RUNTIME_FILE),
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
                    in_runtime_dir(crate::runtime::ZYGOTE_FILE),
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
    fn sandbox_init(
        &self,
        cgroup: &Cgroup,
        plan: MountPlan,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: &str,
    ) -> InitSpec {
        InitSpec {
            cgroup_procs: cgroup.procs_files(),
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

    /// Starts a sandbox through the sandbox init (a fresh interpreter).
    fn spawn(
        &self,
        what: &Program<'_>,
        id: &str,
        cgroup: &Cgroup,
        limits: &Limits,
    ) -> Result<(SockSandbox, UnixStream), SandboxError> {
        let scratch = Scratch::create(&self.cfg.scratch_root, id)?;
        let (ours, theirs) =
            UnixStream::pair().map_err(io_err("cannot create socket pair for", &scratch.dir))?;
        // A lambda's cold start, not the zygote's own start.
        let cgroup_phase = matches!(what, Program::Lambda(_)).then(|| Phase::SockCgroup.enter());
        cgroup.create().map_err(cgroup_err)?;
        cgroup
            .set_limits(&cgroup_limits(limits))
            .map_err(cgroup_err)?;
        drop(cgroup_phase);
        let init = self.init_spec(what, cgroup, limits);
        let init_json = serde_json::to_string(&init)
            .map_err(|e| SandboxError::StartFailed(format!("cannot encode init spec: {e}")))?;
        let LogPipes {
            stdout,
            stderr,
            drained,
        } = scratch.log_pipes(limits.log_kb)?;
        let mut cmd = Command::new(&self.cfg.init_exe);
        cmd.arg(INIT_ARG).arg(init_json).env_clear();
        let child = spawn_with_runtime_fd(&mut cmd, stdout, stderr, theirs)?;
        let pid = child.id();
        let sandbox = SockSandbox {
            id: id.to_string(),
            pid,
            child,
            drained,
            enclosure: Enclosure {
                cgroup: cgroup.clone(),
                scratch: scratch.dir.clone(),
                downsize: self.downsize(limits),
                oom_baseline: 0,
                recycle: None,
            },
            destroyed: false,
        };
        scratch.record_pid(pid)?;
        Ok((sandbox, ours))
    }

    /// The deepest zygote of `chain` (see [`SandboxSpec::zygote`]) that
    /// works, with its key: each missing one is started from its parent;
    /// one that fails leaves its parent as the answer. `None` when
    /// zygotes are off or the root cannot be started (then sandboxes start
    /// fresh interpreters).
    fn zygote(&self, chain: &[ZygoteNode]) -> Option<(String, Arc<Zygote>)> {
        if !self.cfg.zygote {
            return None;
        }
        let mut found = (
            ROOT.to_string(),
            self.live_zygote(ROOT, None, || self.start_root())?,
        );
        for node in chain {
            let parent = Arc::clone(&found.1);
            match self.live_zygote(&node.key, Some(node), || self.start_child(&parent, node)) {
                Some(z) => found = (node.key.clone(), z),
                None => break,
            }
        }
        Some(found)
    }

    /// Zygote `key`, started with `start` if there is none or it died;
    /// `None` when it cannot be started (not tried again for
    /// [`ZYGOTE_RETRY`]).
    fn live_zygote(
        &self,
        key: &str,
        node: Option<&ZygoteNode>,
        start: impl FnOnce() -> Result<Zygote, SandboxError>,
    ) -> Option<Arc<Zygote>> {
        if let Some(z) = self.lock_zygotes().get(key).filter(|z| z.is_alive()) {
            z.touch();
            return Some(Arc::clone(z));
        }
        let _starting = self.starting.lock().unwrap_or_else(PoisonError::into_inner);
        // Another thread may have started it while we waited.
        if let Some(z) = self.lock_zygotes().get(key).filter(|z| z.is_alive()) {
            return Some(Arc::clone(z));
        }
        let failed_at = self
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied();
        if failed_at.is_some_and(|t| t.elapsed() < ZYGOTE_RETRY) {
            return None;
        }
        self.forget_zygote(key);
        if node.is_some() {
            self.evict_zygotes();
        }
        match start() {
            Ok(z) => {
                let z = Arc::new(z);
                self.lock_zygotes().insert(key.to_string(), Arc::clone(&z));
                self.wake.notify_all();
                Some(z)
            }
            Err(e) => {
                let what = node.map_or_else(
                    || "the root zygote".to_string(),
                    |n| format!("zygote {}", n.key),
                );
                tracing::warn!("cannot start {what}: {e}");
                self.failed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key.to_string(), Instant::now());
                None
            }
        }
    }

    /// Drops zygote `key` and its blanks.
    fn forget_zygote(&self, key: &str) {
        let gone = self.lock_zygotes().remove(key);
        if let Some(blanks) = self.lock_blanks().remove(key) {
            blanks.into_iter().for_each(Blank::discard);
        }
        drop(gone);
    }

    /// Keeps the import cache under [`MAX_ZYGOTES`]: drops the least
    /// recently used zygotes that no live sandbox was forked from.
    fn evict_zygotes(&self) {
        loop {
            let victim = {
                let zygotes = self.lock_zygotes();
                if zygotes.len() <= MAX_ZYGOTES {
                    return;
                }
                zygotes
                    .iter()
                    .filter(|(key, z)| key.as_str() != ROOT && Arc::strong_count(z) == 1)
                    .min_by_key(|(_, z)| z.last_used())
                    .map(|(key, _)| key.clone())
            };
            match victim {
                Some(key) => {
                    tracing::info!(zygote = %key, "evicting an idle zygote");
                    self.forget_zygote(&key);
                }
                None => return,
            }
        }
    }

    /// Starts the root zygote: the runtime, fresh, in a privileged sandbox.
    fn start_root(&self) -> Result<Zygote, SandboxError> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("zygote-{n}");
        let cgroup = self.cgroup(&id);
        self.spawn(&Program::Zygote, &id, &cgroup, &zygote_limits())
            .and_then(|(sandbox, conn)| Zygote::start(Box::new(sandbox), conn))
            .inspect_err(|_| {
                let _ = discard_cgroup(&cgroup);
            })
    }

    /// Starts the import-cache zygote `node`, forked from `parent`.
    fn start_child(&self, parent: &Zygote, node: &ZygoteNode) -> Result<Zygote, SandboxError> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("zygote-{n}");
        let cgroup = self.cgroup(&id);
        let scratch = Scratch::create(&self.cfg.scratch_root, &id)?;
        let limits = zygote_limits();
        let started = cgroup
            .create()
            .and_then(|()| cgroup.set_limits(&cgroup_limits(&limits)))
            .map_err(cgroup_err)
            .and_then(|()| scratch.log_pipes(limits.log_kb))
            .and_then(|logs| {
                let began = Instant::now();
                let z = parent.fork_zygote(ChildZygote {
                    id: &id,
                    enclosure: Enclosure {
                        cgroup: cgroup.clone(),
                        scratch: scratch.dir.clone(),
                        downsize: None,
                        oom_baseline: 0,
                        recycle: None,
                    },
                    logs,
                    disk_mb: limits.disk_mb,
                    packages: &package_paths(&node.packages),
                    imports: &node.imports,
                })?;
                tracing::info!(
                    zygote = %node.key,
                    imports = ?node.imports,
                    ms = began.elapsed().as_millis() as u64,
                    "import-cache zygote ready"
                );
                Ok(z)
            });
        started.inspect_err(|_| {
            let _ = discard_cgroup(&cgroup);
            let _ = fs::remove_dir_all(&scratch.dir);
        })
    }

    /// Runs `cmd` through the sandbox init: its own cgroup with the
    /// command's limits, namespaces (the host's network if asked), a root
    /// of the system dirs plus the command's dirs, as the sandbox user.
    fn run_command(&self, cmd: &CommandSpec) -> Result<CommandOutput, SandboxError> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", cmd.name);
        let cgroup = self.cgroup(&id);
        let scratch = Scratch::create(&self.cfg.scratch_root, &id)?;
        let ran = self.run_in(cmd, &cgroup, &scratch);
        let _ = discard_cgroup(&cgroup);
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
        let init = InitSpec {
            share_network: cmd.network,
            ..self.sandbox_init(cgroup, plan, cmd.argv.clone(), cmd.env.clone(), inside::TMP)
        };
        let init_json = serde_json::to_string(&init)
            .map_err(|e| SandboxError::StartFailed(format!("cannot encode init spec: {e}")))?;
        let LogPipes {
            stdout,
            stderr,
            drained,
        } = scratch.log_pipes(cmd.limits.log_kb)?;
        let mut child = Command::new(&self.cfg.init_exe)
            .arg(INIT_ARG)
            .arg(init_json)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|source| SandboxError::Spawn {
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

    /// Keys of the live import-cache zygotes.
    fn zygote_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .lock_zygotes()
            .iter()
            .filter(|(key, z)| key.as_str() != ROOT && z.is_alive())
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort();
        keys
    }
}

/// Package dirs as a sandbox sees them (under [`inside::PACKAGES`]).
fn package_paths(packages: &[String]) -> Vec<String> {
    packages
        .iter()
        .map(|p| format!("{}/{p}", inside::PACKAGES))
        .collect()
}

/// What a sandbox init runs.
enum Program<'a> {
    /// The runtime serving one lambda.
    Lambda(&'a SandboxSpec),
    /// A zygote forking lambda sandboxes.
    Zygote,
}

/// Limits of a zygote's own cgroup: its forked children pass through it
/// for a moment before they join theirs, so it needs room for several.
fn zygote_limits() -> Limits {
    Limits {
        procs: 64,
        mem_mb: 1024,
        ..Limits::default()
    }
}

/// The environment every runtime starts with.
fn base_env() -> Vec<(String, String)> {
    vec![
        (
            "PATH".to_string(),
            "/usr/local/bin:/usr/bin:/bin".to_string(),
        ),
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("HOME".to_string(), inside::TMP.to_string()),
        ("TMPDIR".to_string(), inside::TMP.to_string()),
    ]
}

/// A sandbox's scratch dir on the host: its logs (`stdout`, `stderr`) and
/// `pid`. Nothing in it is visible to the sandbox, which writes only to
/// its log pipes and its tmpfs scratch.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn create(root: &Path, id: &str) -> Result<Self, SandboxError> {
        let dir = root.join(id);
        fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
        Ok(Self { dir })
    }

    fn log_pipes(&self, cap_kb: u64) -> Result<LogPipes, SandboxError> {
        logs::pipes(&self.dir, cap_kb)
    }

    fn record_pid(&self, pid: u32) -> Result<(), SandboxError> {
        let path = self.dir.join("pid");
        fs::write(&path, pid_record(pid)).map_err(io_err("cannot write", &path))
    }
}

fn cgroup_limits(l: &Limits) -> CgroupLimits {
    CgroupLimits {
        mem_bytes: l.mem_mb.saturating_mul(1 << 20),
        pids: l.procs,
        cpu_percent: l.cpu_percent,
        swappiness: l.swappiness,
    }
}

impl SandboxPool for SockPool {
    fn kind(&self) -> &'static str {
        "sock"
    }

    fn create(&self, spec: &SandboxSpec) -> Result<NewSandbox, SandboxError> {
        self.inner.create(spec)
    }

    fn cleanup_leftovers(&self) -> Result<usize, SandboxError> {
        cleanup(
            &self.inner.cfg.worker_id,
            &self.inner.cfg.scratch_root,
            false,
        )
    }

    fn run_command(&self, cmd: &CommandSpec) -> Result<CommandOutput, SandboxError> {
        self.inner.run_command(cmd)
    }

    fn zygotes(&self) -> Vec<String> {
        self.inner.zygote_keys()
    }
}

/// Kills and removes everything worker `worker_id` left: the processes of
/// every cgroup under `ol-<id>/`, those cgroups (and the parent itself when
/// `remove_parent`), and the scratch dirs. Returns how many sandboxes were
/// found. Safe to run with no worker alive.
pub fn cleanup(
    worker_id: &str,
    scratch_root: &Path,
    remove_parent: bool,
) -> Result<usize, SandboxError> {
    let mut found = cleanup_scratch(scratch_root)?;
    let Ok(hierarchy) = host_hierarchy() else {
        return Ok(found);
    };
    let hierarchy = Arc::new(hierarchy);
    let fs: Arc<dyn CgroupFs> = Arc::new(RealFs);
    let parent = Cgroup::new(Arc::clone(&fs), Arc::clone(&hierarchy), worker_id);
    let mut names = parent.children();
    // v1: each controller has its own tree; leftovers may differ per tree.
    for dir in parent.dirs().iter().skip(1) {
        if let Ok(more) = fs.children(dir) {
            names.extend(more);
        }
    }
    names.sort();
    names.dedup();
    for name in &names {
        let cg = Cgroup::new(
            Arc::clone(&fs),
            Arc::clone(&hierarchy),
            &format!("{worker_id}/{name}"),
        );
        discard_cgroup(&cg).map_err(cgroup_err)?;
    }
    found = found.max(names.len());
    if remove_parent {
        remove_cgroup(&parent).map_err(cgroup_err)?;
    }
    Ok(found)
}

/// Freezes a sandbox's cgroup; with `downsize` (its normal memory limit),
/// then lowers the limit to what it uses, so a paused sandbox cannot grow
/// (OpenLambda's `downsize_paused_mem`). The kernel may refuse a limit at
/// the usage (it tries to reclaim first); then the limit stays.
fn pause_cgroup(cg: &Cgroup, downsize: Option<u64>) -> Result<(), SandboxError> {
    cg.freeze().map_err(cgroup_err)?;
    if downsize.is_some() {
        if let Ok(used) = cg.mem_usage() {
            let _ = cg.set_mem_limit(used.next_multiple_of(4096));
        }
    }
    Ok(())
}

/// Restores the normal memory limit (if downsized), then thaws.
fn unpause_cgroup(cg: &Cgroup, downsize: Option<u64>) -> Result<(), SandboxError> {
    if let Some(limit) = downsize {
        cg.set_mem_limit(limit).map_err(cgroup_err)?;
    }
    cg.thaw().map_err(cgroup_err)
}

fn kill_pid(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// Frees a dead sandbox's cgroup: back to `recycle` for reuse, if given,
/// else killed and removed.
fn release_cgroup(cg: &Cgroup, recycle: Option<&CgroupPool>) -> Result<(), CgroupError> {
    match recycle {
        Some(pool) => pool.recycle(cg.clone(), &kill_pid),
        None => discard_cgroup(cg),
    }
}

/// Kills every process of a cgroup and removes it.
fn discard_cgroup(cg: &Cgroup) -> Result<(), CgroupError> {
    let _ = cg.kill_all(&kill_pid);
    remove_cgroup(cg)
}

/// Removes a cgroup whose processes were just killed: rmdir fails with
/// EBUSY until the kernel has finished tearing them down, so retry briefly.
fn remove_cgroup(cg: &Cgroup) -> Result<(), CgroupError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match cg.remove() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {
                let _ = cg.kill_all(&kill_pid);
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// What a `sock` sandbox holds on the host: its cgroup and scratch dir.
/// Every way of starting one (fresh init, zygote) shares this.
#[derive(Debug)]
pub(crate) struct Enclosure {
    pub(crate) cgroup: Cgroup,
    pub(crate) scratch: PathBuf,
    /// Normal memory limit, when paused sandboxes are downsized.
    pub(crate) downsize: Option<u64>,
    /// OOM kills its cgroup counted before this sandbox (a reused cgroup).
    pub(crate) oom_baseline: u64,
    /// Where its cgroup goes for reuse when it dies (else it is removed).
    pub(crate) recycle: Option<Arc<CgroupPool>>,
}

impl Enclosure {
    pub(crate) fn pause(&self) -> Result<(), SandboxError> {
        pause_cgroup(&self.cgroup, self.downsize)
    }

    pub(crate) fn unpause(&self) -> Result<(), SandboxError> {
        unpause_cgroup(&self.cgroup, self.downsize)
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

    /// Kills every process of the sandbox and removes its cgroup and its
    /// scratch dir.
    pub(crate) fn tear_down(&self) -> Result<(), SandboxError> {
        let removed = release_cgroup(&self.cgroup, self.recycle.as_deref()).map_err(cgroup_err);
        let _ = fs::remove_dir_all(&self.scratch);
        removed
    }
}

/// One `sock` sandbox started fresh: the init process outside the
/// namespaces (our child) and its enclosure.
#[derive(Debug)]
struct SockSandbox {
    id: String,
    pid: u32,
    child: Child,
    /// When its logs are all written out.
    drained: Drained,
    enclosure: Enclosure,
    destroyed: bool,
}

impl Sandbox for SockSandbox {
    fn id(&self) -> &str {
        &self.id
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
            let stderr =
                fs::read_to_string(self.enclosure.scratch.join("stderr")).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_id_is_stable_and_distinct() {
        let a = worker_id(Path::new("/srv/ol-a"));
        assert_eq!(a, worker_id(Path::new("/srv/ol-a")));
        assert_ne!(a, worker_id(Path::new("/srv/ol-b")));
        assert!(a.starts_with("ol-") && a.len() == 11, "{a}");
    }

    #[test]
    fn limits_map_to_cgroup_units() {
        let l = cgroup_limits(&Limits {
            mem_mb: 50,
            procs: 10,
            cpu_percent: 100,
            swappiness: 0,
            ..Limits::default()
        });
        assert_eq!(l.mem_bytes, 50 << 20);
        assert_eq!((l.pids, l.cpu_percent, l.swappiness), (10, 100, 0));
    }
}
