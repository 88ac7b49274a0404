//! `ol worker ...`: init, up (foreground or detached), down, status and
//! force-cleanup.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use ol_base::debootstrap::{Debootstrap, Release, default_cache_dir};
use ol_worker::client;
use ol_worker::trace_file::{TraceWriter, chrome_trace};
use ol_worker::{BaseSource, StopOutcome, WorkerDir};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::{DirArg, WorkerCommand};

/// Set in the environment of the process `up -d` starts.
const DETACHED_ENV: &str = "OL_DETACHED";
/// How long `up -d` waits for the worker to answer `/status`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `down` waits for a graceful stop before killing.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(cmd: WorkerCommand) -> Result<()> {
    match cmd {
        WorkerCommand::Init { dir, base } => init(&dir, &base),
        WorkerCommand::Up {
            dir,
            detach,
            mut options,
            trace,
        } => {
            if let Some(file) = trace {
                let file = std::path::absolute(&file)
                    .with_context(|| format!("bad trace file {}", file.display()))?;
                options.push(format!("trace.file={}", file.display()));
            }
            up(&dir, detach, &options)
        }
        WorkerCommand::Down { dir } => down(&dir),
        WorkerCommand::Status { dir } => status(&dir),
        WorkerCommand::ForceCleanup { dir } => force_cleanup(&dir),
    }
}

/// How `init` makes the base.
#[derive(Debug, Clone, clap::Args)]
pub struct BaseArgs {
    /// What sandboxes run on: "host" binds the host's /usr, /lib*, /bin and
    /// Python into every sandbox (no download); "debootstrap" builds a
    /// self-contained Debian root file system with its own Python (root,
    /// network the first time, cached after).
    #[arg(long, default_value = "host", value_parser = ["host", "debootstrap"])]
    base: String,
    /// Debian (or Ubuntu) suite for --base debootstrap [default: the host's,
    /// from /etc/os-release, else bookworm].
    #[arg(long, value_name = "SUITE")]
    suite: Option<String>,
    /// Archive mirror for --base debootstrap [default: deb.debian.org, or
    /// archive.ubuntu.com on Ubuntu].
    #[arg(long, value_name = "URL")]
    mirror: Option<String>,
    /// Where downloaded packages and built root file systems are cached
    /// [default: $XDG_CACHE_HOME/ol, else /var/cache/ol].
    #[arg(long, value_name = "DIR", env = "OL_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

impl BaseArgs {
    fn source(&self) -> Result<BaseSource> {
        if self.base != "debootstrap" {
            if self.suite.is_some() || self.mirror.is_some() {
                bail!("--suite and --mirror only apply to --base debootstrap");
            }
            return Ok(BaseSource::Host);
        }
        let host = Release::host();
        Ok(BaseSource::Debootstrap(Debootstrap {
            release: Release {
                suite: self.suite.clone().unwrap_or(host.suite),
                mirror: self.mirror.clone().unwrap_or(host.mirror),
            },
            cache_dir: self.cache_dir.clone().unwrap_or_else(default_cache_dir),
        }))
    }
}

/// Shows the steps of a long init: a spinner with the current step on a
/// terminal, one timed line per step otherwise (logs, CI).
struct Steps {
    spinner: Option<ProgressBar>,
    started: Instant,
}

impl Steps {
    fn new() -> Self {
        let spinner = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] {wide_msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Self {
            spinner,
            started: Instant::now(),
        }
    }

    fn step(&self, line: &str) {
        match &self.spinner {
            Some(bar) => bar.set_message(line.to_string()),
            None => eprintln!("[{:5.1}s] {line}", self.started.elapsed().as_secs_f64()),
        }
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        if let Some(bar) = &self.spinner {
            bar.finish_and_clear();
        }
    }
}

fn init(dir: &DirArg, base: &BaseArgs) -> Result<()> {
    let wd = WorkerDir::new(&dir.path);
    let source = base.source()?;
    let config = {
        let steps = Steps::new();
        wd.init(&source, &mut |line| steps.step(line))?
    };
    println!(
        "initialized worker directory {} (base: {}, python: {}, sandbox: {:?}, port {})",
        wd.root().display(),
        config.base.name(),
        config.python,
        config.sandbox,
        config.worker_port
    );
    Ok(())
}

fn up(dir: &DirArg, detach: bool, options: &[String]) -> Result<()> {
    let wd = WorkerDir::new(&dir.path);
    if !wd.is_initialized() {
        wd.init(&BaseSource::Host, &mut |_| {})?;
        eprintln!("initialized worker directory {}", wd.root().display());
    }
    // Check config and a running worker here too, so `-d` fails in the
    // terminal rather than in a log file.
    let config = ol_worker::Config::load(&wd.config_file(), options)?;
    wd.check_base(&config)?;
    config.admin.load_key(wd.root())?;
    if let Some(running) = wd.running() {
        bail!(
            "a worker already runs in {} (pid {}); stop it with `ol worker down -p {}`",
            wd.root().display(),
            running.pid,
            wd.root().display()
        );
    }
    if detach {
        return start_detached(&wd, &config, options);
    }
    let detached = std::env::var_os(DETACHED_ENV).is_some();
    if detached {
        // Leave the terminal's session so its hangup never reaches us.
        let _ = nix::unistd::setsid();
    }
    let trace = init_logging(!detached, config.trace_file(wd.root()).as_deref())?;
    let served = ol_worker::run_worker(&wd, options);
    // The worker has stopped: every call's spans are closed.
    if let Some(trace) = trace {
        trace.finish()?;
        tracing::info!(file = %trace.path().display(), "trace written");
    }
    served?;
    Ok(())
}

/// Logs to stderr, filtered by `OL_LOG`; with `trace_file`, also writes
/// the phase spans there (whatever `OL_LOG` says).
fn init_logging(ansi: bool, trace_file: Option<&Path>) -> Result<Option<TraceWriter>> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let (trace_layer, writer) = match trace_file {
        Some(path) => {
            let (layer, writer) = chrome_trace(path)?;
            (Some(layer), Some(writer))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(trace_layer)
        .try_init();
    Ok(writer)
}

fn start_detached(wd: &WorkerDir, config: &ol_worker::Config, options: &[String]) -> Result<()> {
    std::fs::create_dir_all(wd.logs())
        .with_context(|| format!("cannot create {}", wd.logs().display()))?;
    let log_path = wd.log_file();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let exe = std::env::current_exe().context("cannot find the ol binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["worker", "up", "-p"]).arg(wd.root());
    for o in options {
        cmd.arg("-o").arg(o);
    }
    let mut child = cmd
        .env(DETACHED_ENV, "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("cannot share the log file")?)
        .stderr(log)
        .spawn()
        .context("cannot start the worker process")?;
    let url = wait_ready(wd, config, &mut child, &log_path, log_start)?;
    println!(
        "worker started: pid {}, {url}, log {}",
        child.id(),
        log_path.display()
    );
    Ok(())
}

/// Waits until the worker started as `child` with `config` answers
/// `/status` with `ready`, or fails with what its log says; its base URL.
fn wait_ready(
    wd: &WorkerDir,
    config: &ol_worker::Config,
    child: &mut Child,
    log: &Path,
    log_start: u64,
) -> Result<String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the worker exited ({status}) before it was ready:\n{}",
                log_since(log, log_start)
            );
        }
        if let Some(port) = wd.running().and_then(|r| r.port) {
            let url = config.local_url(port);
            if client::get(&format!("{url}/status"), Duration::from_secs(2))
                .is_ok_and(|a| a.status == 200 && a.body == "ready")
            {
                return Ok(url);
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!(
                "the worker was not ready within {READY_TIMEOUT:?}:\n{}",
                log_since(log, log_start)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn log_since(log: &Path, start: u64) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let tail = text.get(start as usize..).unwrap_or(&text);
    String::from_utf8_lossy(tail).trim_end().to_string()
}

fn down(dir: &DirArg) -> Result<()> {
    let wd = WorkerDir::new(&dir.path);
    match ol_worker::stop_worker(&wd, STOP_TIMEOUT)? {
        StopOutcome::NotRunning => println!("no worker was running in {}", wd.root().display()),
        StopOutcome::Stopped { pid } => println!("worker {pid} stopped"),
        StopOutcome::Killed { pid } => {
            println!("worker {pid} did not stop within {STOP_TIMEOUT:?} and was killed")
        }
    }
    Ok(())
}

fn force_cleanup(dir: &DirArg) -> Result<()> {
    let wd = WorkerDir::new(&dir.path);
    let found = ol_worker::force_cleanup(&wd)?;
    println!(
        "cleaned up {}: {found} leftover sandbox(es) removed",
        wd.root().display()
    );
    Ok(())
}

fn status(dir: &DirArg) -> Result<()> {
    let wd = WorkerDir::new(&dir.path);
    let Some(running) = wd.running() else {
        bail!(
            "no worker is running in {}; start one with `ol worker up -p {}`",
            wd.root().display(),
            wd.root().display()
        );
    };
    let port = running
        .port
        .context("the worker is starting (no port yet)")?;
    // Its address and admin key as config.json says (/stats may need it).
    let config = ol_worker::Config::load(&wd.config_file(), &[])?;
    let url = config.local_url(port);
    let key = config.admin.load_key(wd.root())?;
    let stats = client::stats_with_key(&url, key.as_ref(), Duration::from_secs(5))?;
    let layer = &stats.lambda_layer;
    let sandbox_rss: u64 = layer.sandboxes.iter().map(|s| rss_bytes(s.pid)).sum();
    println!("worker in {}", wd.root().display());
    println!("  pid:         {}", running.pid);
    println!("  url:         {url}");
    println!(
        "  memory:      worker {}, sandboxes {}",
        mib(rss_bytes(running.pid)),
        mib(sandbox_rss)
    );
    println!("  invocations: {}", stats.invocations);
    println!("  lambdas:     {}", layer.lambdas.len());
    for l in &layer.lambdas {
        println!("    {} ({} idle)", l.name, l.idle);
    }
    println!("  sandboxes:   {}", layer.sandboxes.len());
    for s in &layer.sandboxes {
        println!("    {} pid {} rss {}", s.id, s.pid, mib(rss_bytes(s.pid)));
    }
    if let Some(p) = &layer.packages {
        println!(
            "  packages:    {} installed in {:.1} s, {} failed",
            p.installs,
            p.install_ms as f64 / 1e3,
            p.failures
        );
        for name in &p.installing {
            println!("    installing {name}");
        }
    }
    println!("  zygotes:     {}", layer.zygotes.len());
    for z in &layer.zygotes {
        println!("    {z}");
    }
    Ok(())
}

fn rss_bytes(pid: u32) -> u64 {
    ol_sandbox::pids::process_rss_bytes(pid).unwrap_or(0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}
