//! `ol worker ...`: init, up (foreground or detached), down, status and
//! force-cleanup.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use ol_base::debootstrap::{Debootstrap, Release, default_cache_dir};
use ol_worker::client;
use ol_worker::launch::{self, LogTo};
use ol_worker::{BaseSource, StopOutcome, WorkerDir};

use crate::{DirArg, WorkerCommand};

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
        WorkerCommand::Status { dir, json } => status(&dir, json),
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
    #[arg(long, value_name = "DIR", env = "OL_CACHE_DIR", hide_env_values = true)]
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
    let wd = WorkerDir::new(&dir.path());
    let source = base.source()?;
    let config = {
        let steps = Steps::new();
        wd.init(&source, &mut |line| steps.step(line))?
    };
    println!(
        "initialized worker directory {} (base: {}, python: {}, sandbox: {}, port {})",
        wd.root().display(),
        config.base.name(),
        config.python,
        config.sandbox,
        config.worker_port
    );
    Ok(())
}

fn up(dir: &DirArg, detach: bool, options: &[String]) -> Result<()> {
    let wd = WorkerDir::new(&dir.path());
    if !wd.is_initialized() {
        wd.init(&BaseSource::Host, &mut |_| {})?;
        eprintln!("initialized worker directory {}", wd.root().display());
    }
    let config = ol_worker::Config::load(&wd.config_file(), options)?;
    let wd = WorkerDir::locate(&wd.config_file(), &config);
    if !detach {
        return Ok(launch::serve_here(&wd, &config, LogTo::Stderr)?);
    }
    // Checked here too, so the error shows in the terminal rather than in
    // a log file.
    ol_worker::check_startable(&wd, &config)?;
    let mut args: Vec<OsString> = vec!["worker".into(), "up".into(), "-p".into()];
    args.push(wd.root().into());
    for o in options {
        args.extend(["-o".into(), o.into()]);
    }
    let log = wd.log_file();
    let starting = launch::spawn_detached(&args, &log)?;
    let pid = starting.pid();
    let port = starting.wait_ready(&wd, &config, READY_TIMEOUT)?;
    println!(
        "worker started: pid {pid}, {}, log {}",
        config.local_url(port),
        log.display()
    );
    Ok(())
}

fn down(dir: &DirArg) -> Result<()> {
    let wd = dir.open_any()?;
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
    let wd = dir.open_any()?;
    if let Some(running) = wd.running() {
        eprintln!(
            "a worker (pid {}) is running in {}: killing it and its sandboxes",
            running.pid,
            wd.root().display()
        );
    }
    let found = ol_worker::force_cleanup(&wd)?;
    println!(
        "cleaned up {}: {found} leftover sandbox(es) removed",
        wd.root().display()
    );
    Ok(())
}

fn status(dir: &DirArg, json: bool) -> Result<()> {
    let wd = dir.open()?;
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
    let key = config.admin.load_key(&wd.config_file())?;
    let stats = client::stats_with_key(&url, key.as_ref(), Duration::from_secs(5))?;
    let layer = &stats.lambda_layer;
    let sandbox_rss: u64 = layer.sandboxes.iter().map(|s| rss_bytes(s.pid)).sum();
    if json {
        let v = serde_json::json!({
            "dir": wd.root(),
            "pid": running.pid,
            "url": url,
            "worker_rss_bytes": rss_bytes(running.pid),
            "sandboxes_rss_bytes": sandbox_rss,
            "stats": stats,
        });
        println!("{v}");
        return Ok(());
    }
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
