//! `ol bench cold`: the first call of each of N new lambdas on a warm
//! worker the bench starts (each call pays for a new sandbox), and the
//! memory each of those sandboxes keeps privately once idle.

use std::time::Duration;

use anyhow::{Result, bail};
use bytes::Bytes;

use super::OutputArgs;
use super::load;
use super::output::{Row, RowKey};
use super::target::{OwnWorker, Target};

/// The hello lambda every no-package benchmark uses.
pub const HELLO_PY: &str = "def f(event):\n    return \"Hello, \" + event[\"name\"] + \"!\"\n";

/// The body the hello lambda expects.
pub const HELLO_BODY: &str = r#"{"name": "bench"}"#;

#[derive(Debug, clap::Args)]
pub struct ColdArgs {
    /// How many new lambdas to call once each.
    #[arg(long, default_value_t = 200)]
    pub count: usize,
    /// Override a setting of the benchmark's worker (repeatable), e.g.
    /// -o features.import_cache= to start every sandbox from scratch.
    #[arg(short = 'o', long = "option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The cold-start row and what the idle sandboxes weigh.
pub struct ColdOutcome {
    pub rows: Vec<Row>,
    /// Private (unshared) memory of each live sandbox after the run, KiB.
    pub idle_private_kib: Vec<u64>,
}

pub fn run(args: &ColdArgs) -> Result<ColdOutcome> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let worker = OwnWorker::start(&args.options)?;
    let names: Vec<String> = (0..args.count).map(|i| format!("cold-{i}")).collect();
    for name in names.iter().chain([&"warm".to_string()]) {
        worker.add_lambda(name, &[("f.py", HELLO_PY)])?;
    }
    let target = worker.target();
    let body = Bytes::from_static(HELLO_BODY.as_bytes());
    let rt = load::runtime()?;
    // One call first, so the worker's own first-call costs are not counted.
    let hidden = indicatif::ProgressBar::hidden();
    rt.block_on(load::call_each(
        &target,
        &["warm".to_string()],
        &body,
        &hidden,
    ))?;
    let bar = super::progress(args.count as u64, "cold");
    let samples = rt.block_on(load::call_each(&target, &names, &body, &bar))?;
    bar.finish_and_clear();
    let row = Row::new(
        RowKey {
            bench: "cold",
            target: &target.name,
            lambda: "cold-[0,N)",
            connections: 1,
        },
        samples,
    );
    // Let the sandboxes settle (paused after idle) before weighing them.
    std::thread::sleep(Duration::from_millis(800));
    let idle_private_kib = sandbox_private_kib(&target)?;
    Ok(ColdOutcome {
        rows: vec![row],
        idle_private_kib,
    })
}

/// Private memory (Private_Clean + Private_Dirty of smaps_rollup) of each
/// sandbox the worker lists in `/stats`: what a sandbox costs beyond the
/// pages it shares with its zygote.
fn sandbox_private_kib(target: &Target) -> Result<Vec<u64>> {
    let stats = crate::client::get(&target.url("/stats"), Duration::from_secs(10))?;
    let stats: serde_json::Value = serde_json::from_str(&stats.body)?;
    let pids = stats["sandboxes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["pid"].as_u64())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    Ok(pids
        .into_iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
        .map(|text| private_kib(&text))
        .collect())
}

fn private_kib(smaps_rollup: &str) -> u64 {
    smaps_rollup
        .lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_memory_adds_clean_and_dirty() {
        let text = "00400000-7fff [rollup]\nRss:  9000 kB\nPss:  3000 kB\n\
                    Shared_Clean:  7000 kB\nPrivate_Clean:  120 kB\nPrivate_Dirty:  900 kB\n";
        assert_eq!(private_kib(text), 1020);
    }
}
