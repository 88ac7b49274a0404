//! `ol`: the one command of the platform (docs/architecture.md §1.1). It parses the
//! command line and hands each command to the crate that does the work.

mod admin;
mod lb_cmd;
mod trace_cmd;
mod worker_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Serverless Python functions in lightweight Linux sandboxes.
#[derive(Debug, Parser)]
#[command(name = "ol", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, start, stop and inspect a worker.
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// Manage the lambdas in a worker's registry.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Built-in benchmarks.
    #[command(subcommand)]
    Bench(ol_bench::BenchCommand),
    /// Read trace files written by `ol worker up --trace FILE`.
    #[command(subcommand)]
    Trace(trace_cmd::TraceCommand),
    /// Several workers of one machine in a cluster directory (OpenLambda's
    /// admin tool; `-cluster DIR` works as `--cluster DIR`).
    #[command(subcommand)]
    Cluster(ol_cluster::ClusterCommand),
    /// A balancer in front of workers (HAProxy, with our policies:
    /// round-robin, least-loaded, name, content).
    #[command(subcommand)]
    Lb(ol_lb::LbCommand),
}

/// The worker directory option every worker command takes.
#[derive(Debug, Clone, clap::Args)]
struct DirArg {
    /// Worker directory.
    #[arg(short = 'p', long = "path", default_value = "default-ol")]
    path: PathBuf,
}

#[derive(Debug, Subcommand)]
enum WorkerCommand {
    /// Make a worker directory: config.json, registry with example lambdas,
    /// the sandboxes' base root file system.
    Init {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        base: worker_cmd::BaseArgs,
    },
    /// Start a worker (in the foreground, or detached with -d).
    Up {
        #[command(flatten)]
        dir: DirArg,
        /// Run in the background; logs go to DIR/logs/worker.log.
        #[arg(short = 'd', long)]
        detach: bool,
        /// Override a config.json setting for this run (dotted keys:
        /// -o limits.mem_mb=128). Repeatable.
        #[arg(short = 'o', long = "option", value_name = "KEY=VALUE")]
        options: Vec<String>,
        /// Write a Chrome trace (Perfetto, chrome://tracing) of every
        /// call's phases to FILE, finished on `ol worker down`; same as
        /// -o trace.file=FILE.
        #[arg(long, value_name = "FILE")]
        trace: Option<PathBuf>,
    },
    /// Stop the worker and remove every sandbox it made.
    Down {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Show the worker's pid, port, lambdas, sandboxes and memory.
    Status {
        #[command(flatten)]
        dir: DirArg,
    },
    /// After a crash: kill the worker and its sandboxes, remove leftovers.
    ForceCleanup {
        #[command(flatten)]
        dir: DirArg,
    },
}

fn main() -> ExitCode {
    // A sandbox init is this same binary; it must run before anything else
    // (no threads, no allocation-heavy setup).
    ol_sandbox::sock::init::run_if_init();
    if let Err(e) = ol_sandbox::seal_inherited_descriptors() {
        eprintln!("ol: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse_from(ol_cluster::accept_go_flags(std::env::args_os()));
    let result = match cli.command {
        Command::Worker(cmd) => worker_cmd::run(cmd),
        Command::Admin(cmd) => admin::run(cmd),
        Command::Bench(cmd) => ol_bench::run(cmd).map_err(anyhow::Error::from),
        Command::Trace(cmd) => trace_cmd::run(cmd),
        Command::Cluster(cmd) => ol_cluster::run(cmd).map_err(anyhow::Error::from),
        Command::Lb(cmd) => lb_cmd::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ol: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
