//! Worker ↔ runtime framing, decided by measurement (docs/benchmarks.md):
//! one hello-lambda round trip over a connected unix socketpair with
//!
//! - `frame`: the real runtime (`runtimes/python/ol_runtime.py`) started by
//!   [`ProcessPool`] and driven through [`SafeSandbox::call`], the production
//!   path, speaking the length-prefixed frames of docs/protocol.md;
//! - `http_raw`: `runtimes/python/bench/http_runtime.py`, a hand-parsed
//!   HTTP/1.1 keep-alive loop, driven by a hyper 1.x client connection;
//! - `http_server`: the same script in its `http.server` mode (a stock
//!   `BaseHTTPRequestHandler`), driven the same way.
//!
//! All three are started the same way (`<python> -I -S <script> --fd 3
//! --code DIR --name hello`, socket on fd 3, own process group) and send
//! the same body with the same content-type header. The HTTP runtimes run
//! each call through ol_runtime.py's own lambda handler, so the Python work
//! besides the framing is the same in all three. Both clients run on one
//! current-thread tokio runtime and put the same per-call timeout around
//! the round trip.
//!
//! After criterion's measurements (which run the variants one after the
//! other), the bench runs its own timed loop for percentiles: 2,000 warm-up
//! calls per variant, then `OL_BENCH_ROUNDS` rounds (default 3). In a round
//! the variants take turns in blocks of 1,000 timed calls (each after 100
//! untimed ones) until each has made `OL_BENCH_CALLS` (default 30,000); it
//! prints p50/p99/mean latency and req/s (timed calls over their summed
//! wall time) per variant and round, and the ratios to `frame` within the
//! round. The host's speed drifts, so compare within a round.
//!
//! `OL_BENCH_PIN=same` pins the client thread and all runtimes to CPU 0;
//! `OL_BENCH_PIN=split` puts the client on CPU 0 and the runtimes on CPU 1.
//! Unset, the scheduler places them (docs/benchmarks.md, "Floors": a cross-CPU wakeup costs
//! about 35 µs on this VM, so placement dominates 1-connection latency).
//!
//! Run: `cargo bench -p ol-sandbox --bench framing` (a positional filter
//! such as `-- http` applies to both parts). The runtimes are killed with
//! their process groups when the bench ends or panics; if the bench is
//! killed instead, they see EOF on the socket and exit by themselves.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use ol_base::python::resolve_python;
use ol_sandbox::process::{ProcessPool, RuntimeCommand};
use ol_sandbox::{Invocation, Limits, NewSandbox, SafeSandbox, Sandbox, SandboxPool, SandboxSpec};
use tokio::runtime::Runtime;

const LAMBDA: &str = "def f(event):\n    return \"Hello, \" + event[\"name\"] + \"!\"\n";
const BODY: &[u8] = br#"{"name": "bench"}"#;
const EXPECTED: &[u8] = br#""Hello, bench!""#;
/// Per-call limit, as the worker puts around every call.
const CALL_LIMIT: Duration = Duration::from_secs(30);
/// The default `limits.max_response_mb`, in bytes.
const MAX_RESPONSE: usize = 6 << 20;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const WARM_UP_CALLS: usize = 2_000;
const DEFAULT_CALLS: usize = 30_000;
const BLOCK_CALLS: usize = 1_000;
const BLOCK_WARM_UP_CALLS: usize = 100;
const DEFAULT_ROUNDS: usize = 3;

/// The framings compared, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Frame,
    HttpRaw,
    HttpServer,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Frame, Variant::HttpRaw, Variant::HttpServer];

    fn name(self) -> &'static str {
        match self {
            Variant::Frame => "frame",
            Variant::HttpRaw => "http_raw",
            Variant::HttpServer => "http_server",
        }
    }

    /// Criterion's id, which the command-line filter matches.
    fn id(self) -> String {
        format!("framing/{}", self.name())
    }
}

/// One started runtime and the client side of its connection.
enum Driver {
    Frame {
        sandbox: SafeSandbox,
    },
    Http {
        // Declared first so the connection is dropped before the process is
        // killed.
        sender: SendRequest<Full<Bytes>>,
        process: Box<dyn Sandbox>,
    },
}

impl Driver {
    fn start(rt: &Runtime, variant: Variant, setup: &Setup) -> Self {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let (script, env) = match variant {
            Variant::Frame => (repo.join("runtimes/python/ol_runtime.py"), vec![]),
            Variant::HttpRaw => (
                repo.join("runtimes/python/bench/http_runtime.py"),
                vec![("OL_BENCH_HTTP_SERVER".to_string(), "raw".to_string())],
            ),
            Variant::HttpServer => (
                repo.join("runtimes/python/bench/http_runtime.py"),
                vec![(
                    "OL_BENCH_HTTP_SERVER".to_string(),
                    "http.server".to_string(),
                )],
            ),
        };
        let script = script.canonicalize().expect("runtime script exists");
        let pool = ProcessPool::new(
            RuntimeCommand {
                python: setup.python.clone(),
                script,
                packages: setup.scratch.path().join("packages"),
            },
            setup.scratch.path().join(variant.name()),
        )
        .expect("process pool");
        let spec = SandboxSpec {
            lambda: "hello".to_string(),
            code_dir: setup.code.path().to_path_buf(),
            env,
            limits: Limits::default(),
            packages: Vec::new(),
            zygote: Vec::new(),
            lambda_logs: None,
        };
        let new = pool.create(&spec).expect("start the runtime");
        match variant {
            Variant::Frame => {
                let sandbox = rt
                    .block_on(SafeSandbox::start(new, READY_TIMEOUT))
                    .expect("runtime ready");
                Driver::Frame { sandbox }
            }
            Variant::HttpRaw | Variant::HttpServer => {
                let NewSandbox { sandbox, conn, .. } = new;
                conn.set_nonblocking(true).expect("nonblocking socket");
                let _guard = rt.enter();
                let stream = tokio::net::UnixStream::from_std(conn).expect("register socket");
                let (sender, connection) = rt
                    .block_on(hyper::client::conn::http1::handshake(TokioIo::new(stream)))
                    .expect("http/1.1 handshake");
                rt.spawn(async move {
                    if let Err(e) = connection.await {
                        eprintln!("framing bench: http connection failed: {e}");
                    }
                });
                Driver::Http {
                    sender,
                    process: sandbox,
                }
            }
        }
    }

    /// Host pid of the runtime process.
    fn pid(&self) -> u32 {
        match self {
            Driver::Frame { sandbox } => sandbox.pid(),
            Driver::Http { process, .. } => process.pid(),
        }
    }

    /// One round trip; returns the response body. Panics on anything but a
    /// 200 (the bench must not measure errors).
    async fn call(&mut self) -> Bytes {
        match self {
            Driver::Frame { sandbox } => {
                let inv = Invocation {
                    method: "POST".to_string(),
                    path: "/".to_string(),
                    query: String::new(),
                    headers: vec![("content-type".to_string(), "application/json".to_string())],
                    body: Bytes::from_static(BODY),
                    request_id: "0123456789abcdef".to_string(),
                    trigger: None,
                };
                let reply = sandbox
                    .call(&inv, CALL_LIMIT, MAX_RESPONSE)
                    .await
                    .expect("frame call");
                assert_eq!(reply.status, 200, "frame call status");
                reply.body
            }
            Driver::Http { sender, .. } => {
                let round_trip = async {
                    sender.ready().await?;
                    let req = Request::post("/")
                        .header(CONTENT_TYPE, "application/json")
                        .body(Full::new(Bytes::from_static(BODY)))
                        .expect("valid request");
                    let resp = sender.send_request(req).await?;
                    let status = resp.status();
                    let body = resp.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>((status, body))
                };
                let (status, body) = tokio::time::timeout(CALL_LIMIT, round_trip)
                    .await
                    .expect("http call timed out")
                    .expect("http call");
                assert_eq!(status, StatusCode::OK, "http call status");
                body
            }
        }
    }
}

/// What all variants share: the interpreter, the lambda's code and the
/// scratch root (both removed on drop).
struct Setup {
    python: PathBuf,
    code: tempfile::TempDir,
    scratch: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let python = resolve_python("python3")
            .expect("a Python 3 interpreter")
            .executable;
        let code = tempfile::tempdir().expect("code dir");
        fs::write(code.path().join("f.py"), LAMBDA).expect("write f.py");
        let scratch = tempfile::tempdir().expect("scratch dir");
        Self {
            python,
            code,
            scratch,
        }
    }
}

/// Latency percentiles and throughput of one timed run.
#[derive(Debug, Clone, Copy)]
struct Stats {
    calls: usize,
    p50: Duration,
    p99: Duration,
    mean: Duration,
    req_per_sec: f64,
}

impl Stats {
    fn of(mut latencies: Vec<Duration>, wall: Duration) -> Self {
        latencies.sort_unstable();
        let calls = latencies.len();
        let total: Duration = latencies.iter().sum();
        Self {
            calls,
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            mean: total / calls.max(1) as u32,
            req_per_sec: calls as f64 / wall.as_secs_f64(),
        }
    }
}

/// Nearest-rank percentile of sorted, non-empty `sorted`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The timed calls of one variant in one round.
#[derive(Debug, Default)]
struct Samples {
    latencies: Vec<Duration>,
    wall: Duration,
}

/// `warm_up` untimed calls, then `calls` calls timed one by one into
/// `samples`.
fn timed_block(
    rt: &Runtime,
    driver: &mut Driver,
    warm_up: usize,
    calls: usize,
    samples: &mut Samples,
) {
    rt.block_on(async {
        for _ in 0..warm_up {
            driver.call().await;
        }
        let start = Instant::now();
        for _ in 0..calls {
            let t = Instant::now();
            let body = driver.call().await;
            samples.latencies.push(t.elapsed());
            assert_eq!(&body[..], EXPECTED, "unexpected response body");
        }
        samples.wall += start.elapsed();
    });
}

/// What the command line asks of the bench besides criterion's options.
struct Args {
    /// `--list`: only list, measure nothing.
    list: bool,
    /// `--test` (`cargo test --benches`): one short round as a smoke test.
    test: bool,
    /// Criterion's positional filter.
    filter: Option<String>,
}

impl Args {
    fn parse() -> Self {
        // Criterion's options that take a value, so their value is not taken
        // for the filter.
        const WITH_VALUE: &[&str] = &[
            "-c",
            "--color",
            "--colour",
            "-s",
            "--save-baseline",
            "-b",
            "--baseline",
            "--baseline-lenient",
            "--load-baseline",
            "--sample-size",
            "--warm-up-time",
            "--measurement-time",
            "--nresamples",
            "--noise-threshold",
            "--confidence-level",
            "--significance-level",
            "--profile-time",
            "--plotting-backend",
            "--output-format",
            "--format",
        ];
        let mut args = Args {
            list: false,
            test: false,
            filter: None,
        };
        let mut skip_value = false;
        for arg in env::args().skip(1) {
            if skip_value {
                skip_value = false;
            } else if arg == "--list" {
                args.list = true;
            } else if arg == "--test" {
                args.test = true;
            } else if arg.starts_with('-') {
                skip_value = !arg.contains('=') && WITH_VALUE.contains(&arg.as_str());
            } else if args.filter.is_none() {
                args.filter = Some(arg);
            }
        }
        args
    }

    fn selects(&self, variant: Variant) -> bool {
        self.filter
            .as_deref()
            .is_none_or(|f| variant.id().contains(f))
    }
}

fn env_count(name: &str, default: usize) -> usize {
    match env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a count")),
        Err(_) => default,
    }
}

/// Where the client (this thread) and the runtimes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Wherever the scheduler puts them (the default).
    Unpinned,
    /// All on CPU 0: no cross-CPU wakeups.
    Same,
    /// Client on CPU 0, runtimes on CPU 1: every message wakes the other CPU.
    Split,
}

impl Placement {
    fn from_env() -> Self {
        match env::var("OL_BENCH_PIN").as_deref() {
            Err(_) | Ok("") | Ok("none") => Placement::Unpinned,
            Ok("same") => Placement::Same,
            Ok("split") => Placement::Split,
            Ok(other) => panic!("OL_BENCH_PIN={other:?}: expected none, same or split"),
        }
    }

    /// Pins this thread and the runtime processes as asked.
    fn apply(self, runtime_pids: &[u32]) {
        let (client, runtimes) = match self {
            Placement::Unpinned => return,
            Placement::Same => (0, 0),
            Placement::Split => (0, 1),
        };
        pin(0, client);
        for &pid in runtime_pids {
            pin(pid, runtimes);
        }
    }
}

/// Restricts `pid` (0: the calling thread) to `cpu`.
fn pin(pid: u32, cpu: usize) {
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;
    let mut set = CpuSet::new();
    set.set(cpu).expect("valid CPU number");
    sched_setaffinity(Pid::from_raw(pid as i32), &set)
        .unwrap_or_else(|e| panic!("cannot pin pid {pid} to CPU {cpu}: {e}"));
}

/// The CPUs `pid` (0: the calling thread) may run on, as `0,1`.
fn allowed_cpus(pid: u32) -> String {
    use nix::sched::{CpuSet, sched_getaffinity};
    use nix::unistd::Pid;
    match sched_getaffinity(Pid::from_raw(pid as i32)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .map(|cpu| cpu.to_string())
            .collect::<Vec<_>>()
            .join(","),
        Err(e) => format!("unknown ({e})"),
    }
}

fn main() {
    let args = Args::parse();
    let mut criterion = Criterion::default().configure_from_args();
    let variants: Vec<Variant> = Variant::ALL
        .into_iter()
        .filter(|&v| args.selects(v))
        .collect();
    if args.list {
        for v in &variants {
            println!("{}: benchmark", v.id());
        }
        return;
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let placement = Placement::from_env();
    let setup = Setup::new();
    // Every driver owns its runtime process; dropping `drivers` (normally or
    // while unwinding from a panic) kills them.
    let mut drivers: Vec<(Variant, Driver)> = variants
        .iter()
        .map(|&v| (v, Driver::start(&rt, v, &setup)))
        .collect();
    let pids: Vec<u32> = drivers.iter().map(|(_, d)| d.pid()).collect();
    placement.apply(&pids);
    println!(
        "framing bench: python {}, placement {placement:?}: client on CPU(s) {}, runtimes on CPU(s) {}",
        setup.python.display(),
        allowed_cpus(0),
        pids.first()
            .map_or_else(String::new, |&pid| allowed_cpus(pid)),
    );
    for (variant, driver) in &mut drivers {
        let body = rt.block_on(driver.call());
        assert_eq!(&body[..], EXPECTED, "{} answered {body:?}", variant.name());
    }

    let mut group = criterion.benchmark_group("framing");
    for (variant, driver) in &mut drivers {
        group.bench_function(variant.name(), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(driver.call().await);
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();

    // The host is shared and its speed drifts from second to second, so the
    // variants take turns in short blocks: each block of every variant sees
    // about the same machine, and ratios within a round are meaningful.
    let (rounds, calls, block, block_warm_up) = if args.test {
        (1, 100, 50, 5)
    } else {
        (
            env_count("OL_BENCH_ROUNDS", DEFAULT_ROUNDS).max(1),
            env_count("OL_BENCH_CALLS", DEFAULT_CALLS).max(1),
            BLOCK_CALLS,
            BLOCK_WARM_UP_CALLS,
        )
    };
    for (_, driver) in &mut drivers {
        let warm_up = if args.test { 10 } else { WARM_UP_CALLS };
        timed_block(&rt, driver, warm_up, 0, &mut Samples::default());
    }
    println!(
        "\nframing percentiles: {rounds} round(s); in each, the variants take turns in blocks of \
         {block} timed calls (after {block_warm_up} untimed ones) until each has made {calls}"
    );
    println!(
        "{:<6} {:<12} {:>8} {:>8} {:>8} {:>9}  vs frame (p50, req/s)",
        "round", "variant", "p50 µs", "p99 µs", "mean µs", "req/s"
    );
    let mut all: Vec<(usize, Variant, Stats)> = Vec::new();
    for round in 1..=rounds {
        let mut samples: Vec<Samples> = drivers.iter().map(|_| Samples::default()).collect();
        let mut done = 0;
        while done < calls {
            let n = block.min(calls - done);
            for ((_, driver), samples) in drivers.iter_mut().zip(&mut samples) {
                timed_block(&rt, driver, block_warm_up, n, samples);
            }
            done += n;
        }
        let mut frame: Option<Stats> = None;
        for ((variant, _), samples) in drivers.iter().zip(samples) {
            let stats = Stats::of(samples.latencies, samples.wall);
            if *variant == Variant::Frame {
                frame = Some(stats);
            }
            let mut line = format!(
                "{:<6} {:<12} {:>8.1} {:>8.1} {:>8.1} {:>9.0}",
                round,
                variant.name(),
                micros(stats.p50),
                micros(stats.p99),
                micros(stats.mean),
                stats.req_per_sec
            );
            if let (Some(f), false) = (frame, *variant == Variant::Frame) {
                let _ = write!(
                    line,
                    "  {:.2}x, {:.2}x",
                    micros(stats.p50) / micros(f.p50),
                    stats.req_per_sec / f.req_per_sec
                );
            }
            println!("{line}");
            all.push((round, *variant, stats));
        }
    }
    println!("per variant, over rounds (p50 range µs / p99 range µs / req/s range):");
    for variant in &variants {
        let runs: Vec<Stats> = all
            .iter()
            .filter(|(_, v, _)| v == variant)
            .map(|(_, _, s)| *s)
            .collect();
        let range = |f: fn(&Stats) -> f64, digits: usize| {
            let lo = runs.iter().map(f).fold(f64::INFINITY, f64::min);
            let hi = runs.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
            format!("{lo:.digits$}–{hi:.digits$}")
        };
        println!(
            "  {:<12} {} / {} / {} ({} calls per round)",
            variant.name(),
            range(|s| micros(s.p50), 1),
            range(|s| micros(s.p99), 1),
            range(|s| s.req_per_sec, 0),
            runs.first().map_or(0, |s| s.calls),
        );
    }

    drop(drivers);
    criterion.final_summary();
}
