//! `ol`: the one command of the platform (docs/architecture.md §1.1). It parses the
//! command line and hands each command to the crate that does the work.

mod admin;
mod lambda_cmd;
mod lb_cmd;
mod trace_cmd;
mod worker_cmd;
mod worker_dir;

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
    /// Call a lambda of the running worker and print the answer's body.
    Invoke(lambda_cmd::InvokeArgs),
    /// Make a lambda directory from a template, with a test to run.
    New {
        /// The lambda's name (and its directory's).
        name: String,
        /// What the lambda is.
        #[arg(long, short = 't', value_enum, default_value = "python")]
        template: lambda_cmd::Template,
        /// Where to make it [default: the current directory].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print a lambda's output (stdout, stderr) and failed calls, each line
    /// with its time, sandbox and request id; kept after its sandboxes.
    Logs(lambda_cmd::LogsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// The worker directory option every worker command takes (resolved in
/// `worker_dir.rs`).
#[derive(Debug, Clone, clap::Args)]
struct DirArg {
    /// Worker directory [default: $OL_DIR, else ./default-ol].
    #[arg(short = 'p', long = "path", value_name = "DIR")]
    path: Option<PathBuf>,
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
        /// Print one JSON object (with the worker's whole /stats).
        #[arg(long)]
        json: bool,
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
        Command::Invoke(args) => lambda_cmd::invoke(&args),
        Command::Logs(args) => lambda_cmd::logs(&args),
        Command::New {
            name,
            template,
            dir,
        } => lambda_cmd::new(&name, template, &lambda_cmd::parent_dir(dir)),
        Command::Completion { shell } => completion(shell),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ol: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// docs/cli.md: the `--help` of every command, depth first.
#[cfg(test)]
fn cli_reference() -> String {
    use clap::CommandFactory;
    fn walk(cmd: &mut clap::Command, path: &str, out: &mut String) {
        let help = cmd.render_long_help().to_string();
        out.push_str(&format!(
            "## {path}\n\n```text\n{}\n```\n\n",
            help.trim_end()
        ));
        for sub in cmd.get_subcommands_mut() {
            if sub.get_name() == "help" || sub.is_hide_set() {
                continue;
            }
            let name = format!("{path} {}", sub.get_name());
            walk(sub, &name, out);
        }
    }
    let mut out = String::from(
        "# Command-line reference\n\n\
         Every `ol` command's `--help`, generated from the command's definition\n\
         (`crates/ol/src/main.rs`, test `cli_reference_is_current`, which fails when\n\
         this file is stale; `OL_WRITE_CLI_DOCS=1 cargo test -p ol --bin ol\n\
         cli_reference` rewrites it). The README has the commands by task.\n\n",
    );
    let mut cli = Cli::command().term_width(0);
    cli.build();
    walk(&mut cli, "ol", &mut out);
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

/// `ol completion SHELL`: the script on stdout (a closed pipe, as with
/// `| head`, is no error).
fn completion(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use clap::CommandFactory;
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "ol", &mut script);
    match std::io::stdout().lock().write_all(&script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `e` and its causes, joined by `: `, each said once: many errors quote
/// their cause in their own message already (`cannot read F: No such
/// file`), and the chain would repeat it.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let said = cause.to_string();
        if said.is_empty() || text.contains(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    /// docs/cli.md is every command's `--help`, generated from this very
    /// definition: the test fails when it is stale, and rewrites it when
    /// run with `OL_WRITE_CLI_DOCS=1`.
    #[test]
    fn cli_reference_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md");
        let reference = super::cli_reference();
        if std::env::var_os("OL_WRITE_CLI_DOCS").is_some() {
            std::fs::write(&path, &reference).expect("write docs/cli.md");
        }
        let written = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            written == reference,
            "docs/cli.md is stale: run `OL_WRITE_CLI_DOCS=1 cargo test -p ol --bin ol cli_reference` and commit it"
        );
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let said = io.to_string();
        let e = anyhow::Error::new(io).context(format!("cannot read /x/config.json: {said}"));
        assert_eq!(
            super::error_text(&e),
            format!("cannot read /x/config.json: {said}")
        );
        let e = anyhow::anyhow!("disk full").context("cannot write /y");
        assert_eq!(super::error_text(&e), "cannot write /y: disk full");
    }
}
