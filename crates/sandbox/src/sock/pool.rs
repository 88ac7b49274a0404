//! [`SockPool`]: what a `sock` worker's sandboxes are made from, the state
//! every job of the backend shares ([`PoolInner`]), and how a new sandbox
//! is made: a blank forked from the deepest working zygote of its chain
//! and handed its lambda (`blanks.rs`, `zygote_cache.rs`), else a fresh
//! interpreter through the sandbox init (`fresh.rs`).

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use ol_obs::{Phase, counters};

use super::blanks::ZygoteBlanks;
use super::cgroup::pool::CgroupPool;
use super::cgroup::{Cgroup, Cgroups};
use super::fresh::Program;
use super::rootfs::BaseKind;
use super::seccomp::{self, Profile};
use super::zygote::{Blank, Zygote};
use super::zygote_cache::ROOT;
use super::{cgroup_err, cgroup_limits, host_cgroups, kill_pid};
use crate::{
    CommandOutput, CommandSpec, Limits, NewSandbox, SandboxError, SandboxPool, SandboxSpec, io_err,
};

/// Where a `sock` pool finds what it builds sandboxes from.
#[derive(Debug, Clone)]
pub(crate) struct SockConfig {
    /// Worker id (`ol-<hash>`), the name of its parent cgroup.
    pub(crate) worker_id: String,
    /// The base root file system (`DIR/base`).
    pub(crate) base: PathBuf,
    /// What the base is made of: a host base gets the host's system
    /// directories and Python bound in, a self-contained one does not.
    pub(crate) base_kind: BaseKind,
    /// Installed packages (`DIR/packages`).
    pub(crate) packages: PathBuf,
    /// Directory holding `ol_runtime.py`.
    pub(crate) runtime_dir: PathBuf,
    /// Per-sandbox scratch dirs.
    pub(crate) scratch_root: PathBuf,
    /// The real Python interpreter.
    pub(crate) python: PathBuf,
    /// Its installation prefix, bound read-only into sandboxes over a host
    /// base.
    pub(crate) python_prefix: PathBuf,
    /// The `ol` binary, run as the sandbox init.
    pub(crate) init_exe: PathBuf,
    /// Apply the seccomp filters (lambda and zygote profiles).
    pub(crate) seccomp: bool,
    /// Fork sandboxes from a zygote (else each starts a fresh interpreter).
    pub(crate) zygote: bool,
    /// Lower a paused sandbox's memory limit to what it uses.
    pub(crate) downsize_paused_mem: bool,
    /// Keep dead sandboxes' cgroups for new ones (`features.reuse_cgroups`).
    pub(crate) reuse_cgroups: bool,
    /// The limits blanks are made with: the worker's default lambda
    /// limits, so most assignments need no cgroup write.
    pub(crate) blank_limits: Limits,
    /// Blank sandboxes the root zygote keeps ready (`scaling.blanks`).
    pub(crate) blanks: usize,
}

/// Most emptied cgroups kept for reuse.
const REUSED_CGROUPS: usize = 64;
/// Threads forking blanks ahead. Two keep up with one cold start every
/// ~4 ms on 2 vCPUs, where one forking after the other ran out of blanks
/// in a quarter of the starts (`ol bench cold`): a zygote forks one child
/// at a time, but most of a blank's making (namespaces, its pid 1, the
/// worker's part) runs beside another's.
const REFILL_THREADS: usize = 2;

/// Makes `sock` sandboxes. A background thread keeps blank sandboxes
/// forked from the zygotes ready, so a cold start only hands one its
/// lambda.
#[derive(Debug)]
pub(crate) struct SockPool {
    inner: Arc<PoolInner>,
    refill: Vec<std::thread::JoinHandle<()>>,
}

/// What the jobs of a pool share.
#[derive(Debug)]
pub(super) struct PoolInner {
    pub(super) cfg: SockConfig,
    /// The host's cgroups.
    pub(super) cgroups: Cgroups,
    /// Live zygotes by key (the root's and import-cache nodes').
    pub(super) zygotes: Mutex<HashMap<String, Arc<Zygote>>>,
    /// Zygotes that failed to start, and when.
    pub(super) failed: Mutex<HashMap<String, Instant>>,
    /// Held while a zygote starts, so one key never starts twice.
    pub(super) starting: Mutex<()>,
    /// Blanks, ready and being forked, by the key of their zygote.
    pub(super) blanks: Mutex<HashMap<String, ZygoteBlanks>>,
    /// Emptied cgroups for new blanks (when reused).
    pub(super) reused: Arc<CgroupPool>,
    /// Wakes the refill thread (a blank was taken, or the pool closes).
    pub(super) wake: Condvar,
    pub(super) closing: AtomicBool,
    pub(super) next_id: AtomicU64,
    /// Cold starts that began before the root zygote was ready (the first
    /// calls after `up`, or after the root zygote died), from then until
    /// their blank has its lambda: the refill threads let them go first
    /// ([`PoolInner::keep_blanks_ready`]).
    pub(super) first_calls: AtomicUsize,
}

impl SockPool {
    /// A pool for the worker described by `cfg`: checks root, finds the
    /// cgroup hierarchy, creates the worker's parent cgroup and compiles
    /// the seccomp filter once.
    pub(crate) fn new(cfg: SockConfig) -> Result<Self, SandboxError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(SandboxError::StartFailed(
                "the sock sandbox needs root; run the worker as root or set \"sandbox\": \"process\"".into(),
            ));
        }
        let cgroups = host_cgroups()?;
        let parent = cgroups.cgroup(&cfg.worker_id);
        parent.create().map_err(cgroup_err)?;
        parent.delegate_controllers().map_err(cgroup_err)?;
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
            cgroups = cgroups.version(),
            seccomp = cfg.seccomp,
            worker_id = %cfg.worker_id,
            "sock sandboxes"
        );
        let reused = if cfg.reuse_cgroups { REUSED_CGROUPS } else { 0 };
        let inner = Arc::new(PoolInner {
            cfg,
            cgroups,
            zygotes: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            starting: Mutex::new(()),
            blanks: Mutex::new(HashMap::new()),
            reused: Arc::new(CgroupPool::new(reused)),
            wake: Condvar::new(),
            closing: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            first_calls: AtomicUsize::new(0),
        });
        // The first refill thread starts the root zygote at once, while the
        // worker sets up the rest (~7 ms of its start-up; the zygote's
        // ~25 ms are mostly its own CPU). A call that comes first waits
        // for that start (`PoolInner::zygote` serializes them); the other
        // thread waits to be woken by it.
        let mut refill = Vec::new();
        if inner.cfg.zygote {
            for n in 0..REFILL_THREADS {
                let inner = Arc::clone(&inner);
                refill.push(
                    std::thread::Builder::new()
                        .name("ol-blanks".into())
                        .spawn(move || {
                            if n == 0 {
                                let _ = inner.zygote(&[]);
                            }
                            inner.keep_blanks_ready()
                        })
                        .map_err(|e| {
                            SandboxError::StartFailed(format!("cannot start a thread: {e}"))
                        })?,
                );
            }
        }
        Ok(Self { inner, refill })
    }
}

impl Drop for SockPool {
    fn drop(&mut self) {
        self.inner.closing.store(true, Ordering::Release);
        self.inner.wake.notify_all();
        for t in self.refill.drain(..) {
            let _ = t.join();
        }
        for (_, blanks) in self.inner.lock_blanks().drain() {
            blanks.ready.into_iter().for_each(Blank::discard);
        }
        for cg in self.inner.reused.drain() {
            let _ = cg.discard(&kill_pid);
        }
        // Children first: a child zygote lives in its parent's namespaces.
        let mut zygotes: Vec<(String, Arc<Zygote>)> = self.inner.lock_zygotes().drain().collect();
        zygotes.sort_by_key(|(key, _)| std::cmp::Reverse(key.len()));
        drop(zygotes);
    }
}

impl PoolInner {
    pub(super) fn lock_blanks(&self) -> MutexGuard<'_, HashMap<String, ZygoteBlanks>> {
        self.blanks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn lock_zygotes(&self) -> MutexGuard<'_, HashMap<String, Arc<Zygote>>> {
        self.zygotes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new id for a sandbox, zygote or command: `<prefix>-<n>`.
    pub(super) fn new_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{n}")
    }

    /// The memory limit to restore after a downsized pause, when
    /// `downsize_paused_mem` is on.
    pub(super) fn downsize(&self, limits: &Limits) -> Option<u64> {
        self.cfg
            .downsize_paused_mem
            .then(|| cgroup_limits(limits).mem_bytes)
    }

    /// The cgroup of sandbox (or zygote, or command) `id`.
    pub(super) fn cgroup(&self, id: &str) -> Cgroup {
        self.cgroups.cgroup(&format!("{}/{id}", self.cfg.worker_id))
    }

    /// A new sandbox for `spec`: a blank of the deepest working zygote of
    /// its chain handed the lambda, else a fresh interpreter.
    fn create(&self, spec: &SandboxSpec) -> Result<NewSandbox, SandboxError> {
        let waits_for_root =
            self.cfg.zygote && !self.lock_zygotes().get(ROOT).is_some_and(|z| z.is_alive());
        let _first = waits_for_root.then(|| FirstCall::begin(self));
        let id = self.new_id(&spec.lambda);
        // A blank can fail (its zygote died, it was killed): one more try.
        for _ in 0..2 {
            let Some((key, zygote)) = Phase::ZygoteLookup.run(|| self.zygote(&spec.zygote)) else {
                break;
            };
            let assigned = self
                .take_blank(&key, &zygote)
                .and_then(|blank| self.assign(blank, spec, &id, &zygote));
            // One blank fewer: time to fork the next.
            self.wake.notify_all();
            match assigned {
                Ok(mut made) => {
                    made.forked_from = Some(key);
                    return Ok(made);
                }
                Err(e) => tracing::warn!(sandbox = %id, "no blank sandbox: {e}"),
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
                let _ = cgroup.discard(&kill_pid);
            })
    }
}

/// Counts a cold start in [`PoolInner::first_calls`] while it lives; the
/// last one out wakes the refill threads.
struct FirstCall<'a>(&'a PoolInner);

impl<'a> FirstCall<'a> {
    fn begin(pool: &'a PoolInner) -> Self {
        pool.first_calls.fetch_add(1, Ordering::AcqRel);
        Self(pool)
    }
}

impl Drop for FirstCall<'_> {
    fn drop(&mut self) {
        if self.0.first_calls.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Under the lock a refill thread checks the count in, so the
            // wake-up cannot fall between its check and its wait.
            let _blanks = self.0.lock_blanks();
            self.0.wake.notify_all();
        }
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
        super::cleanup(
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
