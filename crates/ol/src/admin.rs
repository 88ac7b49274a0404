//! `ol admin install|ls|rm`: manage the lambdas of a worker's registry,
//! through the worker's registry API when it runs (with the admin key its
//! config.json names, docs/security.md), else directly in its registry
//! directory (with the same checks).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ol_registry::{DirRegistry, Registry, pack_lambda};
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
        AdminCommand::Ls { dir } => ls(&dir),
        AdminCommand::Rm { dir, name } => rm(&dir, &name),
    }
}

/// The worker running in a directory, as its config.json says to reach it.
struct Running {
    /// Its base URL.
    url: String,
    /// The admin key its registry routes may need.
    key: Option<AdminKey>,
}

impl Running {
    /// `method` on the registry route `path` (`/registry/...`), with the key.
    fn request(&self, method: &'static str, path: &str, body: &[u8]) -> Result<client::Answer> {
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
fn running_worker(wd: &WorkerDir) -> Result<Option<Running>> {
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
    Ok(DirRegistry::with_cache(
        config.registry_dir(wd.root()),
        wd.state().join("registry-cache"),
    ))
}

fn install(dir: &DirArg, path: &Path, name: Option<String>) -> Result<()> {
    let wd = WorkerDir::open_dir(&dir.path)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .context("the path has no file name")?;
    let (default_name, archive) = if path.is_dir() {
        (file_name, pack_lambda(path)?)
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
            ol_worker::upload::install_checked(
                &registry,
                &wd.state().join("uploads"),
                &name,
                &archive,
            )?;
        }
    }
    println!("installed {name} ({} bytes packed)", archive.len());
    Ok(())
}

fn ls(dir: &DirArg) -> Result<()> {
    let wd = WorkerDir::open_dir(&dir.path)?;
    let names: Vec<String> = match running_worker(&wd)? {
        Some(worker) => {
            let a = worker.request("GET", "/registry/", &[])?;
            if a.status != 200 {
                bail!("cannot list the lambdas ({}): {}", a.status, refusal(&a));
            }
            let v: serde_json::Value =
                serde_json::from_str(&a.body).context("bad registry listing")?;
            v["lambdas"]
                .as_array()
                .context("bad registry listing")?
                .iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect()
        }
        None => local_registry(&wd)?.list()?,
    };
    for n in names {
        println!("{n}");
    }
    Ok(())
}

fn rm(dir: &DirArg, name: &str) -> Result<()> {
    let wd = WorkerDir::open_dir(&dir.path)?;
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
fn refusal(a: &client::Answer) -> String {
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
