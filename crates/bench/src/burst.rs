//! `ol bench burst`: how fast one lambda goes from no sandbox at all to
//! `--instances` busy ones. Each run uploads a new lambda (so it has no
//! sandbox), sends `--instances` calls at once, each on a connection of its
//! own, and reads from each answer when its call started running inside
//! the lambda (the sandbox's wall clock is the host's: no time namespace).
//! A sample is that start minus the moment the first call was sent; the
//! row's max is the burst time. Every call holds its sandbox for
//! `--hold-ms`, so all of them are busy at once only if the last one
//! started before the first one finished: a run where that fails counts
//! an error rather than a number that means something else.

use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ol_worker::client;

use crate::OutputArgs;
use crate::cold::{lambda_archive, upload};
use crate::hot::targets_or_own;
use crate::output::{Row, RowKey};
use crate::stats::Samples;
use crate::target::Target;
use crate::{BenchError, Result};

/// The lambda every call of a burst runs: it answers the time (seconds
/// since the epoch) it started at, after holding its sandbox for
/// `event["hold_ms"]`.
pub const BURST_PY: &str = "import time\n\n\ndef f(event):\n    started = time.time()\n    time.sleep(event[\"hold_ms\"] / 1000)\n    return started\n";

/// `ol bench burst`'s options.
#[derive(Debug, clap::Args)]
pub struct BurstArgs {
    /// Calls sent at once, each needing a sandbox of its own.
    #[arg(long, default_value_t = 100)]
    pub instances: usize,
    /// How long each call keeps its sandbox busy.
    #[arg(long, default_value_t = 2000)]
    pub hold_ms: u64,
    /// Bursts, each of a new lambda; the row holds every call of every run.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Server to measure instead of a worker of the bench's own (it must
    /// allow `--instances` sandboxes per lambda: `scaling.max_instances`);
    /// the lambdas are uploaded to its `POST /registry/<name>` and deleted
    /// afterwards.
    #[arg(long = "target", value_name = "[NAME=]URL")]
    pub targets: Vec<String>,
    /// Override a setting of the benchmark's worker (repeatable).
    #[arg(short = 'o', long = "option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// Files to write the rows to.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs `--runs` bursts on each target; one row per target.
pub fn run(args: &BurstArgs) -> Result<Vec<Row>> {
    if args.instances == 0 || args.runs == 0 || args.hold_ms == 0 {
        return Err(BenchError::Usage(
            "--instances, --runs and --hold-ms must be at least 1".into(),
        ));
    }
    // The bench's own worker lets one lambda have every instance asked for.
    let mut options = vec![
        format!("scaling.max_instances={}", args.instances),
        format!("scaling.max_queue={}", args.instances),
    ];
    options.extend(args.options.iter().cloned());
    let (targets, _own) = targets_or_own(&args.targets, &options)?;
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() % 1_000_000_000);
    let archive = lambda_archive("burst", BURST_PY)?;
    let body = format!(r#"{{"hold_ms": {}}}"#, args.hold_ms);
    let bar = crate::progress((args.runs * targets.len()) as u64, "burst");
    let mut samples: Vec<Samples> = targets.iter().map(|_| Samples::default()).collect();
    for run in 0..args.runs {
        // Targets take turns going first: a burst right after another
        // target's shares the CPUs with the tail of its teardown (the
        // kernel frees network namespaces and cgroups after the worker
        // has forgotten them).
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if run % 2 == 1 {
            order.reverse();
        }
        for k in order {
            let t = &targets[k];
            let name = format!("burst-{run_id}-{k}-{run}");
            let before = live_sandboxes(t);
            upload(t, &name, &archive)?;
            let outcome = one_burst(t, &name, args.instances, &body, args.hold_ms);
            let _ = client::delete(
                &t.url(&format!("/registry/{name}")),
                Duration::from_secs(10),
            );
            samples[k].merge(outcome);
            bar.inc(1);
            // The next burst starts once this one's sandboxes are gone, so
            // it does not share the CPUs with their teardown.
            if let Some(before) = before {
                settle(t, before);
            }
        }
    }
    bar.finish_and_clear();
    Ok(targets
        .iter()
        .zip(samples)
        .map(|(t, s)| {
            let key = RowKey {
                bench: "burst",
                target: &t.name,
                lambda: "burst-(new)",
                connections: args.instances,
            };
            Row::new(key, s)
        })
        .collect())
}

/// One burst: `instances` calls of `name` released together. Samples are
/// the time from the first send to each call's start inside the lambda.
fn one_burst(target: &Target, name: &str, instances: usize, body: &str, hold_ms: u64) -> Samples {
    let url = target.url(&format!("/run/{name}"));
    let timeout = Duration::from_millis(hold_ms) + Duration::from_secs(60);
    let gate = Barrier::new(instances);
    let started = Instant::now();
    let answers: Vec<(f64, std::result::Result<f64, String>)> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..instances)
            .map(|_| {
                s.spawn(|| {
                    gate.wait();
                    let sent = epoch_seconds();
                    let started = client::post(&url, body.as_bytes(), timeout)
                        .map_err(|e| e.to_string())
                        .and_then(|a| started_at(a.status, &a.body));
                    (sent, started)
                })
            })
            .collect();
        calls
            .into_iter()
            .map(|c| {
                c.join()
                    .unwrap_or_else(|_| (f64::NAN, Err("a caller thread panicked".into())))
            })
            .collect()
    });
    let mut samples = Samples::default();
    let first_sent = answers
        .iter()
        .map(|(sent, _)| *sent)
        .fold(f64::INFINITY, f64::min);
    let starts: Vec<f64> = answers
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok().copied())
        .collect();
    let first_start = starts.iter().copied().fold(f64::INFINITY, f64::min);
    let hold = hold_ms as f64 / 1000.0;
    for (_, outcome) in answers {
        match outcome {
            Ok(start) if start - first_start >= hold => samples.record_error(format!(
                "{name}: a call started {:.0} ms after the first, which had finished by then: \
                 the calls were never all busy at once (raise --hold-ms)",
                (start - first_start) * 1000.0
            )),
            Ok(start) => {
                samples.record(Duration::from_secs_f64((start - first_sent).max(0.0)), None)
            }
            Err(e) => samples.record_error(format!("{name}: {e}")),
        }
    }
    samples.elapsed = started.elapsed();
    samples
}

/// How many sandboxes the worker at `target` has (`None`: unknown).
fn live_sandboxes(target: &Target) -> Option<usize> {
    client::stats(&target.url(""), Duration::from_secs(10))
        .ok()
        .map(|s| s.lambda_layer.sandboxes.len())
}

/// Waits (at most [`SETTLE_TIMEOUT`]) until the worker at `target` has no
/// more than `count` sandboxes.
fn settle(target: &Target, count: usize) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while Instant::now() < deadline && live_sandboxes(target).is_some_and(|n| n > count) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The longest wait for one burst's sandboxes to go.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// The start time a burst call answered, or why there is none.
fn started_at(status: u16, body: &str) -> std::result::Result<f64, String> {
    if status != 200 {
        return Err(format!("{status}: {}", body.trim()));
    }
    body.trim()
        .parse::<f64>()
        .map_err(|_| format!("the lambda answered {body:?}, not a time"))
}

fn epoch_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_time_is_read_from_a_200_answer_only() {
        assert_eq!(started_at(200, "1764712345.25\n"), Ok(1_764_712_345.25));
        assert!(
            started_at(200, "\"soon\"")
                .expect_err("not a number")
                .contains("not a time")
        );
        assert_eq!(
            started_at(429, "{\"error\": \"queue full\"}"),
            Err("429: {\"error\": \"queue full\"}".to_string())
        );
    }

    #[test]
    fn zero_instances_or_runs_are_refused() {
        let args = BurstArgs {
            instances: 0,
            hold_ms: 10,
            runs: 1,
            targets: vec![],
            options: vec![],
            output: OutputArgs::default(),
        };
        assert!(matches!(run(&args), Err(BenchError::Usage(_))));
    }
}
