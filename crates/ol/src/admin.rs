//! `ol admin install|ls|rm`: manage the lambdas of a worker's registry,
//! through the worker's registry API when it runs (with the admin key its
//! config.json names, docs/security.md), else directly in its registry
//! directory (with the same checks).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ol_registry::{DirRegistry, Registry};
use ol_worker::access::AdminKey;
use ol_worker::{WorkerDir, client};

use crate::DirArg;

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Pack a lambda directory (or take a .tar.gz) and install it.
    Install {
        #[command(flatten)]
        dir: DirArg,
        /// Lambda directory or NAME.tar.gz.
        #[arg(value_name = "PATH")]
        source: PathBuf,
        /// Install under this name (default: the directory or file name).
        #[arg(long)]
        name: Option<String>,
    },
    /// List the lambdas in the registry.
    Ls {
        #[command(flatten)]
        dir: DirArg,
        /// Print a JSON array of names.
        #[arg(long)]
        json: bool,
    },
    /// Show a lambda: its files and requirements, its ol.yaml settings,
    /// its live sandboxes and its last failed calls.
    Describe {
        #[command(flatten)]
        dir: DirArg,
        /// The lambda.
        name: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Remove a lambda from the registry.
    Rm {
        #[command(flatten)]
        dir: DirArg,
        /// The lambda.
        name: String,
    },
}

const TIMEOUT: Duration = Duration::from_secs(60);

pub fn run(cmd: AdminCommand) -> Result<()> {
    match cmd {
        AdminCommand::Install { dir, source, name } => install(&dir, &source, name),
        AdminCommand::Ls { dir, json } => ls(&dir, json),
        AdminCommand::Describe { dir, name, json } => describe(&dir, &name, json),
        AdminCommand::Rm { dir, name } => rm(&dir, &name),
    }
}

/// The worker running in a directory, as its config.json says to reach it.
pub(crate) struct Running {
    /// Its base URL.
    pub(crate) url: String,
    /// The admin key its registry routes may need.
    pub(crate) key: Option<AdminKey>,
}

impl Running {
    /// `method` on the registry route `path` (`/registry/...`), with the key.
    pub(crate) fn request(&self, method: &str, path: &str, body: &[u8]) -> Result<client::Answer> {
        let url = format!("{}{path}", self.url);
        Ok(client::request(
            method,
            &url,
            body,
            self.key.as_ref(),
            TIMEOUT,
        )?)
    }
}

/// The worker running in the directory, if one does; its address and key
/// come from config.json (not from `-o` options given to `ol worker up`).
pub(crate) fn running_worker(wd: &WorkerDir) -> Result<Option<Running>> {
    let Some(port) = wd.running().and_then(|r| r.port) else {
        return Ok(None);
    };
    let config = ol_worker::Config::load(&wd.config_file(), &[])?;
    Ok(Some(Running {
        url: config.local_url(port),
        key: config.admin.load_key(&wd.config_file())?,
    }))
}

fn local_registry(wd: &WorkerDir) -> Result<DirRegistry> {
    let config = ol_worker::Config::load(&wd.config_file(), &[])?;
    if !config.registry_is_local() {
        bail!(
            "the registry of {} is remote ({}): manage its lambdas where it lives \
             (`ol admin` with -p on the worker that holds it, or `ol cluster upload`)",
            wd.root().display(),
            config.registry
        );
    }
    Ok(DirRegistry::with_cache(
        config.registry_dir(wd.root()),
        wd.state().join("registry-cache"),
    ))
}

fn install(dir: &DirArg, path: &Path, name: Option<String>) -> Result<()> {
    let wd = dir.open()?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .context("the path has no file name")?;
    let (default_name, archive) = if path.is_dir() {
        (file_name, pack_with_progress(path)?)
    } else if let Some(stem) = file_name.strip_suffix(".tar.gz") {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        (stem.to_string(), bytes)
    } else {
        bail!(
            "{} is neither a lambda directory nor a NAME.tar.gz",
            path.display()
        );
    };
    let name = name.unwrap_or(default_name);
    ol_registry::validate_name(&name)?;
    match running_worker(&wd)? {
        Some(worker) => {
            let a = worker.request("POST", &format!("/registry/{name}"), &archive)?;
            if a.status != 201 {
                bail!("the worker refused {name} ({}): {}", a.status, refusal(&a));
            }
        }
        None => {
            let registry = local_registry(&wd)?;
            let config = ol_worker::Config::load(&wd.config_file(), &[])?;
            ol_worker::upload::install_checked(
                &registry,
                &wd.state().join("uploads"),
                &name,
                &archive,
                &config.limits,
            )?;
        }
    }
    println!("installed {name} ({} bytes packed)", archive.len());
    Ok(())
}

/// Packs a lambda directory; a large one (over [`LARGE_FILES`] files or
/// [`LARGE_BYTES`]) shows how far packing got, on stderr.
fn pack_with_progress(path: &Path) -> Result<Vec<u8>> {
    let started = std::time::Instant::now();
    let mut shown = 0u64;
    let archive = ol_registry::pack_lambda_with(path, &mut |p| {
        let step = (p.files / LARGE_FILES).max(p.bytes / LARGE_BYTES);
        if step > shown {
            shown = step;
            eprintln!(
                "[{:5.1}s] packing {}: {} files, {:.1} MiB",
                started.elapsed().as_secs_f64(),
                path.display(),
                p.files,
                p.bytes as f64 / f64::from(1 << 20)
            );
        }
    })?;
    if shown > 0 {
        eprintln!(
            "[{:5.1}s] packed {} into {:.1} MiB",
            started.elapsed().as_secs_f64(),
            path.display(),
            archive.len() as f64 / f64::from(1 << 20)
        );
    }
    Ok(archive)
}

/// Files after which packing shows its progress (and every this many).
const LARGE_FILES: u64 = 500;
/// Bytes after which packing shows its progress (and every this many).
const LARGE_BYTES: u64 = 32 << 20;

fn ls(dir: &DirArg, json: bool) -> Result<()> {
    let wd = dir.open()?;
    let names: Vec<String> = match running_worker(&wd)? {
        Some(worker) => {
            let a = worker.request("GET", "/registry/", &[])?;
            if a.status != 200 {
                bail!("cannot list the lambdas ({}): {}", a.status, refusal(&a));
            }
            let listing = || {
                format!(
                    "the worker at {} answered /registry/ with something else than a listing of lambdas",
                    worker.url
                )
            };
            let v: serde_json::Value = serde_json::from_str(&a.body).with_context(listing)?;
            v["lambdas"]
                .as_array()
                .with_context(listing)?
                .iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect()
        }
        None => local_registry(&wd)?.list()?,
    };
    if json {
        println!("{}", serde_json::Value::from(names));
        return Ok(());
    }
    for n in names {
        println!("{n}");
    }
    Ok(())
}

/// The installed distributions (`DIR/packages/<name>==<version>`) named by
/// `requirements` (their dependencies are not listed).
fn installed_for(packages: &Path, requirements: &[String]) -> Vec<String> {
    let normal = |name: &str| name.to_ascii_lowercase().replace(['_', '.'], "-");
    let wanted: Vec<String> = requirements
        .iter()
        .map(|r| {
            normal(
                r.split(['=', '<', '>', '!', '~', '[', ';', ' '])
                    .next()
                    .unwrap_or_default(),
            )
        })
        .collect();
    let mut found: Vec<String> = std::fs::read_dir(packages)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|dir| {
            dir.split_once("==")
                .is_some_and(|(name, _)| wanted.contains(&normal(name)))
        })
        .collect();
    found.sort();
    found
}

/// `items` joined by commas, or `none` when there are none.
fn listed(items: &[String], none: &str) -> String {
    if items.is_empty() {
        none.to_string()
    } else {
        items.join(", ")
    }
}

/// How many failed calls `describe` shows.
const LAST_ERRORS: usize = 5;

fn describe(dir: &DirArg, name: &str, json: bool) -> Result<()> {
    ol_registry::validate_name(name)?;
    let wd = dir.open()?;
    let worker = running_worker(&wd)?;
    // The code as the worker's registry has it (read here when it is a
    // local one).
    let config = ol_worker::Config::load(&wd.config_file(), &[])?;
    let code = if config.registry_is_local() {
        local_registry(&wd)?.fetch(name)?
    } else {
        None
    };
    let (files, requirements) = match &code {
        Some(code) => {
            let mut files: Vec<String> = std::fs::read_dir(&code.dir)
                .with_context(|| format!("cannot list {}", code.dir.display()))?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f != "__pycache__" && !f.starts_with('.'))
                .collect();
            files.sort();
            let requirements = ["requirements.txt", "packages.txt"]
                .iter()
                .find_map(|f| std::fs::read_to_string(code.dir.join(f)).ok())
                .map(|text| {
                    text.lines()
                        .map(|l| l.split('#').next().unwrap_or_default().trim().to_string())
                        .filter(|l| !l.is_empty())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            (files, requirements)
        }
        None => (Vec::new(), Vec::new()),
    };
    let mut settings = serde_json::Value::Null;
    let mut sandboxes = Vec::new();
    if let Some(worker) = &worker {
        let a = worker.request("GET", &format!("/registry/{name}/config"), &[])?;
        match a.status {
            200 => settings = serde_json::from_str(&a.body).unwrap_or_default(),
            404 if code.is_none() => bail!("no lambda named {name} in the worker's registry"),
            _ => {}
        }
        let stats = client::stats_with_key(&worker.url, worker.key.as_ref(), TIMEOUT)?;
        sandboxes = stats
            .lambda_layer
            .sandboxes
            .into_iter()
            .filter(|s| s.lambda == name)
            .collect();
    } else if code.is_none() {
        bail!(
            "no lambda named {name} in {}",
            config.registry_dir(wd.root()).display()
        );
    }
    let installed = installed_for(&wd.packages(), &requirements);
    let errors: Vec<_> = ol_sandbox::lambda_logs::LambdaLogs::read(&wd.lambda_logs(), name)?
        .into_iter()
        .filter(|e| e.stream == "error")
        .collect();
    let errors = &errors[errors.len().saturating_sub(LAST_ERRORS)..];
    if json {
        let v = serde_json::json!({
            "lambda": name,
            "files": files,
            "requirements": requirements,
            "installed": installed,
            "config": settings,
            "sandboxes": sandboxes,
            "last_errors": errors,
            "worker_running": worker.is_some(),
        });
        println!("{v}");
        return Ok(());
    }
    println!("lambda {name}");
    println!("  files:        {}", files.join(", "));
    println!("  requirements: {}", listed(&requirements, "none"));
    if !requirements.is_empty() {
        let none = "none yet (the first call installs them)";
        println!("  installed:    {}", listed(&installed, none));
    }
    if settings.is_null() {
        println!("  config:       (no worker running: start one to see the parsed ol.yaml)");
    } else {
        let l = &settings["limits"];
        println!(
            "  http methods: {}",
            match settings["triggers"]["http"].as_array() {
                Some(m) => m
                    .iter()
                    .filter_map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                None => "all".into(),
            }
        );
        println!("  cron:         {}", settings["triggers"]["cron"]);
        for t in settings["triggers"]["nats"]
            .as_array()
            .into_iter()
            .flatten()
        {
            println!(
                "  nats:         {} stream {} subject {} durable {} (concurrency {}, retries {}, dead letter {})",
                t["url"].as_str().unwrap_or("?"),
                t["stream"].as_str().unwrap_or("?"),
                t["subject"].as_str().unwrap_or("?"),
                t["durable"].as_str().unwrap_or("?"),
                t["concurrency"],
                t["retries"],
                t["dead_letter"].as_str().unwrap_or("none"),
            );
        }
        for t in settings["triggers"]["kafka"]
            .as_array()
            .into_iter()
            .flatten()
        {
            println!(
                "  kafka:        {} topic {} group {} (concurrency {}, retries {}, dead letter {})",
                t["brokers"],
                t["topic"].as_str().unwrap_or("?"),
                t["group"].as_str().unwrap_or("?"),
                t["concurrency"],
                t["retries"],
                t["dead_letter"].as_str().unwrap_or("none"),
            );
        }
        println!("  environment:  {}", settings["environment"]);
        // ol.yaml's own limits; the rest are the worker's.
        let own: Vec<String> = l
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "  limits:       {}",
            if own.is_empty() {
                "the worker's".to_string()
            } else {
                format!("{} (others: the worker's)", own.join(", "))
            }
        );
    }
    println!("  sandboxes:    {}", sandboxes.len());
    for s in &sandboxes {
        println!("    {} pid {}", s.id, s.pid);
    }
    println!("  last errors:  {}", errors.len());
    for e in errors {
        let first = e.line.lines().next().unwrap_or_default();
        println!("    {} {} {}", e.time, e.request_id, first.escape_debug());
    }
    Ok(())
}

fn rm(dir: &DirArg, name: &str) -> Result<()> {
    let wd = dir.open()?;
    match running_worker(&wd)? {
        Some(worker) => {
            let a = worker.request("DELETE", &format!("/registry/{name}"), &[])?;
            if a.status != 204 {
                bail!("cannot remove {name} ({}): {}", a.status, refusal(&a));
            }
        }
        None => local_registry(&wd)?.remove(name)?,
    }
    println!("removed {name}");
    Ok(())
}

/// Why the worker refused: the `error` field of its JSON error body (or
/// the body itself), and where the key goes when the key was the reason.
pub(crate) fn refusal(a: &client::Answer) -> String {
    let error = serde_json::from_str::<serde_json::Value>(&a.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| a.body.clone());
    if a.status == 401 {
        format!(
            "{error}; `ol admin` sends the key set in the worker directory's config.json (admin.key_file or admin.key)"
        )
    } else {
        error
    }
}
