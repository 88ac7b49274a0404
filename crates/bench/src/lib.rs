//! The end-to-end benchmarks of `ol`, run as `ol bench`; the targets they
//! check are in docs/benchmarks.md.
//! Each benchmark yields result rows ([`output`]) shown as a table and
//! optionally written as JSON, CSV and a PNG plot ([`plot`]); `ol bench
//! report` runs them all and writes docs/benchmarks.md's numbers
//! ([`report`]). Without `--target`, a benchmark starts (and stops) a
//! worker of its own in a temporary directory; with one or more `--target
//! NAME=URL` it measures those servers, interleaved ([`load`]).
//!
//! This crate runs inside the `ol` binary: it starts its workers by
//! running that binary again ([`target::ol`]).

pub mod burst;
pub mod churn;
pub mod cold;
pub mod error;
pub mod first_call;
pub mod hot;
pub mod load;
pub mod output;
pub mod packages;
pub mod plot;
pub mod report;
pub mod stats;
pub mod target;
pub mod upstream;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

pub use error::BenchError;
use output::Row;

/// What a benchmark returns.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// The `ol bench` commands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Hot calls of one warm lambda over 1, 4, 16 keep-alive connections
    /// (seq: one connection, one call at a time; par: N connections).
    Hot(hot::HotArgs),
    /// Cold starts: the first call of each of N new lambdas on a warm
    /// worker started for the benchmark.
    Cold(cold::ColdArgs),
    /// How fast one new lambda goes from no sandbox to N busy ones: N
    /// calls at once, each holding its sandbox.
    Burst(burst::BurstArgs),
    /// Thousands of sandboxes made and torn down (each call evicts
    /// another's), then what the worker still holds: fails on any leak.
    Churn(churn::ChurnArgs),
    /// Time from the start of `ol worker up` to the first successful call,
    /// each run with a fresh worker directory.
    FirstCall(first_call::FirstCallArgs),
    /// A lambda needing numpy: its first call (install included), the first
    /// call of new numpy lambdas once numpy is installed, and hot calls.
    Numpy(packages::NumpyArgs),
    /// OpenLambda's benchmarks by name: py|pd × 64|1k|64k lambdas × seq|par
    /// (e.g. `ol bench ol py64-seq pd1k-par`; `py-seq-64` works too).
    Ol(upstream::OlArgs),
    /// Write OpenLambda's benchmark lambdas (bench-py-N, bench-pd-N) into a
    /// worker directory's registry, for `ol bench ol --target`.
    Init(upstream::InitArgs),
    /// Run every benchmark that has a target briefly and write the numbers, with
    /// their ratios to upstream OpenLambda, into docs/benchmarks.md.
    Report(report::ReportArgs),
}

/// Where to write results besides the table on stdout.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OutputArgs {
    /// Write the result rows as a JSON array to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the result rows as CSV to this file.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Draw latency CDFs and a throughput bar chart into this PNG file.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
}

/// Runs one `ol bench` command: its table on stdout, the files it asks
/// for, and an error when any call failed.
pub fn run(cmd: BenchCommand) -> Result<()> {
    let mut leaked = None;
    let (rows, out) = match cmd {
        BenchCommand::Hot(a) => (hot::run(&a)?, a.output),
        BenchCommand::Cold(a) => (cold::run(&a)?.rows, a.output),
        BenchCommand::Burst(a) => (burst::run(&a)?, a.output),
        BenchCommand::Churn(a) => {
            let outcome = churn::run(&a)?;
            eprintln!("ol bench: {}", outcome.summary());
            let leaks = outcome.leaks();
            if !leaks.is_empty() {
                leaked = Some(BenchError::Leaks(churn::describe(&leaks)));
            }
            (outcome.rows, a.output)
        }
        BenchCommand::FirstCall(a) => (first_call::run(&a)?, a.output),
        BenchCommand::Numpy(a) => {
            let outcome = packages::run(&a)?;
            if let Some(hits) = outcome.zygote_hits {
                eprintln!(
                    "ol bench: {hits} of {} new numpy lambdas forked from a zygote with numpy imported",
                    a.count
                );
            }
            (outcome.rows, a.output)
        }
        BenchCommand::Ol(a) => (upstream::run(&a)?, a.output),
        BenchCommand::Init(a) => return upstream::init(&a),
        BenchCommand::Report(a) => return report::run(&a),
    };
    emit(&rows, &out)?;
    if let Some(e) = leaked {
        return Err(e);
    }
    let failed: usize = rows.iter().map(|r| r.errors).sum();
    if failed > 0 {
        let calls: usize = rows.iter().map(|r| r.requests).sum();
        return Err(BenchError::CallsFailed { failed, calls });
    }
    Ok(())
}

/// Prints the table and writes the files `out` asks for.
pub fn emit(rows: &[Row], out: &OutputArgs) -> Result<()> {
    output::print_table(&mut std::io::stdout().lock(), rows)?;
    if let Some(path) = &out.json {
        output::write_json(path, rows)?;
    }
    if let Some(path) = &out.csv {
        output::write_csv(path, rows)?;
    }
    if let Some(path) = &out.plot {
        plot::draw(path, rows)?;
    }
    Ok(())
}

/// A progress bar of `len` steps on stderr, hidden when stderr is not a
/// terminal (so logs and pipes get only the results).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>14} [{bar:30}] {pos}/{len} {elapsed_precise}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}
