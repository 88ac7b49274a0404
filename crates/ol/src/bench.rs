//! `ol bench`: end-to-end benchmarks against a worker. `hot` calls one warm
//! lambda over keep-alive connections and reports throughput and latency
//! percentiles; without `--target` it starts (and stops) a worker of its
//! own in a temporary directory.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Subcommand;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Hot calls of one warm lambda over N keep-alive connections.
    Hot(HotArgs),
    /// Cold starts: the first call of each of N new lambdas on a warm
    /// worker started for the benchmark.
    Cold(ColdArgs),
}

#[derive(Debug, clap::Args)]
pub struct ColdArgs {
    /// How many new lambdas to call once each.
    #[arg(long, default_value_t = 200)]
    count: usize,
    /// Override a setting of the benchmark's worker (repeatable), e.g.
    /// -o features.import_cache= to start every sandbox from scratch.
    #[arg(short = 'o', long = "option", value_name = "KEY=VALUE")]
    options: Vec<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Latency summary of cold starts.
#[derive(Debug, Serialize)]
struct ColdResult {
    count: usize,
    errors: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    mean_ms: f64,
}

#[derive(Debug, clap::Args)]
pub struct HotArgs {
    /// Worker to measure (e.g. http://127.0.0.1:5000); default: start one.
    #[arg(long)]
    target: Option<String>,
    /// Lambda to call.
    #[arg(long, default_value = "hello")]
    lambda: String,
    /// Request body.
    #[arg(long, default_value = r#"{"name": "bench"}"#)]
    body: String,
    /// Connection counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    connections: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Seconds of warm-up before each measurement (not recorded).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// One row of results.
#[derive(Debug, Serialize)]
struct HotResult {
    lambda: String,
    connections: usize,
    requests: usize,
    errors: usize,
    seconds: f64,
    req_per_sec: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    max_us: f64,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Hot(args) => hot(&args),
        BenchCommand::Cold(args) => cold(&args),
    }
}

fn cold(args: &ColdArgs) -> Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let worker = OwnWorker::start_with(&args.options)?;
    let source = "def f(event):\n    return \"Hello, \" + event[\"name\"] + \"!\"\n";
    for i in 0..args.count {
        let dir = worker.dir.path().join("registry").join(format!("cold-{i}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("f.py"), source)?;
    }
    // One call first, so the worker's own first-call costs are not counted.
    let base = format!("http://127.0.0.1:{}/run", worker.port);
    crate::client::post(
        &format!("{base}/hello"),
        br#"{"name": "warm"}"#,
        Duration::from_secs(30),
    )?;
    let mut lat_us = Vec::with_capacity(args.count);
    let mut errors = 0;
    for i in 0..args.count {
        let t0 = Instant::now();
        let a = crate::client::post(
            &format!("{base}/cold-{i}"),
            br#"{"name": "cold"}"#,
            Duration::from_secs(30),
        )?;
        lat_us.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if a.status != 200 {
            errors += 1;
            if errors == 1 {
                eprintln!("ol bench: cold-{i} answered {}: {}", a.status, a.body);
            }
        }
    }
    let mean_ms = lat_us.iter().map(|&v| v as f64).sum::<f64>() / lat_us.len() as f64 / 1e3;
    lat_us.sort_unstable();
    let ms = |p| percentile(&lat_us, p) / 1e3;
    let r = ColdResult {
        count: args.count,
        errors,
        p50_ms: ms(50.0),
        p90_ms: ms(90.0),
        p99_ms: ms(99.0),
        max_ms: ms(100.0),
        mean_ms,
    };
    println!(
        "{:<8} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "cold", "count", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms", "errors"
    );
    println!(
        "{:<8} {:>6} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7}",
        "new", r.count, r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms, r.mean_ms, r.errors
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if errors > 0 {
        bail!("{errors} cold calls failed");
    }
    Ok(())
}

fn hot(args: &HotArgs) -> Result<()> {
    if args.connections.is_empty() || args.connections.contains(&0) {
        bail!("--connections needs positive counts, e.g. --connections 1,4,16");
    }
    let own_worker = match &args.target {
        Some(_) => None,
        None => Some(OwnWorker::start()?),
    };
    let base = match (&args.target, &own_worker) {
        (Some(t), _) => t.trim_end_matches('/').to_string(),
        (None, Some(w)) => format!("http://127.0.0.1:{}", w.port),
        (None, None) => unreachable!("a worker was started above"),
    };
    let addr = base
        .strip_prefix("http://")
        .context("--target must be an http:// URL")?
        .to_string();
    let path = format!("/run/{}", args.lambda);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    println!(
        "{:<10} {:>5} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "lambda", "conns", "req/s", "p50 µs", "p90 µs", "p99 µs", "max µs", "errors"
    );
    for &conns in &args.connections {
        let body = Bytes::from(args.body.clone());
        rt.block_on(load(&addr, &path, &body, conns, secs(args.warmup)))?;
        let (lat, errors, elapsed) =
            rt.block_on(load(&addr, &path, &body, conns, secs(args.seconds)))?;
        let r = summarize(&args.lambda, conns, lat, errors, elapsed);
        println!(
            "{:<10} {:>5} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>7}",
            r.lambda,
            r.connections,
            r.req_per_sec,
            r.p50_us,
            r.p90_us,
            r.p99_us,
            r.max_us,
            r.errors
        );
        results.push(r);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if results.iter().any(|r| r.errors > 0) {
        bail!("some calls failed; see the errors column");
    }
    Ok(())
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Runs `conns` connections, each calling `path` back to back for
/// `duration`; returns every latency (µs), the error count and the time
/// taken.
async fn load(
    addr: &str,
    path: &str,
    body: &Bytes,
    conns: usize,
    duration: Duration,
) -> Result<(Vec<u32>, usize, Duration)> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (addr, path, body) = (addr.to_string(), path.to_string(), body.clone());
        tasks.push(tokio::spawn(async move {
            one_connection(&addr, &path, body, deadline).await
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, errs) = t.await.context("bench task failed")??;
        all.extend(lat);
        errors += errs;
    }
    Ok((all, errors, started.elapsed()))
}

async fn one_connection(
    addr: &str,
    path: &str,
    body: Bytes,
    deadline: Instant,
) -> Result<(Vec<u32>, usize)> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut errors = 0;
    while Instant::now() < deadline {
        let req = hyper::Request::post(path)
            .header("host", addr)
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))?;
        let t0 = Instant::now();
        let resp = sender.send_request(req).await?;
        let ok = resp.status() == 200;
        resp.into_body().collect().await?;
        latencies.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if !ok {
            errors += 1;
        }
    }
    Ok((latencies, errors))
}

fn summarize(
    lambda: &str,
    conns: usize,
    mut lat: Vec<u32>,
    errors: usize,
    elapsed: Duration,
) -> HotResult {
    lat.sort_unstable();
    HotResult {
        lambda: lambda.to_string(),
        connections: conns,
        requests: lat.len(),
        errors,
        seconds: elapsed.as_secs_f64(),
        req_per_sec: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_us: percentile(&lat, 50.0),
        p90_us: percentile(&lat, 90.0),
        p99_us: percentile(&lat, 99.0),
        max_us: lat.last().copied().unwrap_or(0) as f64,
    }
}

/// Nearest-rank percentile of sorted values; 0 for none.
fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

/// A worker the benchmark starts in a temporary directory and stops when
/// dropped.
struct OwnWorker {
    dir: tempfile::TempDir,
    port: u16,
}

impl OwnWorker {
    fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    fn start_with(options: &[String]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ol-bench-").tempdir()?;
        let port_file = dir.path().join("worker/worker.port");
        let mut args = vec!["worker", "up", "-d", "-o", "worker_port=0"];
        for o in options {
            args.extend(["-o", o.as_str()]);
        }
        ol(dir.path(), &args)?;
        let port = std::fs::read_to_string(&port_file)
            .with_context(|| format!("cannot read {}", port_file.display()))?
            .trim()
            .parse()
            .context("bad port file")?;
        Ok(Self { dir, port })
    }
}

impl Drop for OwnWorker {
    fn drop(&mut self) {
        if let Err(e) = ol(self.dir.path(), &["worker", "down"]) {
            eprintln!("ol bench: stopping its worker failed: {e:#}");
        }
    }
}

/// Runs this same binary with `args` and `-p dir`.
fn ol(dir: &Path, args: &[&str]) -> Result<()> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe).args(args).arg("-p").arg(dir).output()?;
    if !out.status.success() {
        bail!(
            "`ol {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn summary_counts_and_rates() {
        let r = summarize("x", 2, vec![30, 10, 20, 40], 1, Duration::from_secs(2));
        assert_eq!((r.requests, r.errors, r.connections), (4, 1, 2));
        assert_eq!(r.req_per_sec, 2.0);
        assert_eq!((r.p50_us, r.max_us), (20.0, 40.0));
    }
}
