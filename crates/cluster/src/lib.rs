//! `ol cluster`: OpenLambda's `admin` tool (seed 002), several workers of
//! one machine in one cluster directory (docs/cluster.md).
//!
//! - [`layout`] is the cluster directory: `config/` (`template.json`,
//!   `worker-<N>.json`), `logs/`, `base/`, `packages/`, `registry/`,
//!   `workers/`, and the workers found in it.
//! - [`template`] makes `config/template.json` (`new`) and merges settings
//!   into it (`setconf`), through the worker's own strict config parsing.
//! - [`workers`] starts workers (`workers`, `worker-exec`), stops them
//!   (`kill`) and reports on them (`status`); a worker is an `ol` process
//!   run as `ol worker up` runs one ([`ol_worker::launch`]).
//! - [`registry`] runs the cluster's code store, the S3 API with keys
//!   (`registry`), and stores handler bundles in it (`upload`).
//! - [`lb`] puts a balancer (`ol lb`) in front of the workers
//!   (`workers --lb-port`), stopped by `kill`.
//! - [`go_flags`] lets `-cluster DIR` stand for `--cluster DIR`, as
//!   OpenLambda's Go flags did.

pub mod go_flags;
pub mod layout;
pub mod lb;
pub mod registry;
pub mod template;
pub mod workers;

use std::path::PathBuf;

use clap::Subcommand;

pub use go_flags::accept_go_flags;
pub use layout::Cluster;

/// The cluster directory every command but `worker-exec` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArg {
    /// The cluster directory (its name is its path).
    #[arg(long = "cluster", value_name = "DIR")]
    pub cluster: PathBuf,
}

/// The `ol cluster` commands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Make a cluster directory.
    ///
    /// It holds config/template.json with every worker setting, logs/,
    /// base/ (the sandboxes' root file system, built once and shared),
    /// packages/ (shared), registry/ (the code store, with the example
    /// lambdas) and workers/ (each worker's state).
    New {
        /// The cluster directory.
        #[command(flatten)]
        cluster: ClusterArg,
    },
    /// Merge settings into config/template.json.
    ///
    /// Workers started after it use them. Objects merge key by key, null
    /// resets a key to its default; unknown keys and values a worker
    /// would refuse are refused, naming the key, and the template is left
    /// as it was. "registry": "local" is the cluster's registry/ dir.
    Setconf {
        /// The cluster directory.
        #[command(flatten)]
        cluster: ClusterArg,
        /// The settings, as JSON: '{"sandbox": "sock", "limits": {"mem_mb": 128}}'.
        #[arg(value_name = "JSON")]
        settings: String,
    },
    /// Start NUM workers in the background on ports PORT..PORT+NUM-1.
    ///
    /// Worker N gets config/worker-<N>.json (the template, its port and
    /// its state dir workers/worker-<N>/), its log in logs/worker-<N>.out
    /// and its pid in logs/worker-<N>.pid. If one does not start, the
    /// error names its port and log, and the others are stopped again.
    Workers {
        /// The cluster directory.
        #[command(flatten)]
        cluster: ClusterArg,
        /// How many workers.
        #[arg(long, value_name = "NUM", default_value_t = 1)]
        num_workers: u16,
        /// The first worker's port; the others take the next ones.
        #[arg(long, value_name = "PORT", default_value_t = 8080)]
        port: u16,
        /// Also start a balancer (`ol lb`) in front of them on this port
        /// (state in workers/lb/, log in logs/lb.out); `kill` stops it.
        #[arg(long, value_name = "PORT")]
        lb_port: Option<u16>,
        /// The balancer's policy.
        #[arg(long, value_enum, default_value_t = ol_lb::PolicyKind::Name, requires = "lb_port")]
        lb_policy: ol_lb::PolicyKind,
    },
    /// Ping every worker and list each one's sandboxes.
    ///
    /// Fails (after the report) when a worker is not ready.
    Status {
        /// The cluster directory.
        #[command(flatten)]
        cluster: ClusterArg,
    },
    /// Stop every worker of the cluster.
    ///
    /// Each is asked to stop (killed after 30 s), then whatever it left
    /// is removed: no process, cgroup or mount remains.
    Kill {
        /// The cluster directory.
        #[command(flatten)]
        cluster: ClusterArg,
    },
    /// Run the cluster's code store: the S3 API, every request signed with
    /// its keys.
    ///
    /// It runs in the background (its log in logs/registry.out, its
    /// objects in workers/registry/store/) until `ol cluster kill`. The
    /// template then reads lambdas from it (registry s3://lambdas with its
    /// endpoint and keys), so start it before the workers; the lambdas of
    /// registry/ it lacks are copied into it. The keys may also come from
    /// OL_REGISTRY_ACCESS_KEY and OL_REGISTRY_SECRET_KEY.
    Registry {
        /// The cluster directory.
        #[command(flatten)]
        cluster: ClusterArg,
        /// The port to listen on.
        #[arg(long, value_name = "PORT", default_value_t = 9000)]
        port: u16,
        /// The address to listen on: 127.0.0.1 for this machine's workers,
        /// 0.0.0.0 for workers on other machines too.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
        host: String,
        /// The access key clients sign with.
        #[arg(long, value_name = "KEY", env = registry::ACCESS_KEY_ENV, hide_env_values = true)]
        access_key: String,
        /// The secret key clients sign with (at least 16 characters, e.g.
        /// `openssl rand -hex 20`).
        #[arg(long, value_name = "SECRET", env = registry::SECRET_KEY_ENV, hide_env_values = true)]
        secret_key: String,
        /// Serve in this process, its log on stdout, until Ctrl-C.
        #[arg(long)]
        foreground: bool,
    },
    /// Upload a handler bundle into the cluster's registry.
    ///
    /// The bundle (a .tar.gz with lambda_func.py or f.py, and
    /// packages.txt or requirements.txt; or a directory, packed) is
    /// checked as a worker checks an upload before anything is stored,
    /// then stored as HANDLER in the registry the template names: the
    /// code store, signed with the keys given (default: the template's),
    /// or registry/. Workers see it within their registry_cache_ms.
    Upload {
        /// The cluster directory.
        #[command(flatten)]
        cluster: ClusterArg,
        /// The lambda's name.
        #[arg(long, value_name = "NAME")]
        handler: String,
        /// The bundle: NAME.tar.gz or a lambda directory.
        #[arg(long, value_name = "TAR")]
        file: PathBuf,
        /// The access key to sign with.
        #[arg(long, value_name = "KEY", env = registry::ACCESS_KEY_ENV, hide_env_values = true, requires = "secret_key")]
        access_key: Option<String>,
        /// The secret key to sign with.
        #[arg(long, value_name = "SECRET", env = registry::SECRET_KEY_ENV, hide_env_values = true, requires = "access_key")]
        secret_key: Option<String>,
    },
    /// Run one worker in the foreground, its log on stdout.
    ///
    /// Its settings are FILE's; its state dir is the one FILE's
    /// `worker_dir` names ("" = worker/ beside FILE). Ctrl-C stops it.
    WorkerExec {
        /// The worker's config file (a config/worker-<N>.json, or any
        /// config.json).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// Errors of `ol cluster`; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The user asked for something that cannot be done as asked.
    #[error("{0}")]
    Usage(String),
    /// A filesystem operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A worker setting is wrong.
    #[error(transparent)]
    Config(#[from] ol_worker::config::ConfigError),
    /// A worker could not be started, stopped or cleaned up.
    #[error(transparent)]
    Worker(#[from] ol_worker::WorkerError),
    /// The registry refused or failed (a bundle, the keys, the store).
    #[error(transparent)]
    Registry(#[from] ol_registry::RegistryError),
    /// The code store cannot start.
    #[error(transparent)]
    Store(#[from] ol_registry::code_store::StoreError),
    /// Workers did not start; those that did were stopped again.
    #[error("{failures}\n{stopped}")]
    NotStarted {
        /// Each worker that failed: its name, port, log and what it said.
        failures: String,
        /// What became of the workers that did start.
        stopped: String,
    },
    /// The balancer failed.
    #[error(transparent)]
    Lb(#[from] ol_lb::LbError),
    /// Some workers do not answer (`status` printed which).
    #[error("{0}")]
    NotReady(String),
}

/// An [`ClusterError::Io`] maker for `map_err`.
pub(crate) fn io_err(
    what: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> ClusterError {
    let path = path.to_path_buf();
    move |source| ClusterError::Io { what, path, source }
}

/// Removes `file`; one that is not there is fine.
pub(crate) fn remove_if_present(file: &std::path::Path) -> Result<(), ClusterError> {
    match std::fs::remove_file(file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("cannot remove", file)(e)),
        _ => Ok(()),
    }
}

/// Runs one `ol cluster` command, printing what it did.
pub fn run(cmd: ClusterCommand) -> Result<(), ClusterError> {
    match cmd {
        ClusterCommand::New { cluster } => {
            let cluster = Cluster::create(&cluster.cluster)?;
            println!(
                "made cluster {} (template: {})",
                cluster.root().display(),
                cluster.template().display()
            );
            Ok(())
        }
        ClusterCommand::Setconf { cluster, settings } => {
            let cluster = Cluster::open(&cluster.cluster)?;
            template::setconf(&cluster, &settings)?;
            println!("updated {}", cluster.template().display());
            Ok(())
        }
        ClusterCommand::Workers {
            cluster,
            num_workers,
            port,
            lb_port,
            lb_policy,
        } => {
            let cluster = Cluster::open(&cluster.cluster)?;
            for w in workers::start(&cluster, num_workers, port)? {
                println!(
                    "{} started: pid {}, http://localhost:{}, log {}",
                    w.name,
                    w.pid,
                    w.port,
                    w.log.display()
                );
            }
            if let Some(lb_port) = lb_port {
                let state = lb::start(&cluster, lb_port, lb_policy).map_err(|e| {
                    ClusterError::Usage(format!(
                        "the workers started but the balancer did not: {e}; stop the workers with `ol cluster kill --cluster {}`",
                        cluster.root().display()
                    ))
                })?;
                println!(
                    "lb started: pid {}, {} (policy {}), log {}",
                    state.pid,
                    state.url(),
                    state.policy,
                    cluster.logs().join("lb.out").display()
                );
            }
            Ok(())
        }
        ClusterCommand::Status { cluster } => workers::status(&Cluster::open(&cluster.cluster)?),
        ClusterCommand::Kill { cluster } => {
            let cluster = Cluster::open(&cluster.cluster)?;
            for line in workers::kill(&cluster)? {
                println!("{line}");
            }
            Ok(())
        }
        ClusterCommand::Registry {
            cluster,
            port,
            host,
            access_key,
            secret_key,
            foreground,
        } => {
            let cluster = Cluster::open(&cluster.cluster)?;
            let listen = registry::Listen::parse(&host, port)?;
            let keys = registry::Keys {
                access_key,
                secret_key,
            };
            if foreground {
                return registry::serve(&cluster, listen, &keys);
            }
            let started = registry::start(&cluster, listen, &keys)?;
            if !listen.bind.ip().is_loopback() {
                eprintln!(
                    "note: the registry listens beyond this machine over plain HTTP: requests are signed (the secret never travels) but code travels in the clear; keep it on a network you trust"
                );
            }
            println!(
                "registry started: pid {}, {} (bucket {}), log {}",
                started.pid,
                started.endpoint,
                ol_registry::code_store::DEFAULT_BUCKET,
                started.log.display()
            );
            if !started.imported.is_empty() {
                println!(
                    "copied from registry/ into it: {}",
                    started.imported.join(", ")
                );
            }
            println!(
                "{} now reads lambdas from it: start the workers with `ol cluster workers --cluster {}`",
                cluster.template().display(),
                cluster.root().display()
            );
            Ok(())
        }
        ClusterCommand::Upload {
            cluster,
            handler,
            file,
            access_key,
            secret_key,
        } => {
            let cluster = Cluster::open(&cluster.cluster)?;
            let keys = access_key
                .zip(secret_key)
                .map(|(access_key, secret_key)| registry::Keys {
                    access_key,
                    secret_key,
                });
            let up = registry::upload(&cluster, &handler, &file, keys.as_ref())?;
            println!("uploaded {handler} ({} bytes) to {}", up.bytes, up.location);
            Ok(())
        }
        ClusterCommand::WorkerExec { config } => workers::exec(&config),
    }
}
