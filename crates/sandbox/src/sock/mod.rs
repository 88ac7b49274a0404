//! The `sock` backend (DESIGN.md §3.2–3.7): each lambda runs in new mount,
//! pid, ipc, uts, network and cgroup namespaces, pivot_root'ed into a root
//! of read-only binds, as an unprivileged user with no capabilities, under
//! a seccomp allow-list, inside its own cgroup with memory, pids and cpu
//! limits.
//!
//! Today every sandbox starts a fresh interpreter through the sandbox init
//! ([`init`]); forking from pre-imported zygotes is the next step.
//! Everything a worker creates is named under its worker id (`ol-<hash of
//! the worker dir>`): cgroups `ol-<id>/<sandbox>` and scratch dirs, so
//! [`cleanup`] finds and removes it after any crash. Mounts live only in
//! the sandboxes' own mount namespaces and die with them.

pub mod cgroup;
pub mod init;
pub mod rootfs;
pub mod seccomp;
mod zygote;

use std::collections::VecDeque;
use std::fs;
use std::os::unix::fs::chown;
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
use self::init::{INIT_ARG, INIT_FAILED, InitSpec};
use self::rootfs::{MountPlan, RootSources, SANDBOX_UID, inside};
use self::zygote::{Assignment, Blank, ForkedSandbox, Zygote};
use crate::process::{
    RUNTIME_FD, cleanup_scratch, describe_exit, pid_record, spawn_with_runtime_fd,
};
use crate::{Limits, NewSandbox, Sandbox, SandboxError, SandboxPool, SandboxSpec, io_err};

/// Where a `sock` pool finds what it builds sandboxes from.
#[derive(Debug, Clone)]
pub struct SockConfig {
    /// Worker id (`ol-<hash>`), the name of its parent cgroup.
    pub worker_id: String,
    /// The base root file system (`DIR/base`).
    pub base: PathBuf,
    /// Installed packages (`DIR/packages`).
    pub packages: PathBuf,
    /// Directory holding `ol_runtime.py`.
    pub runtime_dir: PathBuf,
    /// Per-sandbox scratch dirs.
    pub scratch_root: PathBuf,
    /// The real Python interpreter.
    pub python: PathBuf,
    /// Its installation prefix, bound read-only into sandboxes.
    pub python_prefix: PathBuf,
    /// The `ol` binary, run as the sandbox init.
    pub init_exe: PathBuf,
    /// Apply the seccomp allow-list.
    pub seccomp: bool,
    /// Fork sandboxes from a zygote (else each starts a fresh interpreter).
    pub zygote: bool,
    /// Lower a paused sandbox's memory limit to what it uses.
    pub downsize_paused_mem: bool,
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

/// Blank sandboxes kept ready (see [`zygote::Blank`]).
const BLANKS: usize = 2;

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
    zygote: Mutex<Option<Arc<Zygote>>>,
    blanks: Mutex<VecDeque<Blank>>,
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
            // Compiled once per worker; sandboxes only install it.
            let prog = seccomp::compile().map_err(|e| SandboxError::StartFailed(e.to_string()))?;
            crate::runtime::install_file(
                &cfg.runtime_dir,
                SECCOMP_FILE,
                &seccomp::to_bytes(&prog),
            )?;
        }
        tracing::info!(
            cgroups = hierarchy.version(),
            seccomp = cfg.seccomp,
            worker_id = %cfg.worker_id,
            "sock sandboxes"
        );
        let inner = Arc::new(PoolInner {
            cfg,
            fs,
            hierarchy,
            zygote: Mutex::new(None),
            blanks: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            closing: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        });
        // Start the zygote now, so the first call does not wait for it.
        let refill = if inner.zygote().is_some() {
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
        self.inner.lock_blanks().len()
    }
}

impl Drop for SockPool {
    fn drop(&mut self) {
        self.inner.closing.store(true, Ordering::Release);
        self.inner.wake.notify_all();
        if let Some(t) = self.refill.take() {
            let _ = t.join();
        }
        for blank in self.inner.lock_blanks().drain(..) {
            blank.discard();
        }
        self.inner.lock_zygote().take();
    }
}

impl PoolInner {
    fn lock_blanks(&self) -> std::sync::MutexGuard<'_, VecDeque<Blank>> {
        self.blanks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_zygote(&self) -> std::sync::MutexGuard<'_, Option<Arc<Zygote>>> {
        self.zygote.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The refill thread: forks blanks until [`BLANKS`] are ready, sleeps
    /// until one is taken, until the pool closes.
    fn keep_blanks_ready(&self) {
        loop {
            let mut blanks = self.lock_blanks();
            while blanks.len() >= BLANKS && !self.closing.load(Ordering::Acquire) {
                blanks = self
                    .wake
                    .wait(blanks)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            drop(blanks);
            if self.closing.load(Ordering::Acquire) {
                return;
            }
            let made = self.zygote().map(|z| self.prefork(&z));
            match made {
                Some(Ok(blank)) => self.lock_blanks().push_back(blank),
                failed => {
                    if let Some(Err(e)) = failed {
                        tracing::warn!("cannot fork a blank sandbox: {e}");
                    }
                    // Back off before trying again; wake early on close.
                    let blanks = self.lock_blanks();
                    let _ = self.wake.wait_timeout(blanks, Duration::from_secs(1));
                }
            }
        }
    }

    /// Forks one blank sandbox into a new cgroup.
    fn prefork(&self, zygote: &Zygote) -> Result<Blank, SandboxError> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("sb-{n}");
        let cgroup = self.cgroup(&id);
        cgroup.create().map_err(cgroup_err)?;
        let made = cgroup
            .set_limits(&cgroup_limits(&Limits::default()))
            .map_err(cgroup_err)
            .and_then(|()| zygote.prefork(&id, cgroup.clone()));
        made.inspect_err(|_| {
            let _ = discard_cgroup(&cgroup);
        })
    }

    /// A ready blank, or a new one forked now. `None` without a zygote.
    fn take_blank(&self) -> Option<Result<Blank, SandboxError>> {
        let _phase = Phase::SockBlank.enter();
        let taken = self.lock_blanks().pop_front();
        self.wake.notify_all();
        match taken {
            Some(blank) => {
                counters::BLANK_HITS.inc();
                Some(Ok(blank))
            }
            None => self.zygote().map(|z| {
                counters::BLANK_MISSES.inc();
                self.prefork(&z)
            }),
        }
    }

    /// The memory limit to restore after a downsized pause, when
    /// `downsize_paused_mem` is on.
    fn downsize(&self, limits: &Limits) -> Option<u64> {
        self.cfg
            .downsize_paused_mem
            .then(|| cgroup_limits(limits).mem_bytes)
    }

    /// A new sandbox for `spec`: a blank handed the lambda when zygotes
    /// work, else a fresh interpreter.
    fn create(&self, spec: &SandboxSpec) -> Result<NewSandbox, SandboxError> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", spec.lambda);
        // A blank can fail (its zygote died, it was killed): one more try.
        for _ in 0..2 {
            match self.take_blank() {
                None => break,
                Some(Ok(blank)) => match self.assign(blank, spec, &id) {
                    Ok(made) => return Ok(made),
                    Err(e) => tracing::warn!(sandbox = %id, "blank sandbox failed: {e}"),
                },
                Some(Err(e)) => tracing::warn!(sandbox = %id, "cannot fork a blank sandbox: {e}"),
            }
        }
        let cgroup = self.cgroup(&id);
        let _phase = Phase::SockSpawn.enter();
        counters::FRESH_STARTS.inc();
        self.spawn(&Program::Lambda(spec), &id, &cgroup, &spec.limits)
            .map(|(sandbox, conn)| NewSandbox {
                sandbox: Box::new(sandbox),
                conn,
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
    ) -> Result<NewSandbox, SandboxError> {
        let scratch = match Scratch::create(&self.cfg.scratch_root, id) {
            Ok(s) => s,
            Err(e) => {
                blank.discard();
                return Err(e);
            }
        };
        let handed = Phase::SockCgroup
            .run(|| blank.cgroup.set_limits(&cgroup_limits(&spec.limits)))
            .map_err(cgroup_err)
            .and_then(|()| scratch.log_files())
            .and_then(|(stdout, stderr)| {
                let _phase = Phase::SockAssign.enter();
                let mut env = base_env();
                env.extend(spec.env.iter().cloned());
                zygote::assign(
                    &blank.conn,
                    &Assignment {
                        code_dir: &spec.code_dir,
                        host_dir: &scratch.host_dir(),
                        stdout,
                        stderr,
                        uid: SANDBOX_UID,
                        env: &env,
                    },
                )
            });
        if let Err(e) = handed {
            blank.discard();
            let _ = fs::remove_dir_all(&scratch.dir);
            return Err(e);
        }
        let Blank { cgroup, conn, exit } = blank;
        Ok(NewSandbox {
            sandbox: Box::new(ForkedSandbox {
                id: id.to_string(),
                pid: std::sync::OnceLock::new(),
                enclosure: Enclosure {
                    cgroup,
                    scratch: scratch.dir,
                    downsize: self.downsize(&spec.limits),
                },
                exit,
                exit_reason: None,
                destroyed: false,
            }),
            conn,
        })
    }

    fn cgroup(&self, id: &str) -> Cgroup {
        Cgroup::new(
            Arc::clone(&self.fs),
            Arc::clone(&self.hierarchy),
            &format!("{}/{id}", self.cfg.worker_id),
        )
    }

    fn init_spec(&self, what: &Program<'_>, cgroup: &Cgroup, host_dir: &Path) -> InitSpec {
        let code = match what {
            Program::Lambda(spec) => Some(spec.code_dir.as_path()),
            Program::Zygote => None,
        };
        let plan = MountPlan::for_lambda(&RootSources {
            base: &self.cfg.base,
            python_prefix: &self.cfg.python_prefix,
            code,
            scratch: host_dir,
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
                ];
                if self.cfg.seccomp {
                    argv.extend(["--seccomp".into(), in_runtime_dir(SECCOMP_FILE)]);
                }
                (argv, Vec::new())
            }
        };
        let mut env = base_env();
        env.extend(extra_env);
        InitSpec {
            cgroup_procs: cgroup.procs_files(),
            plan,
            hostname: "ol-sandbox".into(),
            uid: SANDBOX_UID,
            gid: SANDBOX_UID,
            seccomp: self
                .cfg
                .seccomp
                .then(|| self.cfg.runtime_dir.join(SECCOMP_FILE)),
            argv,
            env,
            cwd: match what {
                Program::Lambda(_) => inside::HANDLER.into(),
                Program::Zygote => "/".into(),
            },
            zygote: matches!(what, Program::Zygote),
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
        let init = self.init_spec(what, cgroup, &scratch.host_dir());
        let init_json = serde_json::to_string(&init)
            .map_err(|e| SandboxError::StartFailed(format!("cannot encode init spec: {e}")))?;
        let (stdout, stderr) = scratch.log_files()?;
        let mut cmd = Command::new(&self.cfg.init_exe);
        cmd.arg(INIT_ARG).arg(init_json).env_clear();
        let child = spawn_with_runtime_fd(&mut cmd, stdout, stderr, theirs)?;
        let pid = child.id();
        let sandbox = SockSandbox {
            id: id.to_string(),
            pid,
            child,
            enclosure: Enclosure {
                cgroup: cgroup.clone(),
                scratch: scratch.dir.clone(),
                downsize: self.downsize(limits),
            },
            destroyed: false,
        };
        scratch.record_pid(pid)?;
        Ok((sandbox, ours))
    }

    /// The zygote, started if there is none or it died. `None` when
    /// zygotes are off or one cannot be started (then sandboxes start
    /// fresh interpreters).
    fn zygote(&self) -> Option<Arc<Zygote>> {
        if !self.cfg.zygote {
            return None;
        }
        let mut slot = self
            .zygote
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(z) = slot.as_ref().filter(|z| z.is_alive()) {
            return Some(Arc::clone(z));
        }
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("zygote-{n}");
        let cgroup = self.cgroup(&id);
        let started = self
            .spawn(&Program::Zygote, &id, &cgroup, &zygote_limits())
            .and_then(|(sandbox, conn)| Zygote::start(Box::new(sandbox), conn));
        match started {
            Ok(z) => {
                let z = Arc::new(z);
                *slot = Some(Arc::clone(&z));
                Some(z)
            }
            Err(e) => {
                tracing::warn!("cannot start a zygote, starting sandboxes from scratch: {e}");
                let _ = discard_cgroup(&cgroup);
                None
            }
        }
    }
}

/// What a sandbox init runs.
enum Program<'a> {
    /// The runtime serving one lambda.
    Lambda(&'a SandboxSpec),
    /// A zygote forking lambda sandboxes.
    Zygote,
}

/// Seccomp program file in the runtime dir (visible to zygotes at /ol).
const SECCOMP_FILE: &str = "seccomp.bpf";

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

/// A sandbox's scratch dir on the host: `host/` (its /host), `stdout`,
/// `stderr` and `pid`.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn create(root: &Path, id: &str) -> Result<Self, SandboxError> {
        let dir = root.join(id);
        let host = dir.join("host");
        fs::create_dir_all(&host).map_err(io_err("cannot create", &host))?;
        chown(&host, Some(SANDBOX_UID), Some(SANDBOX_UID))
            .map_err(io_err("cannot chown", &host))?;
        Ok(Self { dir })
    }

    fn host_dir(&self) -> PathBuf {
        self.dir.join("host")
    }

    fn log_files(&self) -> Result<(fs::File, fs::File), SandboxError> {
        let open = |name: &str| {
            let path = self.dir.join(name);
            fs::File::create(&path).map_err(io_err("cannot create", &path))
        };
        Ok((open("stdout")?, open("stderr")?))
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
        self.cgroup.oom_kills().is_ok_and(|n| n > 0)
    }

    /// Kills every process of the sandbox and removes its cgroup and (when
    /// its logs are empty) its scratch dir.
    pub(crate) fn tear_down(&self) -> Result<(), SandboxError> {
        let _ = fs::remove_file(self.scratch.join("pid"));
        let removed = discard_cgroup(&self.cgroup).map_err(cgroup_err);
        crate::process::remove_scratch_if_quiet(&self.scratch);
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
