//! `ol bench cold`: the first call of each of N new lambdas on a warm
//! worker (each call pays for a new sandbox), on a worker the bench starts
//! or on `--target`s (and through a balancer in front of them, `--lb`),
//! and the memory each of the bench's own sandboxes
//! keeps privately once idle.

use std::time::Duration;

use bytes::Bytes;
use ol_worker::client;

use crate::OutputArgs;
use crate::hot::targets_or_own;
use crate::load;
use crate::output::{Row, RowKey};
use crate::stats::Samples;
use crate::target::{OwnBalancer, Target, write_lambda};
use crate::{BenchError, Result};

/// The hello lambda every no-package benchmark uses.
pub const HELLO_PY: &str = "def f(event):\n    return \"Hello, \" + event[\"name\"] + \"!\"\n";

/// The body the hello lambda expects.
pub const HELLO_BODY: &str = r#"{"name": "bench"}"#;

/// `ol bench cold`'s options.
#[derive(Debug, clap::Args)]
pub struct ColdArgs {
    /// How many new lambdas to call once each (per target).
    #[arg(long, default_value_t = 200)]
    pub count: usize,
    /// New lambdas called at the same time (1: one after another, which
    /// measures latency; more: batches of that many, which measures the
    /// creation rate).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Server to measure instead of a worker of the bench's own; the new
    /// lambdas are uploaded to its `POST /registry/<name>` (and deleted
    /// afterwards). Repeat to compare several: calls alternate between
    /// them.
    #[arg(long = "target", value_name = "[NAME=]URL")]
    pub targets: Vec<String>,
    /// Override a setting of the benchmark's worker (repeatable), e.g.
    /// -o features.import_cache= to start every sandbox from scratch.
    #[arg(short = 'o', long = "option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// Also measure through a balancer (`ol lb`, policy name) started in
    /// front of the worker (or the --targets): one more target, `lb`,
    /// whose batches alternate with the others'. Its lambdas are uploaded
    /// to every worker directly (the balancer passes calls only).
    #[arg(long)]
    pub lb: bool,
    /// Files to write the rows to.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The cold-start rows and what the idle sandboxes weigh.
pub struct ColdOutcome {
    /// One row per target.
    pub rows: Vec<Row>,
    /// Private (unshared) memory of each live sandbox of the bench's own
    /// worker after the run, KiB (none with `--target`).
    pub idle_private_kib: Vec<u64>,
}

/// Uploads `--count` new lambdas to each target and calls each once.
pub fn run(args: &ColdArgs) -> Result<ColdOutcome> {
    if args.count == 0 || args.connections == 0 {
        return Err(BenchError::Usage(
            "--count and --connections must be at least 1".into(),
        ));
    }
    let (mut targets, own) = targets_or_own(&args.targets, &args.options)?;
    // The workers; a balancer, when asked for, comes after them.
    let workers = targets.len();
    let _lb = OwnBalancer::start_if(args.lb, &mut targets)?;
    // Where target k's lambdas are installed: on itself, or (for the
    // balancer) on every worker behind it.
    let homes = |k: usize| {
        if k < workers {
            &targets[k..=k]
        } else {
            &targets[..workers]
        }
    };
    // Names never used before on a long-running target.
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() % 1_000_000_000);
    // Per target, so a server given twice still sees only new lambdas.
    let names: Vec<Vec<String>> = (0..targets.len())
        .map(|k| {
            (0..=args.count)
                .map(|i| format!("cold-{run_id}-{k}-{i}"))
                .collect()
        })
        .collect();
    let archive = hello_archive()?;
    for (k, names) in names.iter().enumerate() {
        for t in homes(k) {
            for name in names {
                upload(t, name, &archive)?;
            }
        }
    }
    let body = Bytes::from_static(HELLO_BODY.as_bytes());
    let rt = load::runtime()?;
    // One call first, so each worker's own first-call costs are not counted.
    let hidden = indicatif::ProgressBar::hidden();
    // The last name of each target is its warm-up lambda.
    for (t, names) in targets.iter().zip(&names) {
        rt.block_on(load::call_each(t, &names[args.count..], &body, &hidden))?;
    }
    let bar = crate::progress((args.count * targets.len()) as u64, "cold");
    let mut samples: Vec<Samples> = targets.iter().map(|_| Samples::default()).collect();
    let batches = args.count.div_ceil(args.connections);
    for b in 0..batches {
        let batch = b * args.connections..((b + 1) * args.connections).min(args.count);
        let order: Vec<usize> = if b % 2 == 0 {
            (0..targets.len()).collect()
        } else {
            (0..targets.len()).rev().collect()
        };
        for k in order {
            let calls = load::call_all_at_once(&targets[k], &names[k][batch.clone()], &body, &bar);
            samples[k].merge(rt.block_on(calls)?);
        }
    }
    bar.finish_and_clear();
    let rows = targets
        .iter()
        .zip(samples)
        .map(|(t, s)| {
            let key = RowKey {
                bench: "cold",
                target: &t.name,
                lambda: "cold-[0,N)",
                connections: args.connections,
            };
            Row::new(key, s)
        })
        .collect();
    let idle_private_kib = match &own {
        Some(own) => {
            // Let the sandboxes settle (paused after idle) before weighing.
            std::thread::sleep(Duration::from_millis(800));
            sandbox_private_kib(&own.target())?
        }
        None => {
            for (k, names) in names.iter().enumerate() {
                for t in homes(k) {
                    for name in names {
                        let url = t.url(&format!("/registry/{name}"));
                        let _ = client::delete(&url, Duration::from_secs(10));
                    }
                }
            }
            Vec::new()
        }
    };
    Ok(ColdOutcome {
        rows,
        idle_private_kib,
    })
}

/// The hello lambda packed as a registry upload.
fn hello_archive() -> Result<Vec<u8>> {
    lambda_archive("hello", HELLO_PY)
}

/// A lambda whose `f.py` is `code`, packed as a registry upload.
pub(crate) fn lambda_archive(name: &str, code: &str) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    write_lambda(dir.path(), name, &[("f.py", code)])?;
    Ok(ol_registry::pack_lambda(&dir.path().join(name))?)
}

/// `POST /registry/<name>` with the lambda's tar.gz.
pub(crate) fn upload(target: &Target, name: &str, archive: &[u8]) -> Result<()> {
    let url = target.url(&format!("/registry/{name}"));
    let a = client::post(&url, archive, Duration::from_secs(30)).map_err(|source| {
        BenchError::Upload {
            lambda: name.to_string(),
            target: target.name.clone(),
            source,
        }
    })?;
    if !(200..300).contains(&a.status) {
        return Err(BenchError::UploadRefused {
            target: target.name.clone(),
            lambda: name.to_string(),
            status: a.status,
            body: a.body.trim().to_string(),
        });
    }
    Ok(())
}

/// Private memory (Private_Clean + Private_Dirty of smaps_rollup) of each
/// sandbox the worker lists in `/stats`, all its processes together (its
/// runtime and the process that waits for it on the host's side): what a
/// sandbox costs beyond the pages it shares with its zygote.
fn sandbox_private_kib(target: &Target) -> Result<Vec<u64>> {
    let stats = client::stats(&target.url(""), Duration::from_secs(10))?;
    Ok(stats
        .lambda_layer
        .sandboxes
        .iter()
        .map(|s| {
            sandbox_pids(s.pid, s.cgroup.as_deref())
                .iter()
                .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
                .map(|text| private_kib(&text))
                .sum()
        })
        .collect())
}

/// Every process of a sandbox: those its cgroup lists (v1: the pids
/// hierarchy; v2: the unified one), or `pid` alone without a cgroup (the
/// process backend).
fn sandbox_pids(pid: u32, cgroup: Option<&str>) -> Vec<u32> {
    let listed = cgroup.and_then(|rel| {
        ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
            .iter()
            .find_map(|root| std::fs::read_to_string(format!("{root}/{rel}/cgroup.procs")).ok())
    });
    match listed {
        Some(text) => text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        None => vec![pid],
    }
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

    #[test]
    fn a_sandbox_without_a_cgroup_is_its_pid_alone() {
        assert_eq!(sandbox_pids(42, None), vec![42]);
        assert_eq!(sandbox_pids(42, Some("ol-no-such-worker/sb-1")), vec![42]);
    }
}
