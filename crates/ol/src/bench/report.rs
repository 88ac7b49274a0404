//! `ol bench report`: runs every benchmark of DESIGN §6 briefly on workers
//! of its own and writes today's numbers, checked against the targets and
//! compared with upstream OpenLambda's measured numbers
//! (OPENLAMBDA-FACTS.md), into a section of docs/benchmarks.md. Text
//! outside that section's markers is kept as it is.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::cold::{self, ColdArgs};
use super::first_call::{self, FirstCallArgs};
use super::hot::{self, HotArgs};
use super::output::{Row, human_us};
use super::packages::{self, NumpyArgs};
use super::upstream::{self, OlArgs};
use super::{OutputArgs, emit};

const BEGIN: &str = "<!-- BEGIN ol bench report: generated, edit outside these markers -->";
const END: &str = "<!-- END ol bench report -->";

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Markdown file to write the section into (created if missing).
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub out: PathBuf,
    /// Measured seconds of each hot measurement.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// New lambdas of the cold-start benchmark.
    #[arg(long, default_value_t = 100)]
    pub cold_count: usize,
    /// Fresh workers of the first-call benchmark.
    #[arg(long, default_value_t = 5)]
    pub first_call_runs: usize,
    /// New numpy lambdas once numpy is installed.
    #[arg(long, default_value_t = 10)]
    pub numpy_count: usize,
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
}

impl Measured {
    fn add(&mut self, what: &str, result: Result<Vec<Row>>) {
        match result {
            Ok(rows) => self.rows.extend(rows),
            Err(e) => {
                eprintln!("ol bench report: {what} failed: {e:#}");
                self.failures.push(format!("{what}: {e:#}"));
            }
        }
    }

    fn row(&self, bench: &str, connections: usize) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.bench == bench && r.connections == connections)
    }
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let mut m = Measured::default();
    let hot_args = HotArgs {
        targets: Vec::new(),
        lambda: "hello".into(),
        body: super::cold::HELLO_BODY.into(),
        connections: vec![1, 4, 16],
        seconds: args.seconds,
        warmup: 1.0,
        rounds: 1,
        options: Vec::new(),
        output: OutputArgs::default(),
    };
    m.add("hot", hot::run(&hot_args));
    let cold_args = ColdArgs {
        count: args.cold_count,
        options: Vec::new(),
        output: OutputArgs::default(),
    };
    match cold::run(&cold_args) {
        Ok(o) => {
            m.rows.extend(o.rows);
            m.idle_private_kib = o.idle_private_kib;
        }
        Err(e) => m.add("cold", Err(e)),
    }
    let first_args = FirstCallArgs {
        runs: args.first_call_runs,
        options: Vec::new(),
        output: OutputArgs::default(),
    };
    m.add("first-call", first_call::run(&first_args));
    let numpy_args = NumpyArgs {
        count: args.numpy_count,
        seconds: args.seconds,
        connections: vec![1],
        options: Vec::new(),
        output: OutputArgs::default(),
    };
    m.add("numpy", packages::run(&numpy_args));
    let ol_args = OlArgs {
        names: vec!["py64-seq".into(), "py64-par".into(), "pd64-seq".into()],
        targets: Vec::new(),
        seconds: args.seconds,
        tasks: 32,
        no_warmup: false,
        rounds: 1,
        options: Vec::new(),
        output: OutputArgs::default(),
    };
    m.add("ol py64-seq py64-par pd64-seq", upstream::run(&ol_args));
    emit(&m.rows, &args.output)?;
    let section = render(&m, args, started.elapsed().as_secs_f64());
    let old = std::fs::read_to_string(&args.out).unwrap_or_else(|_| "# Benchmarks\n".into());
    std::fs::write(&args.out, splice(&old, &section))
        .with_context(|| format!("cannot write {}", args.out.display()))?;
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

/// Upstream OpenLambda's numbers on this machine kind (OPENLAMBDA-FACTS).
struct Upstream {
    text: &'static str,
    /// The middle of its measured range, in the row's unit (µs or req/s).
    mid: f64,
}

const UP_HOT1: Upstream = Upstream {
    text: "68.6 req/s, p50 15.96 ms, p99 20.2 ms",
    mid: 15_960.0,
};
const UP_HOT4: Upstream = Upstream {
    text: "3,550–3,690 req/s, p99 3.6–4.7 ms",
    mid: 3_620.0,
};
const UP_HOT16: Upstream = Upstream {
    text: "3,070–3,780 req/s, p99 8.9–10.2 ms",
    mid: 3_425.0,
};
const UP_COLD: Upstream = Upstream {
    text: "27–30 ms",
    mid: 28_500.0,
};
const UP_FIRST: Upstream = Upstream {
    text: "99–115 ms",
    mid: 107_000.0,
};
const UP_NP_COLD: Upstream = Upstream {
    text: "35–43 ms",
    mid: 39_000.0,
};
const UP_NP_FIRST: Upstream = Upstream {
    text: "5.4–5.7 s",
    mid: 5_550_000.0,
};
const UP_NP_HOT: Upstream = Upstream {
    text: "68 req/s",
    mid: 68.0,
};

fn render(m: &Measured, args: &ReportArgs, took_s: f64) -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(s, "## Today's numbers (`ol bench report`)\n");
    let _ = writeln!(
        s,
        "Generated {} by `ol bench report --out {}` (commit {}, {cpus} CPUs, \
         Linux {}, {:.0} s in all). Hot: {} s per connection count after 1 s of \
         warm-up; cold: {} new lambdas; first call: {} fresh workers; numpy: {} \
         new lambdas; OpenLambda's benches: {} s each after one call of each \
         lambda. One run of each, on a shared 2-vCPU VM: read p99s as \
         indications. Upstream numbers are from OPENLAMBDA-FACTS.md (same \
         machine kind, measured earlier, not in this run).\n",
        utc_now(),
        args.out.display(),
        git_commit(),
        kernel.trim(),
        took_s,
        args.seconds,
        args.cold_count,
        args.first_call_runs,
        args.numpy_count,
        args.seconds,
    );
    let _ = writeln!(
        s,
        "| metric (DESIGN §6) | target | today | met | upstream OpenLambda | vs upstream |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let mut line = |metric: &str, target: &str, today: String, met: &str, up: &str, vs: String| {
        let _ = writeln!(s, "| {metric} | {target} | {today} | {met} | {up} | {vs} |");
    };
    let ok = |r: &&Row| r.errors == 0 && r.requests > 0;
    match m.row("hot", 1).filter(ok) {
        Some(r) => line(
            "hot, 1 keep-alive connection",
            "p50 ≤ 150 µs, p99 ≤ 500 µs",
            format!(
                "p50 {}, p99 {} ({:.0} req/s)",
                human_us(r.p50_us),
                human_us(r.p99_us),
                r.req_per_sec
            ),
            yes_no(r.p50_us <= 150.0 && r.p99_us <= 500.0),
            UP_HOT1.text,
            faster(UP_HOT1.mid, r.p50_us, "p50"),
        ),
        None => line(
            "hot, 1 keep-alive connection",
            "p50 ≤ 150 µs, p99 ≤ 500 µs",
            missing(m, "hot", 1),
            "–",
            UP_HOT1.text,
            String::new(),
        ),
    }
    match m.row("hot", 4).filter(ok) {
        Some(r) => line(
            "hot, 4 connections",
            "≥ 15,000 req/s, p99 ≤ 1 ms",
            format!(
                "{:.0} req/s, p50 {}, p99 {}",
                r.req_per_sec,
                human_us(r.p50_us),
                human_us(r.p99_us)
            ),
            yes_no(r.req_per_sec >= 15_000.0 && r.p99_us <= 1_000.0),
            UP_HOT4.text,
            more(r.req_per_sec, UP_HOT4.mid),
        ),
        None => line(
            "hot, 4 connections",
            "≥ 15,000 req/s, p99 ≤ 1 ms",
            missing(m, "hot", 4),
            "–",
            UP_HOT4.text,
            String::new(),
        ),
    }
    match m.row("hot", 16).filter(ok) {
        Some(r) => line(
            "hot, 16 connections",
            "(none)",
            format!(
                "{:.0} req/s, p50 {}, p99 {}",
                r.req_per_sec,
                human_us(r.p50_us),
                human_us(r.p99_us)
            ),
            "",
            UP_HOT16.text,
            more(r.req_per_sec, UP_HOT16.mid),
        ),
        None => line(
            "hot, 16 connections",
            "(none)",
            missing(m, "hot", 16),
            "–",
            UP_HOT16.text,
            String::new(),
        ),
    }
    match m.row("cold", 1).filter(ok) {
        Some(r) => line(
            "new lambda on a warm worker (no packages)",
            "p50 ≤ 5 ms, p99 ≤ 15 ms",
            format!(
                "p50 {}, p99 {} ({} lambdas)",
                human_us(r.p50_us),
                human_us(r.p99_us),
                r.requests
            ),
            yes_no(r.p50_us <= 5_000.0 && r.p99_us <= 15_000.0),
            UP_COLD.text,
            faster(UP_COLD.mid, r.p50_us, "p50"),
        ),
        None => line(
            "new lambda on a warm worker (no packages)",
            "p50 ≤ 5 ms, p99 ≤ 15 ms",
            missing(m, "cold", 1),
            "–",
            UP_COLD.text,
            String::new(),
        ),
    }
    match m.row("first-call", 1).filter(ok) {
        Some(r) => line(
            "first call after `worker up`",
            "≤ 50 ms",
            format!(
                "p50 {}, max {} ({} runs)",
                human_us(r.p50_us),
                human_us(r.max_us),
                r.requests
            ),
            yes_no(r.p50_us <= 50_000.0),
            UP_FIRST.text,
            faster(UP_FIRST.mid, r.p50_us, "p50"),
        ),
        None => line(
            "first call after `worker up`",
            "≤ 50 ms",
            missing(m, "first-call", 1),
            "–",
            UP_FIRST.text,
            String::new(),
        ),
    }
    match m.row("numpy-cold", 1).filter(ok) {
        Some(r) => line(
            "new lambda needing installed packages (numpy), zygote hit",
            "p50 ≤ 10 ms",
            format!(
                "p50 {}, p99 {} ({} lambdas)",
                human_us(r.p50_us),
                human_us(r.p99_us),
                r.requests
            ),
            yes_no(r.p50_us <= 10_000.0),
            UP_NP_COLD.text,
            faster(UP_NP_COLD.mid, r.p50_us, "p50"),
        ),
        None => line(
            "new lambda needing installed packages (numpy), zygote hit",
            "p50 ≤ 10 ms",
            missing(m, "numpy-first", 1),
            "–",
            UP_NP_COLD.text,
            String::new(),
        ),
    }
    match m.row("cold", 1).filter(ok) {
        Some(r) => {
            let per_core = r.requests as f64 / r.seconds / cpus as f64;
            line(
                "sandbox creation rate",
                "≥ 100 per second per core, no leaks after 10,000",
                format!(
                    "{per_core:.0} per second per core (one at a time: {} in {:.1} s on {cpus} CPUs); leaks not checked here",
                    r.requests, r.seconds
                ),
                yes_no(per_core >= 100.0),
                "",
                String::new(),
            )
        }
        None => line(
            "sandbox creation rate",
            "≥ 100 per second per core",
            missing(m, "cold", 1),
            "–",
            "",
            String::new(),
        ),
    }
    let mut kib = m.idle_private_kib.clone();
    kib.sort_unstable();
    match kib.get(kib.len() / 2) {
        Some(&median) => line(
            "idle sandbox memory",
            "≤ 2 MiB beyond the zygote's shared pages",
            format!(
                "median {:.2} MiB private (max {:.2} MiB, {} idle sandboxes after the cold run)",
                median as f64 / 1024.0,
                kib.last().copied().unwrap_or(0) as f64 / 1024.0,
                kib.len()
            ),
            yes_no(median <= 2048),
            "",
            String::new(),
        ),
        None => line(
            "idle sandbox memory",
            "≤ 2 MiB beyond the zygote's shared pages",
            "not measured".into(),
            "–",
            "",
            String::new(),
        ),
    }
    match m.row("numpy-first", 1).filter(ok) {
        Some(r) => line(
            "numpy lambda, first call on a fresh worker (install included)",
            "(none)",
            human_us(r.p50_us),
            "",
            UP_NP_FIRST.text,
            faster(UP_NP_FIRST.mid, r.p50_us, ""),
        ),
        None => line(
            "numpy lambda, first call on a fresh worker (install included)",
            "(none)",
            missing(m, "numpy-first", 1),
            "–",
            UP_NP_FIRST.text,
            String::new(),
        ),
    }
    match m.row("numpy-hot", 1).filter(ok) {
        Some(r) => line(
            "numpy lambda hot, 1 connection",
            "(none)",
            format!("{:.0} req/s, p50 {}", r.req_per_sec, human_us(r.p50_us)),
            "",
            UP_NP_HOT.text,
            more(r.req_per_sec, UP_NP_HOT.mid),
        ),
        None => line(
            "numpy lambda hot, 1 connection",
            "(none)",
            missing(m, "numpy-first", 1),
            "–",
            UP_NP_HOT.text,
            String::new(),
        ),
    }
    let _ = writeln!(
        s,
        "\nEvery measurement of the run (`seq`: one call at a time; `par`: that many connections):\n"
    );
    let _ = writeln!(
        s,
        "| bench | lambda | mode | conns | calls | req/s | p50 | p90 | p99 | max | errors |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &m.rows {
        let _ = writeln!(
            s,
            "| {} | `{}` | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            r.bench,
            r.lambda,
            r.mode,
            r.connections,
            r.requests,
            r.req_per_sec,
            human_us(r.p50_us),
            human_us(r.p90_us),
            human_us(r.p99_us),
            human_us(r.max_us),
            r.errors
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

/// Why a target row has no number: the benchmark's first error, or that
/// it did not run.
fn missing(m: &Measured, bench: &str, connections: usize) -> String {
    match m.row(bench, connections) {
        Some(r) if r.errors > 0 && r.first_error.contains("No module named") => {
            "not available: packages not yet supported (the lambda cannot import them)".into()
        }
        Some(r) if r.errors > 0 => format!("not available: {} calls failed", r.errors),
        _ => "not measured (see the errors below)".into(),
    }
}

fn yes_no(met: bool) -> &'static str {
    if met { "yes" } else { "**no**" }
}

/// `upstream / ours` of a latency, as "N× lower".
fn faster(upstream_us: f64, ours_us: f64, what: &str) -> String {
    if ours_us <= 0.0 {
        return String::new();
    }
    format!("{:.1}× lower {what}", upstream_us / ours_us)
        .replace("  ", " ")
        .trim_end()
        .to_string()
}

/// `ours / upstream` of a throughput.
fn more(ours: f64, upstream: f64) -> String {
    format!("{:.1}× the req/s", ours / upstream)
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
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

fn format_utc(secs: u64) -> String {
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3_600,
        rest % 3_600 / 60
    )
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

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(
            format_utc(951_782_400 + 3_600 * 13 + 60 * 7),
            "2000-02-29 13:07 UTC"
        );
        assert_eq!(format_utc(1_795_564_800), "2026-11-25 00:00 UTC");
    }

    #[test]
    fn ratios() {
        assert_eq!(faster(28_500.0, 5_700.0, "p50"), "5.0× lower p50");
        assert_eq!(more(15_000.0, 3_000.0), "5.0× the req/s");
    }
}
