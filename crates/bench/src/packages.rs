//! `ol bench numpy`: a lambda whose requirements.txt asks for numpy. Its
//! first call on a fresh worker (install included), the first call of new
//! numpy lambdas once numpy is installed (zygote hit), and hot calls.

use std::time::Duration;

use bytes::Bytes;

use crate::OutputArgs;
use crate::hot::measure_connections;
use crate::load::{self, Pick, Plan};
use crate::output::{Row, RowKey};
use crate::target::{OwnWorker, Target};
use crate::{BenchError, Result};

/// A numpy lambda: its answer proves numpy was imported and ran.
pub const NUMPY_PY: &str = "import numpy as np\n\n\ndef f(event):\n    \
    return {\"numpy\": np.__version__, \"sum\": int(np.arange(10).sum())}\n";

/// `ol bench numpy`'s options.
#[derive(Debug, clap::Args)]
pub struct NumpyArgs {
    /// How many new numpy lambdas to call once each after the install.
    #[arg(long, default_value_t = 20)]
    pub count: usize,
    /// Measured seconds of hot calls.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Connection counts of the hot calls, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub connections: Vec<usize>,
    /// Override a setting of the benchmark's worker (repeatable).
    #[arg(short = 'o', long = "option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// Files to write the rows to.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The rows, and how many of the new numpy lambdas forked from a zygote
/// that had numpy imported (the worker's `zygote_hits` during them).
pub struct NumpyOutcome {
    /// `numpy-first`, then (once numpy installed) `numpy-cold` and `numpy-hot`.
    pub rows: Vec<Row>,
    /// New numpy lambdas forked from a numpy zygote; `None` when not measured.
    pub zygote_hits: Option<u64>,
}

/// Runs the numpy benchmark on a worker of its own.
pub fn run(args: &NumpyArgs) -> Result<NumpyOutcome> {
    if args.count == 0 || args.connections.is_empty() || args.connections.contains(&0) {
        return Err(BenchError::Usage(
            "--count and --connections need positive values".into(),
        ));
    }
    let worker = OwnWorker::start(&args.options)?;
    let files = [("f.py", NUMPY_PY), ("requirements.txt", "numpy\n")];
    let names: Vec<String> = (0..args.count).map(|i| format!("np-{i}")).collect();
    for name in names.iter().chain([&"np-hot".to_string()]) {
        worker.add_lambda(name, &files)?;
    }
    let target = worker.target();
    let body = Bytes::from_static(b"{}");
    let rt = load::runtime()?;
    let bar = crate::progress(1 + args.count as u64, "numpy");
    let first = rt.block_on(load::call_each(
        &target,
        &["np-hot".to_string()],
        &body,
        &bar,
    ))?;
    let key = |bench, lambda| RowKey {
        bench,
        target: "ours",
        lambda,
        connections: 1,
    };
    let installed = first.errors == 0;
    let mut rows = vec![Row::new(key("numpy-first", "np-hot"), first)];
    if !installed {
        // Every other call would fail the same way; the first error says why.
        bar.finish_and_clear();
        return Ok(NumpyOutcome {
            rows,
            zygote_hits: None,
        });
    }
    let hits_before = zygote_hits(&target);
    let cold = rt.block_on(load::call_each(&target, &names, &body, &bar))?;
    let zygote_hits = zygote_hits(&target)
        .zip(hits_before)
        .map(|(after, before)| after.saturating_sub(before));
    bar.finish_and_clear();
    rows.push(Row::new(key("numpy-cold", "np-[0,N)"), cold));
    let plan = Plan {
        pick: Pick::One("np-hot".into()),
        body,
        connections: 1,
        seconds: args.seconds,
        warmup: 0.5,
        rounds: 1,
        grpc: false,
    };
    rows.extend(measure_connections(
        "numpy-hot",
        &[target],
        &plan,
        &args.connections,
    )?);
    Ok(NumpyOutcome { rows, zygote_hits })
}

/// The worker's `zygote_hits` counter, if its `/stats` has one.
fn zygote_hits(target: &Target) -> Option<u64> {
    let stats = ol_worker::client::stats(&target.url(""), Duration::from_secs(10)).ok()?;
    stats.recorded.counters.get("zygote_hits").copied()
}
