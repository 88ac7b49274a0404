//! `ol bench report`: runs every benchmark that has a target briefly on workers
//! of its own and writes today's numbers, checked against the targets and
//! compared with upstream OpenLambda's measured numbers
//! (docs/benchmarks.md, "Upstream OpenLambda"), into a section of docs/benchmarks.md. Text
//! outside that section's markers is kept as it is.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::burst::{self, BurstArgs};
use crate::churn::{self, ChurnArgs, ChurnOutcome};
use crate::cold::{self, ColdArgs};
use crate::error::chain;
use crate::first_call::{self, FirstCallArgs};
use crate::hot::{self, HotArgs};
use crate::output::{Row, human_us};
use crate::packages::{self, NumpyArgs};
use crate::upstream::{self, OlArgs};
use crate::{BenchError, Result};
use crate::{OutputArgs, emit};

/// The target name of measurements through the balancer
/// ([`crate::target::OwnBalancer`]).
const BALANCER_TARGET: &str = "lb";
/// The balancer's targets (issue #15, docs/lb.md): added p50 at one
/// connection, and the share of direct req/s kept.
const LB_ADDED_P50_US: f64 = 60.0;
const LB_MIN_RATIO: f64 = 0.70;

/// New lambdas called at once to measure the sandbox creation rate.
const CREATION_BATCH: usize = 4;
/// Busy sandboxes of one new lambda in the report's burst.
const BURST_INSTANCES: usize = 100;
/// The churn's lambdas, and the sandboxes its worker has room for.
const CHURN_LAMBDAS: usize = 400;
const CHURN_LIVE: usize = 128;

const BEGIN: &str = "<!-- BEGIN ol bench report: generated, edit outside these markers -->";
const END: &str = "<!-- END ol bench report -->";

/// `ol bench report`'s options.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Markdown file to write the section into (created if missing).
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub out: PathBuf,
    /// Measured seconds of each hot measurement.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// New lambdas of the cold-start benchmark.
    #[arg(long, default_value_t = 200)]
    pub cold_count: usize,
    /// Fresh workers of the first-call benchmark.
    #[arg(long, default_value_t = 5)]
    pub first_call_runs: usize,
    /// New numpy lambdas once numpy is installed.
    #[arg(long, default_value_t = 10)]
    pub numpy_count: usize,
    /// Sandboxes made and torn down by the churn (the leak check).
    #[arg(long, default_value_t = 10_000)]
    pub churn_count: usize,
    /// Files to write every row to (`--plot` is also linked from the report).
    #[command(flatten)]
    pub output: OutputArgs,
}

/// What the report measured; a benchmark that could not run leaves its
/// error instead of rows.
#[derive(Default)]
struct Measured {
    rows: Vec<Row>,
    failures: Vec<String>,
    idle_private_kib: Vec<u64>,
    /// New numpy lambdas that forked from a numpy zygote.
    numpy_zygote_hits: Option<u64>,
    /// The churn's counts (its row is in `rows`).
    churn: Option<ChurnOutcome>,
}

impl Measured {
    fn add(&mut self, what: &str, result: Result<Vec<Row>>) {
        match result {
            Ok(rows) => self.rows.extend(rows),
            Err(e) => {
                let why = chain(&e);
                eprintln!("ol bench report: {what} failed: {why}");
                self.failures.push(format!("{what}: {why}"));
            }
        }
    }

    /// The direct (not through the balancer) row of `bench` at
    /// `connections`.
    fn row(&self, bench: &str, connections: usize) -> Option<&Row> {
        self.rows.iter().find(|r| {
            r.bench == bench && r.connections == connections && r.target != BALANCER_TARGET
        })
    }
}

/// Runs every benchmark and writes the report section (and the plot).
pub fn run(args: &ReportArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let load_at_start = load_average();
    let fork_us = fork_floor_us();
    let mut m = Measured::default();
    // First, before any of the report's workers has run: it times worker
    // start-up, the part most sensitive to other work on the machine.
    let first_args = FirstCallArgs {
        runs: args.first_call_runs,
        options: Vec::new(),
        output: OutputArgs::default(),
    };
    m.add("first-call", first_call::run(&first_args));
    settle();
    let hot_args = HotArgs {
        targets: Vec::new(),
        lambda: "hello".into(),
        body: crate::cold::HELLO_BODY.into(),
        connections: vec![1, 4, 16],
        seconds: args.seconds,
        warmup: 1.0,
        // Direct and through the balancer take turns: direct, lb,
        // direct, lb at each connection count.
        rounds: 2,
        options: Vec::new(),
        lb: true,
        grpc: false,
        output: OutputArgs::default(),
    };
    m.add("hot", hot::run(&hot_args));
    settle();
    // The same over gRPC (`hot-grpc` rows), direct and through the balancer.
    let grpc_args = HotArgs {
        connections: vec![1, 4],
        grpc: true,
        ..hot_args
    };
    m.add("hot-grpc", hot::run(&grpc_args));
    settle();
    // One at a time for latency, then CREATION_BATCH at a time for the rate.
    for connections in [1, CREATION_BATCH] {
        let cold_args = ColdArgs {
            count: args.cold_count,
            connections,
            targets: Vec::new(),
            options: Vec::new(),
            // Latency through the balancer too (its batches alternate
            // with the direct ones); the rate is the worker's alone.
            lb: connections == 1,
            output: OutputArgs::default(),
        };
        match cold::run(&cold_args) {
            Ok(o) => {
                m.rows.extend(o.rows);
                if connections == 1 {
                    m.idle_private_kib = o.idle_private_kib;
                }
            }
            Err(e) => m.add("cold", Err(e)),
        }
        settle();
    }
    let burst_args = BurstArgs {
        instances: BURST_INSTANCES,
        hold_ms: 2000,
        runs: 3,
        targets: Vec::new(),
        options: Vec::new(),
        output: OutputArgs::default(),
    };
    m.add("burst", burst::run(&burst_args));
    settle();
    let numpy_args = NumpyArgs {
        count: args.numpy_count,
        seconds: args.seconds,
        connections: vec![1],
        options: Vec::new(),
        output: OutputArgs::default(),
    };
    match packages::run(&numpy_args) {
        Ok(o) => {
            m.rows.extend(o.rows);
            m.numpy_zygote_hits = o.zygote_hits;
        }
        Err(e) => m.add("numpy", Err(e)),
    }
    settle();
    let ol_args = OlArgs {
        names: vec!["py64-seq".into(), "py64-par".into(), "pd64-seq".into()],
        targets: Vec::new(),
        seconds: args.seconds,
        tasks: 32,
        no_warmup: false,
        rounds: 1,
        options: Vec::new(),
        lb: false,
        output: OutputArgs::default(),
    };
    m.add("ol py64-seq py64-par pd64-seq", upstream::run(&ol_args));
    // Last: no benchmark shares the machine with the kernel's teardown
    // of its ~10,000 sandboxes (namespaces, cgroups, memory).
    settle();
    let churn_args = ChurnArgs {
        count: args.churn_count,
        lambdas: CHURN_LAMBDAS,
        live: CHURN_LIVE,
        connections: CREATION_BATCH,
        options: Vec::new(),
        output: OutputArgs::default(),
    };
    match churn::run(&churn_args) {
        Ok(o) => {
            m.rows.extend(o.rows.iter().cloned());
            m.churn = Some(o);
        }
        Err(e) => m.add("churn", Err(e)),
    }
    emit(&m.rows, &args.output)?;
    let conditions = Conditions {
        took_s: started.elapsed().as_secs_f64(),
        load_at_start,
        load_at_end: load_average(),
        fork_us,
    };
    let section = render(&m, args, &conditions);
    let old = std::fs::read_to_string(&args.out).unwrap_or_else(|_| "# Benchmarks\n".into());
    std::fs::write(&args.out, splice(&old, &section)).map_err(|source| BenchError::File {
        what: "cannot write",
        path: args.out.clone(),
        source,
    })?;
    println!("wrote {}", args.out.display());
    Ok(())
}

/// `old` with the text between the markers replaced by `section` (or,
/// without markers, `section` inserted after the title line).
fn splice(old: &str, section: &str) -> String {
    let block = format!("{BEGIN}\n{section}{END}\n");
    let begin = old.find(BEGIN);
    let end = begin.and_then(|b| old[b..].find(END).map(|e| b + e));
    if let (Some(b), Some(e)) = (begin, end) {
        let after = old[e + END.len()..].trim_start_matches('\n');
        return format!(
            "{}{block}{}{after}",
            &old[..b],
            if after.is_empty() { "" } else { "\n" }
        );
    }
    match old.split_once('\n') {
        Some((title, rest)) if title.starts_with("# ") => {
            format!("{title}\n\n{block}\n{}", rest.trim_start_matches('\n'))
        }
        _ => format!("{block}\n{old}"),
    }
}

/// How a measured row compares with upstream OpenLambda's number.
enum Versus {
    /// Upstream's latency (µs) over our p50.
    LowerP50(f64),
    /// Our req/s over upstream's.
    MoreReqPerSec(f64),
    Nothing,
}

/// One line of the targets table: which row it reads and how.
struct Metric {
    name: &'static str,
    bench: &'static str,
    connections: usize,
    target: &'static str,
    /// Whether the row meets the target (given the CPU count); `None`
    /// when no target is set for it.
    met: Option<fn(&Row, usize) -> bool>,
    today: fn(&Row, usize) -> String,
    /// Upstream OpenLambda's number on this machine kind
    /// (docs/benchmarks.md, "Upstream OpenLambda"), and the middle of its range to compare.
    upstream: &'static str,
    versus: Versus,
}

const METRICS: &[Metric] = &[
    Metric {
        name: "hot, 1 keep-alive connection",
        bench: "hot",
        connections: 1,
        target: "p50 ≤ 100 µs, p99 ≤ 300 µs",
        met: Some(|r, _| r.p50_us <= 100.0 && r.p99_us <= 300.0),
        today: |r, _| {
            format!(
                "p50 {}, p99 {} ({:.0} req/s)",
                human_us(r.p50_us),
                human_us(r.p99_us),
                r.req_per_sec
            )
        },
        upstream: "68.6 req/s, p50 15.96 ms, p99 20.2 ms",
        versus: Versus::LowerP50(15_960.0),
    },
    Metric {
        name: "hot, 4 connections",
        bench: "hot",
        connections: 4,
        target: "≥ 20,000 req/s, p99 ≤ 1 ms",
        met: Some(|r, _| r.req_per_sec >= 20_000.0 && r.p99_us <= 1_000.0),
        today: req_per_sec_p50_p99,
        upstream: "3,550–3,690 req/s, p99 3.6–4.7 ms",
        versus: Versus::MoreReqPerSec(3_620.0),
    },
    Metric {
        name: "hot, 16 connections",
        bench: "hot",
        connections: 16,
        target: "(none)",
        met: None,
        today: req_per_sec_p50_p99,
        upstream: "3,070–3,780 req/s, p99 8.9–10.2 ms",
        versus: Versus::MoreReqPerSec(3_425.0),
    },
    Metric {
        name: "new lambda on a warm worker (no packages)",
        bench: "cold",
        connections: 1,
        target: "p50 ≤ 2.5 ms, p99 ≤ 8 ms",
        met: Some(|r, _| r.p50_us <= 2_500.0 && r.p99_us <= 8_000.0),
        today: p50_p99_of_lambdas,
        upstream: "27–30 ms",
        versus: Versus::LowerP50(28_500.0),
    },
    Metric {
        name: "first call after `worker up`",
        bench: "first-call",
        connections: 1,
        target: "≤ 40 ms",
        met: Some(|r, _| r.p50_us <= 40_000.0),
        today: |r, _| {
            format!(
                "p50 {}, max {} ({} fresh workers)",
                human_us(r.p50_us),
                human_us(r.max_us),
                r.requests
            )
        },
        upstream: "99–115 ms",
        versus: Versus::LowerP50(107_000.0),
    },
    Metric {
        name: "new lambda needing installed packages (numpy), zygote hit",
        bench: "numpy-cold",
        connections: 1,
        target: "p50 ≤ 5 ms",
        met: Some(|r, _| r.p50_us <= 5_000.0),
        today: p50_p99_of_lambdas,
        upstream: "35–43 ms",
        versus: Versus::LowerP50(39_000.0),
    },
    Metric {
        name: "sandbox creation rate",
        bench: "cold",
        connections: CREATION_BATCH,
        target: "≥ 200 per second per core (no leaks after 10,000: next row)",
        met: Some(|r, cpus| creations_per_core(r, cpus) >= 200.0),
        today: |r, cpus| {
            format!(
                "{:.0} per second per core ({} new lambdas, {} at a time, in {:.1} s on \
                 {cpus} CPUs)",
                creations_per_core(r, cpus),
                r.requests,
                r.connections,
                r.seconds
            )
        },
        upstream: "",
        versus: Versus::Nothing,
    },
    Metric {
        name: "burst: one new lambda from no sandbox to 100 busy ones",
        bench: "burst",
        connections: BURST_INSTANCES,
        target: "≤ 200 ms",
        met: Some(|r, _| r.max_us <= 200_000.0),
        today: |r, _| {
            format!(
                "{} to the last start (p50 {}; {} calls, {} at a time)",
                human_us(r.max_us),
                human_us(r.p50_us),
                r.requests,
                r.connections
            )
        },
        upstream: "",
        versus: Versus::Nothing,
    },
    Metric {
        name: "numpy lambda, first call on a fresh worker (install included)",
        bench: "numpy-first",
        connections: 1,
        target: "≤ 1.5 s",
        met: Some(|r, _| r.p50_us <= 1_500_000.0),
        today: |r, _| human_us(r.p50_us),
        upstream: "5.4–5.7 s",
        versus: Versus::LowerP50(5_550_000.0),
    },
    Metric {
        name: "numpy lambda hot, 1 connection",
        bench: "numpy-hot",
        connections: 1,
        target: "(none)",
        met: None,
        today: |r, _| format!("{:.0} req/s, p50 {}", r.req_per_sec, human_us(r.p50_us)),
        upstream: "68 req/s",
        versus: Versus::MoreReqPerSec(68.0),
    },
];

fn req_per_sec_p50_p99(r: &Row, _: usize) -> String {
    format!(
        "{:.0} req/s, p50 {}, p99 {}",
        r.req_per_sec,
        human_us(r.p50_us),
        human_us(r.p99_us)
    )
}

fn p50_p99_of_lambdas(r: &Row, _: usize) -> String {
    format!(
        "p50 {}, p99 {} ({} lambdas)",
        human_us(r.p50_us),
        human_us(r.p99_us),
        r.requests
    )
}

fn creations_per_core(r: &Row, cpus: usize) -> f64 {
    r.requests as f64 / r.seconds.max(1e-9) / cpus.max(1) as f64
}

/// A pause between benchmarks, so the teardown of the previous one's
/// worker (hundreds of sandbox processes exiting, namespaces and cgroups
/// released) does not overlap the next one's measurements.
fn settle() {
    std::thread::sleep(std::time::Duration::from_secs(3));
}

/// How the run went, apart from its numbers: how long it took and how
/// busy the machine was (other work inflates latencies).
struct Conditions {
    took_s: f64,
    load_at_start: String,
    load_at_end: String,
    /// Median µs from a Python `os.fork` to the child's first write, in
    /// this run ([`fork_floor_us`]), if it could be measured.
    fork_us: Option<f64>,
}

/// What a fork costs on this machine today: VMs of the same kind differ
/// (two of them forked 2.2× apart, and every other number followed), and
/// every cold start pays for a fork and its copy-on-write faults. 300
/// forks of a bare `python3`, each child writing one byte to a pipe; the
/// median in µs.
const FORK_FLOOR_PY: &str = r#"import os, time
ts = []
for _ in range(300):
    r, w = os.pipe()
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.write(w, b"x")
        os._exit(0)
    os.read(r, 1)
    ts.append(time.perf_counter() - t)
    os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
ts.sort()
print(ts[len(ts) // 2] * 1e6)
"#;

/// The median µs of [`FORK_FLOOR_PY`] run by the host's `python3`.
fn fork_floor_us() -> Option<f64> {
    let out = std::process::Command::new("python3")
        .args(["-I", "-c", FORK_FLOOR_PY])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// This machine kind's fork median on a quiet day ("Floors" in
/// docs/benchmarks.md, measured the same way).
const FORK_FLOOR_QUIET_US: f64 = 434.0;

/// The 1-minute load average.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

/// How fast this machine forked at the start of the run, against its
/// kind on a quiet day (see [`fork_floor_us`]).
fn fork_sentence(fork_us: Option<f64>) -> String {
    match fork_us {
        Some(us) => format!(
            "How fast the machine was: a Python fork took {us:.0} µs to a ready child (median \
             of 300, at the start), {:.1}× the {FORK_FLOOR_QUIET_US:.0} µs of this machine kind \
             on a quiet day; every cold start pays for a fork.",
            us / FORK_FLOOR_QUIET_US
        ),
        None => "How fast the machine was: not measured (no `python3` to fork).".into(),
    }
}

fn render(m: &Measured, args: &ReportArgs, run: &Conditions) -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(s, "## Today's numbers (`ol bench report`)\n");
    let command = match &args.output.plot {
        Some(p) => format!("--out {} --plot {}", args.out.display(), p.display()),
        None => format!("--out {}", args.out.display()),
    };
    let _ = writeln!(
        s,
        "Generated {} by `ol bench report {command}` (commit {}, {cpus} CPUs, \
         Linux {}, {:.0} s in all, 1-minute load average {} at the start and {} \
         at the end, the workers' directories in {}). Hot: {} s per connection count after 1 s of \
         warm-up; cold: {} new lambdas; first call: {} fresh workers; numpy: {} \
         new lambdas; OpenLambda's benches: {} s each after one call of each \
         lambda. One run of each, on a shared 2-vCPU VM: read p99s as \
         indications. {} Upstream numbers are from \"Upstream OpenLambda\" below (same \
         machine kind, measured earlier, not in this run).\n",
        utc_now(),
        git_commit(),
        kernel.trim(),
        run.took_s,
        run.load_at_start,
        run.load_at_end,
        std::env::temp_dir().display(),
        args.seconds,
        args.cold_count,
        args.first_call_runs,
        args.numpy_count,
        args.seconds,
        fork_sentence(run.fork_us),
    );
    let _ = writeln!(
        s,
        "| metric | target | today | met | upstream OpenLambda | vs upstream |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for metric in METRICS {
        let row = m
            .row(metric.bench, metric.connections)
            .filter(|r| r.errors == 0 && r.requests > 0);
        let (today, met, versus) = match row {
            Some(r) => (
                (metric.today)(r, cpus),
                metric.met.map_or("", |met| yes_no(met(r, cpus))),
                match metric.versus {
                    Versus::LowerP50(up) if r.p50_us >= up => {
                        format!("{:.1}× higher", r.p50_us / up)
                    }
                    Versus::LowerP50(up) if r.p50_us > 0.0 => {
                        format!("{:.1}× lower", up / r.p50_us)
                    }
                    Versus::MoreReqPerSec(up) => format!("{:.1}× the req/s", r.req_per_sec / up),
                    _ => String::new(),
                },
            ),
            None => (missing(m, metric.bench), "–", String::new()),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {today} | {met} | {} | {versus} |",
            metric.name, metric.target, metric.upstream
        );
    }
    let mut kib = m.idle_private_kib.clone();
    kib.sort_unstable();
    let (today, met) = match kib.get(kib.len() / 2) {
        Some(&median) => (
            format!(
                "median {:.2} MiB private, all of a sandbox's processes (max {:.2} MiB; {} idle sandboxes after the cold run)",
                median as f64 / 1024.0,
                kib.last().copied().unwrap_or(0) as f64 / 1024.0,
                kib.len()
            ),
            yes_no(median <= 1536),
        ),
        None => ("not measured".to_string(), "–"),
    };
    let _ = writeln!(
        s,
        "| idle sandbox memory | ≤ 1.5 MiB beyond the zygote's shared pages | {today} | {met} | | |"
    );
    let (today, met) = match (&m.churn, m.row("churn", CREATION_BATCH)) {
        (Some(c), Some(r)) => {
            let leaks = c.leaks();
            (
                format!(
                    "{} sandboxes made, {} torn down; {}; {:.0} per second per core with \
                     the teardowns ({} at a time, room for {} at once)",
                    c.created,
                    c.destroyed,
                    if leaks.is_empty() {
                        "no cgroup, process, descriptor, scratch dir or mount left behind"
                            .to_string()
                    } else {
                        churn::describe(&leaks)
                    },
                    creations_per_core(r, cpus),
                    r.connections,
                    CHURN_LIVE,
                ),
                yes_no(leaks.is_empty() && c.created >= 10_000 && r.errors == 0),
            )
        }
        _ => (missing(m, "churn"), "–"),
    };
    let _ = writeln!(
        s,
        "| sandbox churn: leaks | none after 10,000 made and torn down | {today} | {met} | | |"
    );
    if let Some(hits) = m.numpy_zygote_hits {
        let _ = writeln!(
            s,
            "\n{hits} of the {} new numpy lambdas forked from a zygote that had numpy \
             imported (the worker's `zygote_hits`).",
            args.numpy_count
        );
    }
    if let Some(plot) = &args.output.plot {
        let link = match (plot.parent(), args.out.parent()) {
            (Some(a), Some(b)) if a == b => plot.file_name().map(PathBuf::from),
            _ => None,
        };
        let link = link.unwrap_or_else(|| plot.clone());
        let _ = writeln!(
            s,
            "\n![latency CDFs and throughput of this run]({})",
            link.display()
        );
    }
    let through = balancer_overheads(&m.rows);
    if !through.is_empty() {
        let _ = writeln!(
            s,
            "\nThrough the balancer (`ol lb`, policy name, in front of the same worker; \
             measured in turns with the direct calls in the same run, on the same cores). \
             Targets: p50 added ≤ {LB_ADDED_P50_US:.0} µs on one connection, ≥ {:.0}% of \
             the direct req/s:\n",
            LB_MIN_RATIO * 100.0
        );
        let _ = writeln!(
            s,
            "| bench | conns | p50 direct | p50 via lb | p50 added | req/s direct | req/s via lb | ratio | met |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for o in &through {
            let met = match (o.bench.as_str(), o.connections) {
                ("hot", 1) => {
                    yes_no(o.added_p50_us() <= LB_ADDED_P50_US && o.ratio() >= LB_MIN_RATIO)
                }
                ("hot", _) => yes_no(o.ratio() >= LB_MIN_RATIO),
                _ => "",
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:+.0} µs | {:.0} | {:.0} | {:.0}% | {met} |",
                o.bench,
                o.connections,
                human_us(o.direct_p50_us),
                human_us(o.lb_p50_us),
                o.added_p50_us(),
                o.direct_req_per_sec,
                o.lb_req_per_sec,
                o.ratio() * 100.0
            );
        }
    }
    let _ = writeln!(
        s,
        "\nEvery measurement of the run (`seq`: one call at a time; `par`: that many connections; \
         target `lb`: through the balancer):\n"
    );
    let _ = writeln!(
        s,
        "| bench | target | lambda | mode | conns | calls | req/s | p50 | p90 | p99 | max | errors |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &m.rows {
        let [p50, p90, p99, max] = r.latency_columns();
        let _ = writeln!(
            s,
            "| {} | {} | `{}` | {} | {} | {} | {:.0} | {p50} | {p90} | {p99} | {max} | {} |",
            r.bench, r.target, r.lambda, r.mode, r.connections, r.requests, r.req_per_sec, r.errors
        );
    }
    let errors: Vec<String> = m
        .rows
        .iter()
        .filter(|r| r.errors > 0)
        .map(|r| format!("- {}: {}", r.bench, r.first_error.replace('|', "\\|")))
        .chain(m.failures.iter().map(|f| format!("- {f}")))
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(
            s,
            "\nFirst error of each failing benchmark:\n\n{}",
            errors.join("\n")
        );
    }
    s
}

/// A measurement through the balancer next to the same one made directly.
#[derive(Debug, Clone, PartialEq)]
struct BalancerOverhead {
    bench: String,
    connections: usize,
    direct_p50_us: f64,
    lb_p50_us: f64,
    direct_req_per_sec: f64,
    lb_req_per_sec: f64,
}

impl BalancerOverhead {
    /// The latency the balancer adds at the median (negative: noise).
    fn added_p50_us(&self) -> f64 {
        self.lb_p50_us - self.direct_p50_us
    }

    /// The share of the direct throughput kept through the balancer.
    fn ratio(&self) -> f64 {
        if self.direct_req_per_sec > 0.0 {
            self.lb_req_per_sec / self.direct_req_per_sec
        } else {
            0.0
        }
    }
}

/// Each error-free row through the balancer with the error-free direct
/// row of the same bench, lambda and connections, in the rows' order.
fn balancer_overheads(rows: &[Row]) -> Vec<BalancerOverhead> {
    let clean = |r: &&Row| r.errors == 0 && r.requests > 0;
    rows.iter()
        .filter(|r| r.target == BALANCER_TARGET)
        .filter(clean)
        .filter_map(|lb| {
            let direct = rows.iter().filter(clean).find(|r| {
                r.target != BALANCER_TARGET
                    && r.bench == lb.bench
                    && r.lambda == lb.lambda
                    && r.connections == lb.connections
            })?;
            Some(BalancerOverhead {
                bench: lb.bench.clone(),
                connections: lb.connections,
                direct_p50_us: direct.p50_us,
                lb_p50_us: lb.p50_us,
                direct_req_per_sec: direct.req_per_sec,
                lb_req_per_sec: lb.req_per_sec,
            })
        })
        .collect()
}

/// Why a metric has no number: the first error of its benchmark (or of
/// the earlier step of the same benchmark that stopped it), or that it did
/// not run.
fn missing(m: &Measured, bench: &str) -> String {
    let family = bench.split('-').next().unwrap_or(bench);
    let failed = m
        .rows
        .iter()
        .filter(|r| r.errors > 0)
        .find(|r| r.bench == bench || r.bench.split('-').next() == Some(family));
    match failed {
        Some(r) if r.first_error.contains("No module named") => {
            "not available: packages not yet supported (the lambda cannot import them)".into()
        }
        Some(r) => format!("not available: {} of {} calls failed", r.errors, r.requests),
        None => "not measured (see the errors below)".into(),
    }
}

fn yes_no(met: bool) -> &'static str {
    if met { "yes" } else { "**no**" }
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Now as `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    format_utc(jiff::Timestamp::now())
}

fn format_utc(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_the_marked_section() {
        let doc = format!(
            "# Benchmarks\n\nintro\n\n{BEGIN}\nold numbers\n{END}\n\n## Hand-written\ntext\n"
        );
        let new = splice(&doc, "new numbers\n");
        assert_eq!(
            new,
            format!(
                "# Benchmarks\n\nintro\n\n{BEGIN}\nnew numbers\n{END}\n\n## Hand-written\ntext\n"
            )
        );
        assert_eq!(splice(&new, "new numbers\n"), new, "idempotent");
    }

    #[test]
    fn splice_without_markers_goes_after_the_title() {
        let new = splice("# Benchmarks\n\n## Hot\nkept\n", "numbers\n");
        assert_eq!(
            new,
            format!("# Benchmarks\n\n{BEGIN}\nnumbers\n{END}\n\n## Hot\nkept\n")
        );
    }

    fn row(bench: &str, connections: usize, latencies_us: &[u32], error: Option<&str>) -> Row {
        let mut samples = crate::stats::Samples::default();
        for &us in latencies_us {
            let e = error.map(String::from);
            samples.record(std::time::Duration::from_micros(us.into()), e);
        }
        samples.elapsed = std::time::Duration::from_secs(1);
        let key = crate::output::RowKey {
            bench,
            target: "ours",
            lambda: "hello",
            connections,
        };
        Row::new(key, samples)
    }

    fn args() -> ReportArgs {
        ReportArgs {
            out: PathBuf::from("docs/benchmarks.md"),
            seconds: 1.0,
            cold_count: 3,
            first_call_runs: 2,
            numpy_count: 2,
            churn_count: 10_000,
            output: OutputArgs::default(),
        }
    }

    /// The table line of `metric`, split into its cells.
    fn cells(doc: &str, metric: &str) -> Vec<String> {
        let line = doc
            .lines()
            .find(|l| l.starts_with(&format!("| {metric} |")))
            .unwrap_or_else(|| panic!("no line for {metric} in\n{doc}"));
        line.trim_matches('|')
            .split(" | ")
            .map(|c| c.trim().to_string())
            .collect()
    }

    #[test]
    fn render_checks_targets_and_compares_with_upstream() {
        let m = Measured {
            rows: vec![
                row("hot", 1, &[100, 120, 140], None),
                row("hot", 4, &[300; 20], None),
                row("cold", 1, &[4_000, 5_000, 30_000], None),
                row("cold", CREATION_BATCH, &[9_000; 4], None),
                row("first-call", 1, &[214_000], None),
                row("burst", BURST_INSTANCES, &[50_000, 150_000, 190_000], None),
                row("churn", CREATION_BATCH, &[5_000; 4], None),
                row(
                    "numpy-first",
                    1,
                    &[15_000],
                    Some("/run/np-hot: 500 No module named 'numpy'"),
                ),
            ],
            failures: vec!["numpy: cannot start".into()],
            idle_private_kib: vec![900, 1_100, 3_000],
            numpy_zygote_hits: Some(2),
            churn: Some(ChurnOutcome {
                rows: Vec::new(),
                created: 10_000,
                destroyed: 9_999,
                before: churn::Holdings::default(),
                after: churn::Holdings {
                    mounts: 1,
                    threads: 30,
                    ..Default::default()
                },
            }),
        };
        let run = Conditions {
            took_s: 12.0,
            load_at_start: "0.50".into(),
            load_at_end: "1.20".into(),
            fork_us: Some(824.0),
        };
        let doc = render(&m, &args(), &run);
        assert!(doc.contains("load average 0.50 at the start and 1.20 at the end"));
        assert!(
            doc.contains("a Python fork took 824 µs to a ready child (median of 300, at the start), 1.9× the 434 µs"),
            "{doc}"
        );
        let hot1 = cells(&doc, "hot, 1 keep-alive connection");
        assert_eq!(hot1[2], "p50 120µs, p99 140µs (3 req/s)");
        assert_eq!(hot1[3], "**no**", "p50 120 µs misses 100 µs");
        assert_eq!(hot1[5], "133.0× lower");
        let hot4 = cells(&doc, "hot, 4 connections");
        assert_eq!(
            (hot4[3].as_str(), hot4[5].as_str()),
            ("**no**", "0.0× the req/s")
        );
        let cold = cells(&doc, "new lambda on a warm worker (no packages)");
        assert_eq!(cold[3], "**no**", "p99 30 ms misses 8 ms");
        let burst = cells(
            &doc,
            "burst: one new lambda from no sandbox to 100 busy ones",
        );
        assert_eq!(
            (burst[2].as_str(), burst[3].as_str()),
            (
                "190.00ms to the last start (p50 150.00ms; 3 calls, 100 at a time)",
                "yes"
            ),
            "{burst:?}"
        );
        let rate = cells(&doc, "sandbox creation rate");
        assert!(
            rate[2].starts_with("2 per second per core (4 new lambdas, 4 at a time, in 1.0 s on"),
            "{rate:?}"
        );
        // A mount more after the churn is a leak; threads are not counted.
        let churn = cells(&doc, "sandbox churn: leaks");
        assert_eq!(
            (churn[2].as_str(), churn[3].as_str()),
            (
                "10000 sandboxes made, 9999 torn down; 1 more mounts; 2 per second per core \
                 with the teardowns (4 at a time, room for 128 at once)",
                "**no**"
            )
        );
        let numpy = cells(
            &doc,
            "new lambda needing installed packages (numpy), zygote hit",
        );
        assert!(
            numpy[2].starts_with("not available: packages not yet supported"),
            "{numpy:?}"
        );
        assert_eq!(numpy[3], "–");
        let first = cells(&doc, "first call after `worker up`");
        assert_eq!(
            (first[3].as_str(), first[5].as_str()),
            ("**no**", "2.0× higher")
        );
        let numpy_hot = cells(&doc, "numpy lambda hot, 1 connection");
        assert!(
            numpy_hot[2].starts_with("not available: packages"),
            "{numpy_hot:?}"
        );
        let hot16 = cells(&doc, "hot, 16 connections");
        assert_eq!(hot16[2], "not measured (see the errors below)");
        let mem = cells(&doc, "idle sandbox memory");
        assert!(mem[2].starts_with("median 1.07 MiB private"), "{mem:?}");
        assert_eq!(mem[3], "yes");
        assert!(doc.contains("- numpy: cannot start"));
        assert!(doc.contains("2 of the 2 new numpy lambdas forked from a zygote"));
        assert!(doc.contains("- numpy-first: /run/np-hot: 500 No module named 'numpy'"));
        assert!(
            doc.contains("| hot | ours | `hello` | seq | 1 | 3 | 3 | 120µs |"),
            "{doc}"
        );
        assert!(
            !doc.contains("Through the balancer"),
            "no lb rows, no section"
        );
    }

    #[test]
    fn the_balancers_cost_is_set_against_the_direct_run_of_the_same_measurement() {
        let via_lb = |mut r: Row| {
            r.target = BALANCER_TARGET.into();
            r
        };
        let m = Measured {
            rows: vec![
                row("hot", 1, &[100; 10], None),
                via_lb(row("hot", 1, &[150; 8], None)),
                row("hot", 4, &[300; 20], None),
                via_lb(row("hot", 4, &[400; 10], None)),
                via_lb(row("cold", 1, &[5_000; 3], Some("/run/x: 503"))),
                row("cold", 1, &[4_000; 3], None),
            ],
            ..Measured::default()
        };
        let through = balancer_overheads(&m.rows);
        let seen: Vec<(&str, usize, i64, i64)> = through
            .iter()
            .map(|o| {
                (
                    o.bench.as_str(),
                    o.connections,
                    o.added_p50_us().round() as i64,
                    (o.ratio() * 100.0).round() as i64,
                )
            })
            .collect();
        // The failed measurement through the balancer is left out.
        assert_eq!(seen, [("hot", 1, 50, 80), ("hot", 4, 100, 50)]);
        // The metrics read the direct rows, whatever the order.
        assert_eq!(m.row("hot", 1).map(|r| r.target.as_str()), Some("ours"));

        let run = Conditions {
            took_s: 1.0,
            load_at_start: "0".into(),
            load_at_end: "0".into(),
            fork_us: None,
        };
        let doc = render(&m, &args(), &run);
        assert!(doc.contains("Through the balancer"), "{doc}");
        let line = |prefix: &str| {
            doc.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{doc}"))
                .to_string()
        };
        assert_eq!(
            line("| hot | 1 | "),
            "| hot | 1 | 100µs | 150µs | +50 µs | 10 | 8 | 80% | yes |"
        );
        assert!(line("| hot | 4 | ").ends_with("| 50% | **no** |"));
        assert!(
            doc.contains("| hot | lb | `hello` | seq | 1 | 8 |"),
            "{doc}"
        );
    }

    #[test]
    fn utc_dates() {
        let at = |secs| jiff::Timestamp::from_second(secs).expect("in range");
        assert_eq!(format_utc(at(0)), "1970-01-01 00:00 UTC");
        assert_eq!(
            format_utc(at(951_782_400 + 3_600 * 13 + 60 * 7 + 59)),
            "2000-02-29 13:07 UTC"
        );
        assert_eq!(format_utc(at(1_795_564_800)), "2026-11-25 00:00 UTC");
    }
}
