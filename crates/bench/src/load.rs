//! Load generation over HTTP/1.1 (or gRPC, `ol.v1.Lambda/Invoke` over
//! h2c): keep-alive connections calling lambdas back to back, single calls
//! on new connections, and measurements of several targets interleaved in
//! slices so a noisy machine's drift hits every target alike.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use indicatif::ProgressBar;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::error::chain;
use crate::stats::Samples;
use crate::target::Target;
use crate::{BenchError, Result};

/// How long one call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Which lambda each call goes to.
#[derive(Debug, Clone)]
pub enum Pick {
    /// Always `/run/<name>`.
    One(String),
    /// `/run/<prefix><i>` with `i` uniform in `0..count`, as OpenLambda's
    /// benchmarks pick among their N lambdas.
    Uniform {
        /// Names are this prefix and a number.
        prefix: String,
        /// How many lambdas: numbers `0..count`.
        count: usize,
    },
}

impl Pick {
    fn path(&self, rng: &mut XorShift) -> String {
        match self {
            Pick::One(name) => format!("/run/{name}"),
            Pick::Uniform { prefix, count } => {
                format!("/run/{prefix}{}", rng.next() % (*count).max(1) as u64)
            }
        }
    }

    /// How results name the lambdas called.
    pub fn label(&self) -> String {
        match self {
            Pick::One(name) => name.clone(),
            Pick::Uniform { prefix, count } => format!("{prefix}[0,{count})"),
        }
    }
}

/// A tiny xorshift generator: lambda choice needs no quality, only no
/// shared state between connections.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// One measurement's plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Which lambda each call goes to.
    pub pick: Pick,
    /// The request body of every call.
    pub body: Bytes,
    /// Keep-alive connections calling at once.
    pub connections: usize,
    /// Measured time per target, split into `rounds` slices.
    pub seconds: f64,
    /// Unrecorded calls per target before the first slice.
    pub warmup: f64,
    /// Slices the measured time is cut into; targets take turns per slice.
    pub rounds: usize,
    /// Call over gRPC (`ol.v1.Lambda/Invoke`, one HTTP/2 connection per
    /// connection) instead of HTTP/1.1 `POST /run/<name>`.
    pub grpc: bool,
}

/// Measures every target with `plan`: warm-up, then `rounds` rounds in
/// which each target gets one slice, in alternating order (ABBA...).
/// Returns one `Samples` per target, in the order given. `progress`
/// advances by one per slice.
pub async fn measure(
    targets: &[Target],
    plan: &Plan,
    progress: &ProgressBar,
) -> Result<Vec<Samples>> {
    for t in targets {
        run_for(t, plan, secs(plan.warmup)).await?;
    }
    let rounds = plan.rounds.max(1);
    let slice = secs(plan.seconds / rounds as f64);
    let mut all: Vec<Samples> = targets.iter().map(|_| Samples::default()).collect();
    for round in 0..rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..targets.len()).collect()
        } else {
            (0..targets.len()).rev().collect()
        };
        for i in order {
            all[i].merge(run_for(&targets[i], plan, slice).await?);
            progress.inc(1);
        }
    }
    Ok(all)
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// `plan.connections` connections to `target`, each calling back to back
/// for `duration`.
async fn run_for(target: &Target, plan: &Plan, duration: Duration) -> Result<Samples> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for i in 0..plan.connections {
        let (addr, pick, body) = (target.addr.clone(), plan.pick.clone(), plan.body.clone());
        let seed = started.elapsed().as_nanos() as u64 ^ (i as u64) << 32;
        let grpc = plan.grpc;
        tasks.push(tokio::spawn(async move {
            if grpc {
                one_connection::<GrpcCaller>(&addr, &pick, body, deadline, seed).await
            } else {
                one_connection::<SendRequest<Full<Bytes>>>(&addr, &pick, body, deadline, seed).await
            }
        }));
    }
    gather(tasks, "a benchmark connection", started).await
}

/// The samples of every task added up, `elapsed` being the time since
/// `started`; `what` names the tasks if one panicked.
async fn gather(
    tasks: Vec<JoinHandle<Result<Samples>>>,
    what: &'static str,
    started: Instant,
) -> Result<Samples> {
    let mut all = Samples::default();
    for t in tasks {
        all.merge(
            t.await
                .map_err(|source| BenchError::Panicked { what, source })??,
        );
    }
    all.elapsed = started.elapsed();
    Ok(all)
}

async fn connect(addr: &str) -> Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| BenchError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// A connection that calls lambdas: HTTP/1.1 or gRPC.
trait Caller: Sized {
    /// Opens one to `addr`.
    async fn open(addr: &str) -> Result<Self>;
    /// Calls the lambda of `path` (`/run/<name>`) with `body`;
    /// `Ok(Some(message))` for a failed call, `Err` when the connection
    /// failed.
    async fn call_path(&mut self, addr: &str, path: &str, body: Bytes) -> Result<Option<String>>;
}

impl Caller for SendRequest<Full<Bytes>> {
    async fn open(addr: &str) -> Result<Self> {
        connect(addr).await
    }

    async fn call_path(&mut self, addr: &str, path: &str, body: Bytes) -> Result<Option<String>> {
        call(self, addr, path, body).await
    }
}

/// A gRPC connection (one HTTP/2 connection: a channel to one address).
struct GrpcCaller(tonic::client::Grpc<tonic::transport::Channel>);

impl Caller for GrpcCaller {
    async fn open(addr: &str) -> Result<Self> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|source| BenchError::GrpcConnect {
                addr: addr.to_string(),
                source,
            })?
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| BenchError::GrpcConnect {
                addr: addr.to_string(),
                source,
            })?;
        Ok(Self(tonic::client::Grpc::new(channel)))
    }

    async fn call_path(&mut self, _: &str, path: &str, body: Bytes) -> Result<Option<String>> {
        use ol_worker::grpc::proto::{INVOKE_PATH, InvokeRequest, InvokeResponse, LAMBDA_METADATA};
        let name = path.strip_prefix("/run/").unwrap_or(path);
        let mut request = tonic::Request::new(InvokeRequest {
            name: name.to_string(),
            body,
            headers: Default::default(),
        });
        if let Ok(named) = tonic::metadata::MetadataValue::try_from(name) {
            request.metadata_mut().insert(LAMBDA_METADATA, named);
        }
        let grpc = &mut self.0;
        let answer = async {
            grpc.ready()
                .await
                .map_err(|e| BenchError::Grpc(format!("not ready: {e}")))?;
            Ok::<_, BenchError>(
                grpc.unary(
                    request,
                    http::uri::PathAndQuery::from_static(INVOKE_PATH),
                    tonic_prost::ProstCodec::<InvokeRequest, InvokeResponse>::default(),
                )
                .await,
            )
        };
        let answer = tokio::time::timeout(CALL_TIMEOUT, answer)
            .await
            .map_err(|elapsed| BenchError::NoAnswer(CALL_TIMEOUT, elapsed))??;
        match answer {
            Ok(response) if response.get_ref().status == 200 => Ok(None),
            Ok(response) => {
                let reply = response.into_inner();
                Ok(Some(format!(
                    "{path}: {} {}",
                    reply.status,
                    one_line(&String::from_utf8_lossy(&reply.body), 300)
                )))
            }
            // A transport failure: the connection is to be reopened.
            Err(status) if status.code() == tonic::Code::Unavailable => Err(BenchError::Grpc(
                format!("{:?}: {}", status.code(), status.message()),
            )),
            Err(status) => Ok(Some(format!(
                "{path}: gRPC {:?} {}",
                status.code(),
                one_line(status.message(), 300)
            ))),
        }
    }
}

/// Calls back to back until `deadline`. A connection that fails mid-run
/// counts one error and is reopened once; if that fails too, it stops.
async fn one_connection<C: Caller>(
    addr: &str,
    pick: &Pick,
    body: Bytes,
    deadline: Instant,
    seed: u64,
) -> Result<Samples> {
    let mut sender = C::open(addr).await?;
    let mut rng = XorShift::new(seed);
    let mut samples = Samples::default();
    while Instant::now() < deadline {
        let path = pick.path(&mut rng);
        let t0 = Instant::now();
        match sender.call_path(addr, &path, body.clone()).await {
            Ok(error) => samples.record(t0.elapsed(), error),
            Err(e) => {
                samples.record_error(format!("{path}: {}", chain(&e)));
                match C::open(addr).await {
                    Ok(s) => sender = s,
                    Err(e) => {
                        samples.record_error(chain(&e));
                        break;
                    }
                }
            }
        }
    }
    Ok(samples)
}

/// One POST on an open connection; `Ok(Some(message))` for a non-200
/// answer, `Err` when the connection failed.
async fn call(
    sender: &mut SendRequest<Full<Bytes>>,
    addr: &str,
    path: &str,
    body: Bytes,
) -> Result<Option<String>> {
    let req = hyper::Request::post(path)
        .header("host", addr)
        .header("content-type", "application/json")
        .body(Full::new(body))?;
    let answer = async {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, BenchError>((status, body))
    };
    let (status, body) = tokio::time::timeout(CALL_TIMEOUT, answer)
        .await
        .map_err(|elapsed| BenchError::NoAnswer(CALL_TIMEOUT, elapsed))??;
    if status == hyper::StatusCode::OK {
        return Ok(None);
    }
    Ok(Some(format!(
        "{path}: {} {}",
        status.as_u16(),
        one_line(&String::from_utf8_lossy(&body), 300)
    )))
}

/// `text` on one line, cut to `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &flat[..i]),
        None => flat,
    }
}

/// Calls each of `names` once, in order, each on a new connection (as a
/// client that calls a function once would), and records every call.
pub async fn call_each(
    target: &Target,
    names: &[String],
    body: &Bytes,
    progress: &ProgressBar,
) -> Result<Samples> {
    let started = Instant::now();
    let mut samples = Samples::default();
    for name in names {
        let path = format!("/run/{name}");
        let t0 = Instant::now();
        let outcome = match connect(&target.addr).await {
            Ok(mut sender) => call(&mut sender, &target.addr, &path, body.clone()).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(error) => samples.record(t0.elapsed(), error),
            Err(e) => samples.record(t0.elapsed(), Some(format!("{path}: {}", chain(&e)))),
        }
        progress.inc(1);
    }
    samples.elapsed = started.elapsed();
    Ok(samples)
}

/// Calls each of `names` once, all at the same time, each on a new
/// connection of its own; `elapsed` is the wall time until the last answer.
pub async fn call_all_at_once(
    target: &Target,
    names: &[String],
    body: &Bytes,
    progress: &ProgressBar,
) -> Result<Samples> {
    let started = Instant::now();
    let tasks: Vec<_> = names
        .iter()
        .map(|name| {
            let (t, name, body, bar) =
                (target.clone(), name.clone(), body.clone(), progress.clone());
            tokio::spawn(
                async move { call_each(&t, std::slice::from_ref(&name), &body, &bar).await },
            )
        })
        .collect();
    gather(tasks, "a benchmark call", started).await
}

/// A current-thread runtime for the client side: one thread keeps the
/// client's own CPU use (and its cross-CPU wake-ups) low.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_pick_stays_in_range_and_spreads() {
        let pick = Pick::Uniform {
            prefix: "bench-py-".into(),
            count: 4,
        };
        let mut rng = XorShift::new(1);
        let mut seen = [0usize; 4];
        for _ in 0..400 {
            let p = pick.path(&mut rng);
            let i: usize = p
                .strip_prefix("/run/bench-py-")
                .expect("prefix")
                .parse()
                .expect("n");
            seen[i] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert_eq!(pick.label(), "bench-py-[0,4)");
        assert_eq!(Pick::One("hello".into()).path(&mut rng), "/run/hello");
    }

    #[test]
    fn error_bodies_are_flattened_and_cut() {
        assert_eq!(one_line("a\n  b\tc", 10), "a b c");
        assert_eq!(one_line("abcdef", 3), "abc...");
    }
}
