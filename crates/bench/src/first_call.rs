//! `ol bench first-call`: how long a user waits from starting `ol worker
//! up` to the first successful answer of a lambda, each run with a fresh
//! worker directory (its target is in docs/benchmarks.md;
//! upstream OpenLambda takes 99–115 ms).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::OutputArgs;
use crate::cold::{HELLO_BODY, HELLO_PY};
use crate::load;
use crate::output::{Row, RowKey};
use crate::stats::Samples;
use crate::target::{Target, ol, write_lambda};
use crate::{BenchError, Result};

/// How long a run waits for its first success before it counts as failed.
const FIRST_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// `ol bench first-call`'s options.
#[derive(Debug, clap::Args)]
pub struct FirstCallArgs {
    /// How many times to start a fresh worker.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Override a setting of the started workers (repeatable).
    #[arg(short = 'o', long = "option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// Files to write the row to.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Times `--runs` fresh workers from start to first answer; one row.
pub fn run(args: &FirstCallArgs) -> Result<Vec<Row>> {
    if args.runs == 0 {
        return Err(BenchError::Usage("--runs must be at least 1".into()));
    }
    let rt = load::runtime()?;
    let bar = crate::progress(args.runs as u64, "first-call");
    let mut samples = Samples::default();
    let started = Instant::now();
    for _ in 0..args.runs {
        let (latency, error) = rt.block_on(one_run(&args.options))?;
        samples.record(latency, error);
        bar.inc(1);
    }
    bar.finish_and_clear();
    samples.elapsed = started.elapsed();
    Ok(vec![Row::new(
        RowKey {
            bench: "first-call",
            target: "ours",
            lambda: "hello",
            connections: 1,
        },
        samples,
    )])
}

/// Inits a worker dir (not timed), then times `ol worker up` (foreground,
/// as a user starts it) until `/run/hello` first answers 200.
async fn one_run(options: &[String]) -> Result<(Duration, Option<String>)> {
    let dir = tempfile::Builder::new().prefix("ol-bench-up-").tempdir()?;
    ol(dir.path(), &["worker", "init"])?;
    write_lambda(&dir.path().join("registry"), "hello", &[("f.py", HELLO_PY)])?;
    let port = free_port()?;
    let target = Target {
        name: "ours".into(),
        addr: format!("127.0.0.1:{port}"),
    };
    std::fs::create_dir_all(dir.path().join("logs"))?;
    let log_path = dir.path().join("logs/bench-up.log");
    let log = std::fs::File::create(&log_path).map_err(|source| BenchError::Step {
        what: "cannot create the worker's log",
        source,
    })?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["worker", "up", "-p"])
        .arg(dir.path())
        .args(["-o", &format!("worker_port={port}")]);
    for o in options {
        cmd.args(["-o", o]);
    }
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|source| BenchError::Step {
            what: "cannot start `ol worker up`",
            source,
        })?;
    let outcome = wait_first_success(&target, &mut child, t0, &log_path).await;
    let stopped = ol(dir.path(), &["worker", "down"]);
    let _ = child.kill();
    let _ = child.wait();
    let outcome = outcome?;
    // A worker that never came up has nothing to stop: its failure is
    // the result, not the failed `down`.
    if outcome.1.is_none() {
        stopped?;
    }
    Ok(outcome)
}

/// Calls `/run/hello` every millisecond until it answers 200; the time
/// since `t0`, or the last failure if it never does.
async fn wait_first_success(
    target: &Target,
    child: &mut Child,
    t0: Instant,
    log: &std::path::Path,
) -> Result<(Duration, Option<String>)> {
    let body = Bytes::from_static(HELLO_BODY.as_bytes());
    let names = ["hello".to_string()];
    let hidden = indicatif::ProgressBar::hidden();
    loop {
        let s = load::call_each(target, &names, &body, &hidden).await?;
        if s.errors == 0 {
            return Ok((t0.elapsed(), None));
        }
        let last = s.first_error.unwrap_or_default();
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let said = text.lines().rev().find(|l| !l.trim().is_empty());
            let why = said.unwrap_or(&last);
            return Ok((
                t0.elapsed(),
                Some(format!("the worker exited ({status}): {why}")),
            ));
        }
        if t0.elapsed() > FIRST_CALL_TIMEOUT {
            return Ok((
                t0.elapsed(),
                Some(format!("no success within {FIRST_CALL_TIMEOUT:?}: {last}")),
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A port free right now (the kernel's pick, released at once).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
