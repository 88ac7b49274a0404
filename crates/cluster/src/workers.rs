//! The workers of a cluster: [`start`] (`ol cluster workers`), [`exec`]
//! (`ol cluster worker-exec`, what each started worker runs), [`kill`]
//! and [`status`].
//!
//! A cluster's worker is the worker `ol worker up` runs, started and
//! waited for by the same code ([`ol_worker::launch`]); it differs only in
//! its config file, which names its state dir (`workers/worker-<N>/`) and
//! the dirs it shares with the others. The worker id, which names its
//! cgroups, is a hash of that state dir, and its sandboxes' scratch dirs
//! and zygotes live under it, so workers of one machine never collide.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ol_worker::access::AdminKey;
use ol_worker::launch::{self, LogTo};
use ol_worker::{
    Config, StopOutcome, WorkerDir, check_startable, client, force_cleanup, stop_worker,
    write_config,
};

use crate::layout::ClusterWorker;
use crate::{Cluster, ClusterError, io_err, registry, remove_if_present};

/// How long a worker may take to answer `/status` after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a worker may take to stop before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `status` waits for each worker's answers.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// A worker [`start`] started.
#[derive(Debug, Clone)]
pub struct Started {
    /// `worker-<N>`.
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// Its port.
    pub port: u16,
    /// Its log.
    pub log: PathBuf,
}

/// `ol cluster workers`: starts `count` workers in the background on ports
/// `port`.. (one each), each with `config/worker-<N>.json` (the template,
/// its port, its state dir), its log in `logs/worker-<N>.out` and its pid
/// in `logs/worker-<N>.pid`, and waits until each serves. When one does
/// not, the others are stopped again and the error names each failed
/// worker's port and log.
pub fn start(cluster: &Cluster, count: u16, port: u16) -> Result<Vec<Started>, ClusterError> {
    if count == 0 || port.checked_add(count - 1).is_none() {
        return Err(ClusterError::Usage(format!(
            "--num-workers {count} from --port {port}: need 1 or more workers on ports up to 65535"
        )));
    }
    let template = Config::load(&cluster.template(), &[])?;
    registry::check_running_if_used(cluster, &template)?;
    let old = cluster.workers()?;
    if let Some(running) = old.iter().find(|w| w.dir.running().is_some()) {
        return Err(ClusterError::Usage(format!(
            "{} of {} already runs (port {}); stop the cluster's workers first with `ol cluster kill --cluster {}`",
            running.name,
            cluster.root().display(),
            running.port,
            cluster.root().display()
        )));
    }
    // Workers of an earlier run go (leftovers of a crash with them), so
    // `status` and `kill` see only these.
    for w in &old {
        force_cleanup(&w.dir)?;
        forget(cluster, w)?;
    }
    let mut workers = Vec::new();
    let mut configs = Vec::new();
    for (index, port) in (0..u32::from(count)).zip(port..) {
        let mut config = template.clone();
        config.worker_port = port;
        config.worker_dir = cluster.worker_state(index).display().to_string();
        let config_file = cluster.worker_config(index);
        write_config(&config_file, &config)?;
        let dir = WorkerDir::locate(&config_file, &config);
        check_startable(&dir, &config)?;
        workers.push(ClusterWorker {
            index,
            name: Cluster::worker_name(index),
            port,
            dir,
            config_file,
        });
        configs.push(config);
    }
    // All at once, then waited for: they share the work of starting (the
    // base, the runtime) and a cluster is up in the time of one worker.
    let mut starting = Vec::new();
    let mut failures = Vec::new();
    for (w, config) in workers.iter().zip(&configs) {
        let args = [
            "cluster".into(),
            "worker-exec".into(),
            "--config".into(),
            w.config_file.clone().into_os_string(),
        ];
        match launch::spawn_detached(&args, &cluster.worker_log(w.index)) {
            Ok(s) => {
                let pid_file = cluster.worker_pid_file(w.index);
                std::fs::write(&pid_file, format!("{}\n", s.pid()))
                    .map_err(io_err("cannot write", &pid_file))?;
                starting.push((w, config, s));
            }
            Err(e) => failures.push(failure(w, &e)),
        }
    }
    let mut started = Vec::new();
    for (w, config, s) in starting {
        let pid = s.pid();
        match s.wait_ready(&w.dir, config, READY_TIMEOUT) {
            Ok(port) => started.push(Started {
                name: w.name.clone(),
                pid,
                port,
                log: cluster.worker_log(w.index),
            }),
            Err(e) => failures.push(failure(w, &e)),
        }
    }
    if failures.is_empty() {
        return Ok(started);
    }
    let stopped = match stop_all(cluster, &workers) {
        Ok(_) if started.is_empty() => "no worker was left running".to_string(),
        Ok(_) => format!(
            "the workers that had started ({}) were stopped again",
            started
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(e) => format!(
            "stopping the workers that had started failed ({e}); stop them with `ol cluster kill --cluster {}`",
            cluster.root().display()
        ),
    };
    Err(ClusterError::NotStarted {
        failures: failures.join("\n"),
        stopped,
    })
}

/// What is said of worker `w` that failed to start with `error`.
fn failure(w: &ClusterWorker, error: &ol_worker::WorkerError) -> String {
    format!("{} (port {}) did not start: {error}", w.name, w.port)
}

/// `ol cluster worker-exec`: runs the worker of `config_file` in this
/// process until Ctrl-C or SIGTERM, its log on stdout; `ol worker up`
/// runs its worker the same way.
pub fn exec(config_file: &Path) -> Result<(), ClusterError> {
    let config = Config::load(config_file, &[])?;
    let dir = WorkerDir::locate(config_file, &config);
    Ok(launch::serve_here(&dir, &config, LogTo::Stdout)?)
}

/// `ol cluster kill`: stops the balancer if one runs, then every worker
/// of the cluster, all at once (each
/// asked to stop, killed after [`STOP_TIMEOUT`]), and removes whatever
/// they left (processes, cgroups, scratch dirs); then the code store, if
/// it runs. Returns a line per worker (and one for the store).
pub fn kill(cluster: &Cluster) -> Result<Vec<String>, ClusterError> {
    let workers = cluster.workers()?;
    // The balancer first: no call is sent to a stopping worker.
    let balancer = crate::lb::stop(cluster)?;
    let mut lines = if workers.is_empty() {
        vec![format!("no workers in {}", cluster.root().display())]
    } else {
        stop_all(cluster, &workers)?
    };
    lines.splice(0..0, balancer);
    // After the workers, which may still be reading from it.
    lines.extend(registry::stop(cluster)?);
    Ok(lines)
}

/// Stops `workers` in parallel and cleans up after each; a line per worker.
fn stop_all(cluster: &Cluster, workers: &[ClusterWorker]) -> Result<Vec<String>, ClusterError> {
    let results: Vec<Result<String, ClusterError>> = std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .iter()
            .map(|w| s.spawn(move || stop_one(cluster, w)))
            .collect();
        handles
            .into_iter()
            .zip(workers)
            .map(|(h, w)| {
                h.join().unwrap_or_else(|_| {
                    Err(ClusterError::Usage(format!("stopping {} panicked", w.name)))
                })
            })
            .collect()
    });
    results.into_iter().collect()
}

fn stop_one(cluster: &Cluster, w: &ClusterWorker) -> Result<String, ClusterError> {
    let outcome = stop_worker(&w.dir, STOP_TIMEOUT)?;
    // `stop_worker` cleans up too; this also kills a worker that started
    // after the check and anything it left.
    force_cleanup(&w.dir)?;
    remove_if_present(&cluster.worker_pid_file(w.index))?;
    Ok(match outcome {
        StopOutcome::NotRunning => format!("{}: not running", w.name),
        StopOutcome::Stopped { pid } => format!("{}: stopped (pid {pid})", w.name),
        StopOutcome::Killed { pid } => format!(
            "{}: killed (pid {pid}) after not stopping within {STOP_TIMEOUT:?}",
            w.name
        ),
    })
}

/// Removes worker `w`'s config and pid files.
fn forget(cluster: &Cluster, w: &ClusterWorker) -> Result<(), ClusterError> {
    remove_if_present(&w.config_file)?;
    remove_if_present(&cluster.worker_pid_file(w.index))
}

/// `ol cluster status`: OpenLambda's report (each worker's `/status`,
/// then the cluster's sandboxes, by worker). Fails after printing it when
/// a worker is not ready.
pub fn status(cluster: &Cluster) -> Result<(), ClusterError> {
    let workers = cluster.workers()?;
    let mut not_ready = Vec::new();
    let mut registry_down = false;
    let template = Config::load(&cluster.template(), &[])?;
    if let Some(line) = registry::status_line(cluster, &template) {
        println!("Registry:");
        match line {
            Ok(line) => println!("  {line}"),
            Err(line) => {
                println!("  {line}");
                registry_down = true;
            }
        }
        println!();
    }
    if let Some(lb) = ol_lb::control::running(&crate::lb::dir(cluster)) {
        println!("Balancer:");
        println!(
            "  {} => running (pid {}, policy {}; `ol lb status -p {}`)",
            lb.url(),
            lb.pid,
            lb.policy,
            crate::lb::dir(cluster).display()
        );
        println!();
    }
    println!("Worker Pings:");
    if workers.is_empty() {
        println!(
            "  (no workers: start some with `ol cluster workers --cluster {}`)",
            cluster.root().display()
        );
    }
    // Each worker's address and key, read from its config file once.
    let reaches: Vec<Reach> = workers.iter().map(Reach::of).collect();
    for (w, reach) in workers.iter().zip(&reaches) {
        let url = format!("{}/status", reach.url);
        let line = match ping(w, &url) {
            Ok(line) => line,
            Err(line) => {
                not_ready.push(w.name.clone());
                format!("{line} (log: {})", cluster.worker_log(w.index).display())
            }
        };
        println!("  {url} => {line}");
    }
    println!();
    println!("Cluster containers:");
    for (w, Reach { url: base, key }) in workers.iter().zip(&reaches) {
        let Some(_) = w.dir.running() else {
            println!("  {} ({base}): not running", w.name);
            continue;
        };
        match client::stats_with_key(base, key.as_ref(), PING_TIMEOUT) {
            Ok(stats) => {
                let layer = &stats.lambda_layer;
                let by = layer.sandboxes_by_state;
                println!(
                    "  {} ({base}): {} sandbox(es): {} busy, {} idle, {} paused",
                    w.name,
                    layer.sandboxes.len(),
                    by.busy,
                    by.idle,
                    by.paused
                );
                for sb in &layer.sandboxes {
                    println!("    {} {} pid {}", sb.id, sb.lambda, sb.pid);
                }
            }
            Err(e) => println!("  {} ({base}): no stats: {e}", w.name),
        }
    }
    let mut problems = Vec::new();
    if !not_ready.is_empty() {
        problems.push(format!(
            "{} of {} worker(s) not ready ({})",
            not_ready.len(),
            workers.len(),
            not_ready.join(", ")
        ));
    }
    if registry_down {
        problems.push("the registry the template names is not running".into());
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(ClusterError::NotReady(format!(
        "{}; the logs are in {}",
        problems.join("; "),
        cluster.logs().display()
    )))
}

/// How worker `w` answers `/status`: `ready [200 OK]`, or why it does
/// not (as the error).
fn ping(w: &ClusterWorker, url: &str) -> Result<String, String> {
    if w.dir.running().is_none() {
        return Err("not running".into());
    }
    match client::get(url, PING_TIMEOUT) {
        Ok(a) => {
            let reason = http::StatusCode::from_u16(a.status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("");
            let line = format!("{} [{} {reason}]", a.body.trim(), a.status);
            if a.status == 200 { Ok(line) } else { Err(line) }
        }
        Err(e) => Err(format!("no answer: {e}")),
    }
}

/// How `status` reaches worker `w`, as its config file says.
struct Reach {
    /// `http://localhost:<port>` (as OpenLambda's report names a worker)
    /// for a worker on loopback or every address, else the address it
    /// binds.
    url: String,
    /// The admin key its `/stats` may need.
    key: Option<AdminKey>,
}

impl Reach {
    fn of(w: &ClusterWorker) -> Self {
        let localhost = format!("http://localhost:{}", w.port);
        let Ok(config) = Config::load(&w.config_file, &[]) else {
            return Self {
                url: localhost,
                key: None,
            };
        };
        let url = config.local_url(w.port);
        Self {
            url: if url == format!("http://127.0.0.1:{}", w.port) {
                localhost
            } else {
                url
            },
            key: config.admin.load_key(&w.config_file).ok().flatten(),
        }
    }
}
