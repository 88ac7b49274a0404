//! `ol lb up|down|status`: the balancer (crates/lb, docs/lb.md). This
//! module picks the worker source (`--workers` or `--cluster`) and prints.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};
use ol_lb::supervisor;
use ol_lb::{LbCommand, Server, SourceSpec, UpArgs, UrlWorkers, WorkerSource};
use ol_worker::access::AdminKey;

pub fn run(cmd: LbCommand) -> Result<()> {
    match cmd {
        LbCommand::Up(args) => up(&args),
        LbCommand::Down { dir } => {
            println!("{}", ol_lb::control::stop(&dir)?);
            Ok(())
        }
        LbCommand::Status { dir, key_file } => status(&dir, key_file.as_deref()),
    }
}

/// The workers `spec` names.
fn source(spec: &SourceSpec) -> Result<Box<dyn WorkerSource>> {
    Ok(match spec {
        SourceSpec::Workers(urls) => Box::new(UrlWorkers::parse(urls)?),
        SourceSpec::Cluster(dir) => Box::new(ol_cluster::lb::ClusterWorkers(
            ol_cluster::Cluster::open(dir)?,
        )),
    })
}

fn up(args: &UpArgs) -> Result<()> {
    let dir = supervisor::absolute_dir(&args.dir)?;
    let settings = args.engine_settings(&dir)?;
    let spec = args.source_spec();
    let workers = source(&spec)?;
    // What would stop it, said in this terminal rather than in a log.
    ol_lb::haproxy::find_binary()?;
    // Workers may start later; say so here, where it is seen.
    let found: BTreeSet<Server> = match workers.servers() {
        Ok(found) => found,
        Err(e) => {
            eprintln!("ol lb: {e}");
            BTreeSet::new()
        }
    };
    if found.is_empty() {
        eprintln!(
            "ol lb: no worker found yet from {}: calls get 503 until one appears (looked up every second)",
            workers.describe()
        );
    }
    if args.detach {
        let log = dir.join("lb.log");
        let state = ol_lb::control::start_detached(&dir, &log, &args.to_args(&dir))?;
        println!(
            "balancer started: pid {}, {} (policy {}, {} worker(s) from {}), log {}",
            state.pid,
            state.url(),
            state.policy,
            found.len(),
            workers.describe(),
            log.display()
        );
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("OL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
    supervisor::run(settings, workers, spec)?;
    Ok(())
}

fn status(dir: &std::path::Path, key_file: Option<&std::path::Path>) -> Result<()> {
    let key = match key_file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the admin key file {}", file.display()))?;
            Some(AdminKey::new(text.trim()))
        }
        None => None,
    };
    let (state, workers) = ol_lb::control::status(dir, key.as_ref())?;
    let source = match &state.source {
        SourceSpec::Workers(urls) => format!("--workers {}", urls.join(",")),
        SourceSpec::Cluster(dir) => format!("--cluster {}", dir.display()),
    };
    println!(
        "balancer: pid {} (haproxy pid {}), {}, policy {}, workers from {source}",
        state.pid,
        state.engine_pid,
        state.url(),
        state.policy
    );
    if workers.is_empty() {
        bail!("no worker yet from {source}: start them (`ol cluster workers`, `ol worker up`)");
    }
    let mut down = Vec::new();
    for w in &workers {
        let e = &w.engine;
        if !e.is_up() {
            down.push(e.name.clone());
        }
        let sandboxes = match w.sandboxes {
            Some((busy, idle, paused)) => {
                format!(
                    "{} sandbox(es): {busy} busy, {idle} idle, {paused} paused",
                    busy + idle + paused
                )
            }
            None => "sandboxes unknown".into(),
        };
        let lambdas = match &w.lambdas {
            Ok(l) if l.is_empty() => "holds no lambda".into(),
            Ok(l) => format!("holds {}", l.join(", ")),
            Err(e) => format!("no stats: {e}"),
        };
        println!(
            "  {} {} (check {}): {} in flight, {} queued, {} calls; {sandboxes}; {lambdas}",
            e.name, e.status, e.check, e.in_flight, e.queued, e.total
        );
    }
    if !down.is_empty() {
        bail!(
            "{} of {} worker(s) not up ({}): see each one's log",
            down.len(),
            workers.len(),
            down.join(", ")
        );
    }
    Ok(())
}
