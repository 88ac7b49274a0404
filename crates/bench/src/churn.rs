//! `ol bench churn`: sandboxes made and torn down by the thousand, and
//! what is left behind. On a worker of its own, with room for only
//! `--live` sandboxes (`mem_pool_mb`), `--count` calls go round-robin to
//! `--lambdas` lambdas, `--connections` at a time: with more lambdas than
//! room, each call finds its lambda's last sandbox evicted and makes a
//! new one, so the row's rate is of creations with their teardowns.
//! Before and after, once every lambda's sandbox has timed out
//! (`scaling.idle_timeout_ms`), it counts what the worker holds: cgroups,
//! processes in them, its descriptors, scratch dirs and mounts. Anything
//! more afterwards is a leak. (Its threads are shown too, but tokio keeps
//! idle blocking threads for a while.)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ol_worker::client;

use crate::OutputArgs;
use crate::cold::{HELLO_BODY, HELLO_PY};
use crate::load;
use crate::output::{Row, RowKey};
use crate::stats::Samples;
use crate::target::{OwnWorker, Target};
use crate::{BenchError, Result};

/// How long an idle sandbox lives on the bench's worker.
const IDLE_TIMEOUT_MS: u64 = 1000;
/// Longest wait for the worker to settle (every lambda's sandbox gone and
/// its counts steady).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// `ol bench churn`'s options.
#[derive(Debug, clap::Args)]
pub struct ChurnArgs {
    /// Calls, each making a new sandbox.
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Lambdas the calls go to, in turn (more than `--live`).
    #[arg(long, default_value_t = 400)]
    pub lambdas: usize,
    /// Sandboxes the worker has room for (`mem_pool_mb` is set to this
    /// many times `limits.mem_mb`, 50).
    #[arg(long, default_value_t = 128)]
    pub live: usize,
    /// Calls at a time.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Override a setting of the benchmark's worker (repeatable).
    #[arg(short = 'o', long = "option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// Files to write the rows to.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// What one count of the worker's holdings found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    /// Cgroup directories of the worker, in every hierarchy.
    pub cgroups: usize,
    /// Processes in those cgroups.
    pub processes: usize,
    /// The worker's open descriptors.
    pub fds: usize,
    /// The worker's threads (not a leak when more: tokio keeps an idle
    /// blocking thread for 10 s).
    pub threads: usize,
    /// Sandbox scratch dirs in the worker dir.
    pub scratch_dirs: usize,
    /// Mounts the worker sees.
    pub mounts: usize,
}

impl Holdings {
    /// Each count of `after` above `self`'s, named (threads aside).
    pub fn grown_to(&self, after: &Holdings) -> Vec<(&'static str, usize)> {
        let pairs = [
            ("cgroups", self.cgroups, after.cgroups),
            ("processes", self.processes, after.processes),
            ("descriptors", self.fds, after.fds),
            ("scratch dirs", self.scratch_dirs, after.scratch_dirs),
            ("mounts", self.mounts, after.mounts),
        ];
        pairs
            .into_iter()
            .filter(|(_, before, after)| after > before)
            .map(|(name, before, after)| (name, after - before))
            .collect()
    }
}

/// The churn row and the leak count.
#[derive(Debug)]
pub struct ChurnOutcome {
    /// One row: every call, each a new sandbox.
    pub rows: Vec<Row>,
    /// Sandboxes the worker made during the calls.
    pub created: u64,
    /// And tore down (evicted or timed out), by the end.
    pub destroyed: u64,
    /// What it held before and after.
    pub before: Holdings,
    /// After the calls, once settled.
    pub after: Holdings,
}

impl ChurnOutcome {
    /// What grew between the two counts: leaks.
    pub fn leaks(&self) -> Vec<(&'static str, usize)> {
        self.before.grown_to(&self.after)
    }

    /// One line: sandboxes made and torn down, and the leaks.
    pub fn summary(&self) -> String {
        let leaks = self.leaks();
        format!(
            "churn: {} sandboxes made, {} torn down; {} (before {:?}, after {:?})",
            self.created,
            self.destroyed,
            if leaks.is_empty() {
                "nothing left behind".to_string()
            } else {
                describe(&leaks)
            },
            self.before,
            self.after
        )
    }
}

/// Leaks as `3 cgroups, 1 mounts`.
pub fn describe(leaks: &[(&str, usize)]) -> String {
    leaks
        .iter()
        .map(|(what, n)| format!("{n} more {what}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the churn on a worker of its own.
pub fn run(args: &ChurnArgs) -> Result<ChurnOutcome> {
    if args.count == 0 || args.connections == 0 || args.live == 0 {
        return Err(BenchError::Usage(
            "--count, --live and --connections must be at least 1".into(),
        ));
    }
    if args.lambdas <= args.live {
        return Err(BenchError::Usage(format!(
            "--lambdas ({}) must be more than --live ({}), or calls would find their sandboxes",
            args.lambdas, args.live
        )));
    }
    let mut options = vec![
        "limits.mem_mb=50".to_string(),
        format!("mem_pool_mb={}", args.live * 50),
        format!("scaling.idle_timeout_ms={IDLE_TIMEOUT_MS}"),
    ];
    options.extend(args.options.iter().cloned());
    let own = OwnWorker::start(&options)?;
    let target = own.target();
    let names: Vec<String> = (0..args.lambdas).map(|i| format!("churn-{i}")).collect();
    for name in &names {
        own.add_lambda(name, &[("f.py", HELLO_PY)])?;
    }
    let body = Bytes::from_static(HELLO_BODY.as_bytes());
    let rt = load::runtime()?;
    // One call first, so the worker's own first-call costs are not
    // counted, and the count before is of a worker that has served (its
    // root zygote in its cgroup).
    let hidden = indicatif::ProgressBar::hidden();
    rt.block_on(load::call_each(&target, &names[..1], &body, &hidden))?;
    let worker = WorkerView::of(&own, &target)?;
    let before = worker.settled()?;
    let created_before = client::stats(&target.url(""), Duration::from_secs(10))?
        .lambda_layer
        .sandboxes_created;
    let bar = crate::progress(args.count as u64, "churn");
    let mut samples = Samples::default();
    let mut next = 0;
    while next < args.count {
        let batch: Vec<String> = (next..(next + args.connections).min(args.count))
            .map(|i| names[i % names.len()].clone())
            .collect();
        next += batch.len();
        samples.merge(rt.block_on(load::call_all_at_once(&target, &batch, &body, &bar))?);
    }
    bar.finish_and_clear();
    let after = worker.settled()?;
    // Settled, no sandbox is being made or torn down.
    let stats = client::stats(&target.url(""), Duration::from_secs(10))?.lambda_layer;
    let created = stats.sandboxes_created - created_before;
    let destroyed = stats.sandboxes_destroyed;
    let key = RowKey {
        bench: "churn",
        target: &target.name,
        lambda: &format!("churn-[0,{})", args.lambdas),
        connections: args.connections,
    };
    Ok(ChurnOutcome {
        rows: vec![Row::new(key, samples)],
        created,
        destroyed,
        before,
        after,
    })
}

/// Where the bench looks at its worker from outside.
struct WorkerView {
    target: Target,
    pid: u32,
    scratch: PathBuf,
    /// The worker's cgroup (`ol-1a2b`), in each hierarchy it uses.
    cgroup: String,
}

impl WorkerView {
    fn of(own: &OwnWorker, target: &Target) -> Result<Self> {
        let dir = ol_worker::WorkerDir::open_dir(own.dir.path())
            .map_err(|e| BenchError::Usage(format!("the bench's worker: {e}")))?;
        let pid = dir
            .running()
            .ok_or_else(|| BenchError::Usage("the bench's worker is not running".into()))?
            .pid;
        Ok(Self {
            target: target.clone(),
            pid,
            scratch: dir.scratch(),
            // Named as the sandbox layer names it for this worker's state
            // dir (none on disk with the process backend).
            cgroup: ol_sandbox::sock::worker_id(&dir.state()),
        })
    }

    /// Its holdings once no lambda has a sandbox left and two counts a
    /// second apart agree (blanks refilled, pipes drained).
    fn settled(&self) -> Result<Holdings> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut last = None;
        loop {
            std::thread::sleep(Duration::from_millis(1000));
            let stats = client::stats(&self.target.url(""), Duration::from_secs(10))?;
            let now = self.count();
            if stats.lambda_layer.sandboxes.is_empty() && last.as_ref() == Some(&now) {
                return Ok(now);
            }
            if Instant::now() >= deadline {
                return Err(BenchError::Usage(format!(
                    "the worker did not settle within {SETTLE_TIMEOUT:?}: {} lambda sandboxes left, holdings {now:?}",
                    stats.lambda_layer.sandboxes.len()
                )));
            }
            last = Some(now);
        }
    }

    fn count(&self) -> Holdings {
        let mut cgroup_dirs = Vec::new();
        for root in cgroup_roots() {
            collect_dirs(&root.join(&self.cgroup), &mut cgroup_dirs);
        }
        let mut pids: Vec<String> = cgroup_dirs
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| t.split_whitespace().map(String::from).collect::<Vec<_>>())
            .collect();
        pids.sort();
        pids.dedup();
        let entries = |dir: &Path| std::fs::read_dir(dir).map_or(0, Iterator::count);
        Holdings {
            cgroups: cgroup_dirs.len(),
            processes: pids.len(),
            fds: entries(Path::new(&format!("/proc/{}/fd", self.pid))),
            threads: entries(Path::new(&format!("/proc/{}/task", self.pid))),
            scratch_dirs: entries(&self.scratch),
            mounts: std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid))
                .map_or(0, |t| t.lines().count()),
        }
    }
}

/// Every cgroup hierarchy's root: each v1 controller's mount and the v2
/// one.
fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let mut roots = vec![base.to_path_buf()];
    roots.extend(
        std::fs::read_dir(base)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .filter(|p| p.join("cgroup.procs").exists()),
    );
    roots
}

/// `dir` and every dir below it, into `out`.
fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_grew_is_a_leak() {
        let before = Holdings {
            cgroups: 20,
            processes: 6,
            fds: 40,
            threads: 9,
            scratch_dirs: 1,
            mounts: 30,
        };
        assert!(before.grown_to(&before).is_empty());
        let after = Holdings {
            cgroups: 24,
            fds: 38,
            threads: 20,
            mounts: 31,
            ..before.clone()
        };
        assert_eq!(before.grown_to(&after), [("cgroups", 4), ("mounts", 1)]);
    }
}
