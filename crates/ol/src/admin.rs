//! `ol admin install|ls|rm`: manage the lambdas of a worker's registry,
//! through the worker's registry API when it runs, else directly in its
//! registry directory (with the same checks).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ol_registry::{DirRegistry, Registry, pack_lambda};
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

/// The running worker's base URL, if one runs in the directory.
fn worker_url(wd: &WorkerDir) -> Option<String> {
    let port = wd.running()?.port?;
    Some(format!("http://127.0.0.1:{port}"))
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
    match worker_url(&wd) {
        Some(url) => {
            let a = client::post(&format!("{url}/registry/{name}"), &archive, TIMEOUT)?;
            if a.status != 201 {
                bail!(
                    "the worker refused {name} ({}): {}",
                    a.status,
                    error_of(&a.body)
                );
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
    let names: Vec<String> = match worker_url(&wd) {
        Some(url) => {
            let a = client::get(&format!("{url}/registry/"), TIMEOUT)?;
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
    match worker_url(&wd) {
        Some(url) => {
            let a = client::delete(&format!("{url}/registry/{name}"), TIMEOUT)?;
            if a.status != 204 {
                bail!("cannot remove {name} ({}): {}", a.status, error_of(&a.body));
            }
        }
        None => local_registry(&wd)?.remove(name)?,
    }
    println!("removed {name}");
    Ok(())
}

/// The `error` field of a JSON error body, or the body itself.
fn error_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string())
}
