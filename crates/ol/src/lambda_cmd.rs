//! The commands of a lambda's author: `ol new` (a lambda directory from a
//! template, with a test to run) and `ol invoke` (call a lambda of the
//! running worker, showing what it installs while the call waits).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ol_worker::WorkerDir;
use ol_worker::client;

use crate::DirArg;
use crate::admin::{Running, running_worker};

/// How long `ol invoke` waits for an answer: a first call may install
/// packages for minutes.
const INVOKE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// When a waiting `ol invoke` first asks the worker what it installs.
const FIRST_INSTALL_LOOK: Duration = Duration::from_millis(100);
/// How often it asks after that.
const INSTALL_POLL: Duration = Duration::from_millis(250);

/// `ol invoke`'s arguments.
#[derive(Debug, clap::Args)]
pub struct InvokeArgs {
    #[command(flatten)]
    dir: DirArg,
    /// The lambda, optionally with a path and query (`hello/items?id=1`).
    #[arg(value_name = "NAME")]
    name: String,
    /// The request body: JSON (or any text), or @FILE to send FILE's bytes.
    #[arg(short = 'd', long = "data", value_name = "JSON|@FILE")]
    data: Option<String>,
    /// The HTTP method [default: POST with -d or --grpc, else GET].
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    method: Option<String>,
    /// An extra request header `NAME:VALUE`. Repeatable.
    #[arg(short = 'H', long = "header", value_name = "NAME:VALUE")]
    headers: Vec<String>,
    /// Also show the status, the request id and the time taken (on stderr).
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Call over gRPC (`ol.v1.Lambda/Invoke`, docs/lb.md) instead of HTTP:
    /// a POST of the body at `/`, -H headers in the request's headers.
    #[arg(long)]
    grpc: bool,
    /// Call the worker or balancer (`ol lb`) at URL, `http://HOST:PORT`,
    /// instead of the running worker of the worker directory.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
}

/// The templates of `ol new`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Template {
    /// `f(event, ctx)` in f.py, stdlib only.
    Python,
    /// A WSGI app in app.py, stdlib only.
    Wsgi,
    /// An ASGI app in app.py, stdlib only.
    Asgi,
    /// A Flask app (requirements.txt: flask).
    Flask,
    /// A FastAPI app (requirements.txt: fastapi).
    Fastapi,
    /// `f(event)` using numpy (requirements.txt: numpy).
    Numpy,
}

impl Template {
    /// Its files: (name, contents).
    fn files(self) -> &'static [(&'static str, &'static str)] {
        macro_rules! files {
            ($dir:literal: $($file:literal),+) => {
                &[$(($file, include_str!(concat!("../templates/", $dir, "/", $file)))),+]
            };
        }
        match self {
            Template::Python => files!("python": "f.py", "test_f.py"),
            Template::Wsgi => files!("wsgi": "app.py", "test_app.py"),
            Template::Asgi => files!("asgi": "app.py", "test_app.py"),
            Template::Flask => files!("flask": "app.py", "test_app.py", "requirements.txt"),
            Template::Fastapi => files!("fastapi": "app.py", "test_app.py", "requirements.txt"),
            Template::Numpy => files!("numpy": "f.py", "test_f.py", "requirements.txt"),
        }
    }
}

/// `ol new NAME`: a lambda directory `NAME` (in `parent`) from `template`.
pub fn new(name: &str, template: Template, parent: &Path) -> Result<()> {
    ol_registry::validate_name(name)?;
    let dir = parent.join(name);
    if dir.exists() {
        bail!(
            "{} exists already; choose another name or remove it",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for (file, contents) in template.files() {
        let path = dir.join(file);
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
        written.push(*file);
    }
    let packages = if written.contains(&"requirements.txt") {
        "\n  (pip install -r requirements.txt first; the worker installs them itself)"
    } else {
        ""
    };
    println!(
        "created {} ({})\n\
         test it:    cd {} && python3 -m unittest{packages}\n\
         install it: ol admin install {}\n\
         call it:    ol invoke {name} -d '{{\"name\": \"Alice\"}}'",
        dir.display(),
        written.join(", "),
        dir.display(),
        dir.display(),
    );
    Ok(())
}

/// `ol invoke`: prints the answer's body; a status of 400 or more is an
/// error (the worker's error text, with the traceback and request id).
pub fn invoke(args: &InvokeArgs) -> Result<()> {
    // Without --url: the running worker of the directory, whose installs
    // are shown while a call waits for them.
    let (base, worker) = match &args.url {
        Some(url) => (url.trim_end_matches('/').to_string(), None),
        None => {
            let worker = running(&args.dir.open()?)?;
            (worker.url.clone(), Some(worker))
        }
    };
    let body = match &args.data {
        Some(data) => match data.strip_prefix('@') {
            Some(file) => std::fs::read(file).with_context(|| format!("cannot read {file}"))?,
            None => data.clone().into_bytes(),
        },
        None => Vec::new(),
    };
    let method = match &args.method {
        Some(m) => m.to_ascii_uppercase(),
        None if args.data.is_some() || args.grpc => "POST".into(),
        None => "GET".into(),
    };
    let headers = args
        .headers
        .iter()
        .map(|h| match h.split_once(':') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => bail!("bad header {h:?}: expected NAME:VALUE, e.g. -H 'x-trace:1'"),
        })
        .collect::<Result<Vec<_>>>()?;
    let lambda = args.name.split(['/', '?']).next().unwrap_or_default();
    ol_registry::validate_name(lambda)?;
    if args.grpc {
        if lambda != args.name {
            bail!("--grpc calls {lambda} at `/`: a gRPC call has no path or query of its own");
        }
        if method != "POST" {
            bail!("--grpc calls are POSTs, not {method}");
        }
        return invoke_grpc(&base, lambda, worker.as_ref(), body, headers, args.verbose);
    }
    let url = format!("{base}/run/{}", args.name);
    let started = Instant::now();
    let watcher = worker.as_ref().map(InstallWatcher::start);
    let answer = client::request_with_headers(&method, &url, &headers, &body, None, INVOKE_TIMEOUT);
    drop(watcher);
    let answer = answer?;
    let request_id = answer.header("x-request-id").unwrap_or("-").to_string();
    if args.verbose {
        eprintln!(
            "{method} {url}: {} in {:.1} ms, request id {request_id}",
            answer.status,
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    if answer.status < 400 {
        let mut out = std::io::stdout().lock();
        out.write_all(answer.body.as_bytes())?;
        if !answer.body.ends_with('\n') {
            out.write_all(b"\n")?;
        }
        return Ok(());
    }
    let error = serde_json::from_str::<serde_json::Value>(&answer.body).ok();
    let (message, traceback) = match &error {
        Some(v) if v["error"].is_string() => (
            v["error"].as_str().unwrap_or_default().to_string(),
            v["traceback"].as_str().map(str::to_string),
        ),
        _ => (answer.body.trim().to_string(), None),
    };
    let traceback = traceback.map(|t| format!("\n{t}")).unwrap_or_default();
    bail!(
        "{lambda} answered {}: {message}{traceback}\n(request id {request_id}; `ol logs {lambda}` has its output)",
        answer.status
    )
}

/// `ol invoke --grpc`: calls `lambda` at `base` over gRPC; prints the
/// body as the HTTP path does, fails with the gRPC status (or the
/// lambda's own error status) otherwise.
fn invoke_grpc(
    base: &str,
    lambda: &str,
    worker: Option<&Running>,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
    verbose: bool,
) -> Result<()> {
    use ol_worker::grpc::client::GrpcClient;
    use ol_worker::grpc::proto::INVOKE_PATH;
    let started = Instant::now();
    let mut client = GrpcClient::connect(base, INVOKE_TIMEOUT)
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?;
    let watcher = worker.map(InstallWatcher::start);
    let answer = client.invoke(lambda, body.into(), headers.into_iter().collect());
    drop(watcher);
    let took_ms = started.elapsed().as_secs_f64() * 1e3;
    let answer = match answer {
        Ok(answer) => answer,
        Err(status) => {
            let request_id = status
                .metadata()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            if verbose {
                eprintln!(
                    "gRPC {base}{INVOKE_PATH} {lambda}: {:?} in {took_ms:.1} ms, request id {request_id}",
                    status.code()
                );
            }
            bail!(
                "{lambda} failed with gRPC status {} ({:?}): {}\n(request id {request_id}; `ol logs {lambda}` has its output)",
                status.code() as i32,
                status.code(),
                status.message()
            )
        }
    };
    let response = answer.response;
    let request_id = answer
        .metadata
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    if verbose {
        eprintln!(
            "gRPC {base}{INVOKE_PATH} {lambda}: OK, status {} in {took_ms:.1} ms, request id {request_id}",
            response.status
        );
    }
    let text = String::from_utf8_lossy(&response.body);
    if response.status < 400 {
        let mut out = std::io::stdout().lock();
        out.write_all(&response.body)?;
        if !response.body.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        return Ok(());
    }
    bail!(
        "{lambda} answered {}: {}\n(request id {request_id})",
        response.status,
        text.trim()
    )
}

/// The running worker of `wd`, or an error saying how to start one.
fn running(wd: &WorkerDir) -> Result<Running> {
    running_worker(wd)?.with_context(|| {
        format!(
            "no worker is running in {}; start one with `ol worker up -d -p {}`",
            wd.root().display(),
            wd.root().display()
        )
    })
}

/// While a call waits, shows the packages the worker installs (a spinner
/// on a terminal, a line per package otherwise), from its `/stats`.
struct InstallWatcher {
    /// Dropped to stop the thread at once.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InstallWatcher {
    fn start(worker: &Running) -> Self {
        let (stop, stopped) = mpsc::channel();
        let url = worker.url.clone();
        let key = worker.key.clone();
        let thread = std::thread::Builder::new()
            .name("install-watch".into())
            .spawn(move || watch_installs(&url, key.as_ref(), &stopped))
            .ok();
        Self {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for InstallWatcher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch_installs(
    url: &str,
    key: Option<&ol_worker::access::AdminKey>,
    stopped: &mpsc::Receiver<()>,
) {
    let terminal = std::io::stderr().is_terminal();
    let mut spinner: Option<indicatif::ProgressBar> = None;
    let mut shown = std::collections::BTreeSet::new();
    let started = Instant::now();
    // A hot call is over before the first look, and ends the wait at once.
    let mut wait = FIRST_INSTALL_LOOK;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
        wait = INSTALL_POLL;
        let Ok(stats) = client::stats_with_key(url, key, Duration::from_secs(2)) else {
            continue;
        };
        let installing = stats
            .lambda_layer
            .packages
            .map(|p| p.installing)
            .unwrap_or_default();
        if installing.is_empty() {
            continue;
        }
        let line = format!("installing {}", installing.join(", "));
        if terminal {
            let bar = spinner.get_or_insert_with(|| {
                let bar = indicatif::ProgressBar::new_spinner();
                if let Ok(style) =
                    indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {wide_msg}")
                {
                    bar.set_style(style);
                }
                bar.enable_steady_tick(Duration::from_millis(100));
                bar
            });
            bar.set_message(line);
        } else {
            for package in installing {
                if shown.insert(package.clone()) {
                    eprintln!(
                        "[{:5.1}s] installing {package}",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }
    if let Some(bar) = spinner {
        bar.finish_and_clear();
    }
}

/// Where `ol new` makes the directory: the current one unless told.
pub fn parent_dir(dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(|| PathBuf::from("."))
}

/// `ol logs`' arguments.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    #[command(flatten)]
    dir: DirArg,
    /// The lambda.
    name: String,
    /// Keep printing new lines as they come (Ctrl-C to stop).
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only lines of the last DURATION (`30s`, `10m`, `2h`, `1d`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    since: Option<Duration>,
    /// Print the entries as JSON lines, as the worker keeps them.
    #[arg(long)]
    json: bool,
}

/// How often `ol logs -f` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(300);

/// `30s`, `10m`, `2h`, `1d` (a bare number is seconds).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, e.g. 10m"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit is one of s, m, h, d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(seconds)))
}

/// `ol logs NAME`: the lambda's kept lines from the worker directory (no
/// running worker needed), oldest first.
pub fn logs(args: &LogsArgs) -> Result<()> {
    use ol_sandbox::lambda_logs::{LambdaLogs, LogEntry};
    let wd = args.dir.open()?;
    ol_registry::validate_name(&args.name)?;
    let dir = wd.lambda_logs();
    let since = match args.since {
        Some(d) => Some(
            jiff::Timestamp::now()
                .checked_sub(jiff::SignedDuration::try_from(d)?)
                .context("--since reaches too far back")?,
        ),
        None => None,
    };
    let wanted = |e: &LogEntry| match (&since, e.time.parse::<jiff::Timestamp>()) {
        (Some(since), Ok(time)) => time >= *since,
        _ => true,
    };
    let read = || {
        LambdaLogs::read(&dir, &args.name)
            .with_context(|| format!("cannot read the log of {} in {}", args.name, dir.display()))
    };
    let mut out = std::io::stdout().lock();
    let entries = read()?;
    if entries.is_empty() && !args.follow {
        eprintln!(
            "no lines kept for {} in {} (yet): a lambda's lines appear once it prints",
            args.name,
            dir.display()
        );
    }
    for entry in entries.iter().filter(|e| wanted(e)) {
        print_entry(&mut out, entry, args.json)?;
    }
    if !args.follow {
        return Ok(());
    }
    let mut last: Option<LogEntry> = entries.last().cloned();
    loop {
        std::thread::sleep(FOLLOW_POLL);
        let entries = read()?;
        // Everything after the last entry printed; all of it when that
        // entry was rotated away.
        let start = last
            .as_ref()
            .and_then(|l| entries.iter().rposition(|e| e == l))
            .map_or(0, |i| i + 1);
        for entry in &entries[start..] {
            print_entry(&mut out, entry, args.json)?;
        }
        out.flush()?;
        if let Some(entry) = entries.last() {
            last = Some(entry.clone());
        }
    }
}

/// One entry: `TIME SANDBOX REQUEST STREAM| text`, what the lambda wrote
/// shown with control characters escaped (it cannot move the cursor or
/// paint the terminal) and its later lines indented (it cannot pass for
/// another entry).
fn print_entry(
    out: &mut impl Write,
    entry: &ol_sandbox::lambda_logs::LogEntry,
    json: bool,
) -> Result<()> {
    if json {
        serde_json::to_writer(&mut *out, entry)?;
        out.write_all(b"\n")?;
        return Ok(());
    }
    let sandbox = if entry.sandbox.is_empty() {
        "-"
    } else {
        &entry.sandbox
    };
    let request = if entry.request_id.is_empty() {
        "-"
    } else {
        &entry.request_id
    };
    let mut lines = entry.line.split('\n');
    let first = lines.next().unwrap_or_default();
    writeln!(
        out,
        "{} {sandbox} {request} {}| {}",
        entry.time,
        entry.stream,
        escape_controls(first)
    )?;
    for more in lines {
        writeln!(out, "    | {}", escape_controls(more))?;
    }
    Ok(())
}

/// `text` with control characters (but tabs) as `\u{..}` escapes.
fn escape_controls(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn a_lambda_cannot_paint_the_terminal_or_forge_an_entry() {
        let entry = ol_sandbox::lambda_logs::LogEntry {
            time: "2026-01-01T00:00:00.000Z".into(),
            sandbox: "hello-1".into(),
            request_id: "r1".into(),
            stream: "error".into(),
            line: "500 boom \u{1b}[31mred\n2026-01-01T00:00:01.000Z other r2 stdout| forged".into(),
        };
        let mut out = Vec::new();
        print_entry(&mut out, &entry, false).expect("print");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text,
            "2026-01-01T00:00:00.000Z hello-1 r1 error| 500 boom \\u{1b}[31mred\n    | 2026-01-01T00:00:01.000Z other r2 stdout| forged\n"
        );
    }
}
