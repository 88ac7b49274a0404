//! `ol bench hot`: one warm lambda called back to back over 1, 4, 16
//! keep-alive connections, on a worker of its own or on `--target`s
//! measured side by side.

use bytes::Bytes;

use crate::OutputArgs;
use crate::load::{self, Pick, Plan};
use crate::output::{Row, RowKey};
use crate::target::{self, OwnBalancer, OwnWorker, Target};
use crate::{BenchError, Result};

/// `ol bench hot`'s options.
#[derive(Debug, clap::Args)]
pub struct HotArgs {
    /// Server to measure instead of a worker of the bench's own; repeat to
    /// compare several in one run (their slices are interleaved), e.g.
    /// --target ours=http://127.0.0.1:5000 --target upstream=http://127.0.0.1:5001
    #[arg(long = "target", value_name = "[NAME=]URL")]
    pub targets: Vec<String>,
    /// Lambda to call (with --target it must exist there).
    #[arg(long, default_value = "hello")]
    pub lambda: String,
    /// Request body.
    #[arg(long, default_value = r#"{"name": "bench"}"#)]
    pub body: String,
    /// Connection counts to measure, comma-separated (1 is `seq`, more is
    /// `par`).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub connections: Vec<usize>,
    /// Measured seconds per connection count and target.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Seconds of unrecorded calls before each measurement.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Slices each measurement is cut into; targets take turns per slice.
    #[arg(long, default_value_t = 4)]
    pub rounds: usize,
    /// Override a setting of the bench's own worker (repeatable).
    #[arg(short = 'o', long = "option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// Also measure through a balancer (`ol lb`, policy name) started in
    /// front of the worker (or the --targets): one more target, `lb`,
    /// interleaved with the others.
    #[arg(long)]
    pub lb: bool,
    /// Call over gRPC (`ol.v1.Lambda/Invoke`, one HTTP/2 connection per
    /// connection) instead of HTTP/1.1; the rows are bench `hot-grpc`.
    #[arg(long)]
    pub grpc: bool,
    /// Files to write the rows to.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Measures hot calls at each connection count; one row per count and
/// target.
pub fn run(args: &HotArgs) -> Result<Vec<Row>> {
    if args.connections.is_empty() || args.connections.contains(&0) {
        return Err(BenchError::Usage(
            "--connections needs positive counts, e.g. --connections 1,4,16".into(),
        ));
    }
    let (mut targets, _own) = targets_or_own(&args.targets, &args.options)?;
    let _lb = OwnBalancer::start_if(args.lb, &mut targets)?;
    let plan = Plan {
        pick: Pick::One(args.lambda.clone()),
        body: Bytes::from(args.body.clone()),
        connections: 1,
        seconds: args.seconds,
        warmup: args.warmup,
        rounds: args.rounds,
        grpc: args.grpc,
    };
    let bench = if args.grpc { "hot-grpc" } else { "hot" };
    measure_connections(bench, &targets, &plan, &args.connections)
}

/// The targets given, or (when none) a worker started for the bench, which
/// lives as long as the returned guard.
pub fn targets_or_own(
    specs: &[String],
    options: &[String],
) -> Result<(Vec<Target>, Option<OwnWorker>)> {
    if specs.is_empty() {
        let own = OwnWorker::start(options)?;
        return Ok((vec![own.target()], Some(own)));
    }
    Ok((target::parse_all(specs)?, None))
}

/// Measures `plan` at each connection count on every target; one row per
/// (count, target).
pub fn measure_connections(
    bench: &str,
    targets: &[Target],
    plan: &Plan,
    connections: &[usize],
) -> Result<Vec<Row>> {
    let rt = load::runtime()?;
    let slices = (connections.len() * targets.len() * plan.rounds.max(1)) as u64;
    let bar = crate::progress(slices, bench);
    let mut rows = Vec::new();
    for &conns in connections {
        let plan = Plan {
            connections: conns,
            ..plan.clone()
        };
        let samples = rt.block_on(load::measure(targets, &plan, &bar))?;
        for (t, s) in targets.iter().zip(samples) {
            rows.push(Row::new(
                RowKey {
                    bench,
                    target: &t.name,
                    lambda: &plan.pick.label(),
                    connections: conns,
                },
                s,
            ));
        }
    }
    bar.finish_and_clear();
    Ok(rows)
}
