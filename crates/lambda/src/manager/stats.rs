//! What the lambda layer tells about itself, for `/stats`, `/metrics` and
//! `ol worker status`: its counters, and a snapshot of its lambdas and
//! sandboxes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::LambdaManager;
use crate::moving_average::MovingAverage;
use crate::packages::PackageStats;

/// One live sandbox, as `ol worker status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxInfo {
    /// Sandbox id.
    pub id: String,
    /// Lambda it serves.
    pub lambda: String,
    /// Host pid of its runtime.
    pub pid: u32,
    /// Its cgroup (relative to the hierarchy roots), if any.
    pub cgroup: Option<String>,
}

/// A snapshot of the lambda layer, in the shape `/stats` shows it (the
/// worker's `/stats` flattens it into its own object; `/metrics` exports
/// it as gauges and totals).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    /// Lambdas called so far, with their idle instance counts.
    pub lambdas: Vec<LambdaStats>,
    /// How many lambdas are known (the length of `lambdas`).
    pub lambda_count: usize,
    /// Every live sandbox.
    pub sandboxes: Vec<SandboxInfo>,
    /// Live sandboxes by state.
    pub sandboxes_by_state: SandboxesByState,
    /// Sandboxes created since start.
    pub sandboxes_created: u64,
    /// Sandboxes destroyed since start.
    pub sandboxes_destroyed: u64,
    /// Sandboxes paused since start.
    pub pauses: u64,
    /// Idle sandboxes destroyed to free memory.
    pub evictions: u64,
    /// Memory reserved by sandboxes, in MiB.
    pub mem_pool_used_mb: u64,
    /// Size of the memory pool, in MiB.
    pub mem_pool_total_mb: u64,
    /// Package installs (absent without a package puller).
    pub packages: Option<PackageStats>,
    /// Sandboxes by the zygote they were forked from: `"root"`, an
    /// import-cache key, or `"none"` (a fresh interpreter).
    pub forked_from: BTreeMap<String, u64>,
    /// Import-cache zygotes alive now.
    pub zygotes: Vec<String>,
}

/// Live sandboxes by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxesByState {
    /// Serving a call (or between calls for a moment).
    pub busy: usize,
    /// Idle and running (warm).
    pub idle: usize,
    /// Idle and paused.
    pub paused: usize,
}

/// Per-lambda part of [`Stats`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LambdaStats {
    /// Lambda name.
    pub name: String,
    /// Idle (warm) instances.
    pub idle: usize,
}

/// Counters of the lambda layer.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Sandboxes created since start.
    pub(super) created: AtomicU64,
    /// Sandboxes destroyed since start (counted by the task that destroys
    /// them, hence shared).
    pub(super) destroyed: Arc<AtomicU64>,
    /// Average sandbox creation time.
    pub(super) create_time: MovingAverage,
    /// Sandboxes paused since start.
    pub(super) pauses: AtomicU64,
    /// Idle sandboxes destroyed to free memory.
    pub(super) evictions: AtomicU64,
    /// Sandboxes by the zygote they were forked from.
    pub(super) forked_from: Mutex<BTreeMap<String, u64>>,
}

impl LambdaManager {
    /// A snapshot for `/stats` and `ol worker status`.
    pub fn stats(&self) -> Stats {
        let (mut idle, mut paused) = (0, 0);
        let mut lambdas: Vec<LambdaStats> = self
            .read_functions()
            .values()
            .map(|f| {
                let (running, frozen) = f.idle_by_state();
                idle += running;
                paused += frozen;
                LambdaStats {
                    name: f.name.clone(),
                    idle: f.idle_count(),
                }
            })
            .collect();
        lambdas.sort_by(|a, b| a.name.cmp(&b.name));
        let mut sandboxes: Vec<SandboxInfo> = self.lock_sandboxes().values().cloned().collect();
        sandboxes.sort_by(|a, b| a.id.cmp(&b.id));
        Stats {
            lambda_count: lambdas.len(),
            lambdas,
            sandboxes_by_state: SandboxesByState {
                busy: sandboxes.len().saturating_sub(idle + paused),
                idle,
                paused,
            },
            sandboxes,
            sandboxes_created: self.counters.created.load(Ordering::Relaxed),
            sandboxes_destroyed: self.counters.destroyed.load(Ordering::Relaxed),
            pauses: self.counters.pauses.load(Ordering::Relaxed),
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            mem_pool_used_mb: self.mem.used_mb(),
            mem_pool_total_mb: self.mem.total_mb(),
            packages: self.packages.puller.as_ref().map(|p| p.stats()),
            forked_from: self
                .counters
                .forked_from
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            zygotes: self.pool.zygotes(),
        }
    }

    /// Counts where a new sandbox was forked from.
    pub(super) fn count_fork(&self, forked_from: Option<&str>, has_packages: bool) {
        let name = match forked_from {
            None => "none",
            Some("") => "root",
            Some(key) => key,
        };
        *self
            .counters
            .forked_from
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_string())
            .or_default() += 1;
        if has_packages {
            let hit = forked_from.is_some_and(|k| !k.is_empty());
            let counter = if hit {
                &ol_obs::counters::ZYGOTE_HITS
            } else {
                &ol_obs::counters::ZYGOTE_MISSES
            };
            counter.inc();
        }
    }
}
