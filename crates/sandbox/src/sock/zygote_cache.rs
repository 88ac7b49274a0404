//! The zygotes of a pool by key (docs/architecture.md §3.4): the root zygote (the
//! runtime imported, started fresh through the sandbox init) and the
//! import cache's child zygotes (packages imported, each forked from its
//! parent), started on first use. A zygote that fails to start is not
//! tried again for [`ZYGOTE_RETRY`] (its sandboxes fork from its parent
//! meanwhile); beyond [`MAX_ZYGOTES`] the least recently used one that no
//! live sandbox was forked from goes.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::enclosure::Enclosure;
use super::fresh::Program;
use super::pool::PoolInner;
use super::zygote::{Blank, ChildZygote, Zygote};
use super::{cgroup_err, cgroup_limits, kill_pid, package_paths};
use crate::scratch::Scratch;
use crate::{Limits, SandboxError, ZygoteNode};

/// Most import-cache zygotes alive at once; beyond it the least recently
/// used one without live children goes.
const MAX_ZYGOTES: usize = 32;
/// How long a zygote that failed to start is not tried again.
const ZYGOTE_RETRY: Duration = Duration::from_secs(60);
/// The root zygote's key.
pub(super) const ROOT: &str = "";

/// Limits of a zygote's own cgroup: its forked children pass through it
/// for a moment before they join theirs, so it needs room for several.
fn zygote_limits() -> Limits {
    Limits {
        procs: 64,
        mem_mb: 1024,
        ..Limits::default()
    }
}

impl PoolInner {
    /// The deepest zygote of `chain` (see [`crate::SandboxSpec::zygote`])
    /// that works, with its key: each missing one is started from its
    /// parent; one that fails leaves its parent as the answer. `None` when
    /// zygotes are off or the root cannot be started (then sandboxes start
    /// fresh interpreters).
    pub(super) fn zygote(&self, chain: &[ZygoteNode]) -> Option<(String, Arc<Zygote>)> {
        if !self.cfg.zygote {
            return None;
        }
        let mut found = (
            ROOT.to_string(),
            self.live_zygote(ROOT, None, || self.start_root())?,
        );
        for node in chain {
            let parent = Arc::clone(&found.1);
            match self.live_zygote(&node.key, Some(node), || self.start_child(&parent, node)) {
                Some(z) => found = (node.key.clone(), z),
                None => break,
            }
        }
        Some(found)
    }

    /// Zygote `key`, started with `start` if there is none or it died;
    /// `None` when it cannot be started (not tried again for
    /// [`ZYGOTE_RETRY`]).
    fn live_zygote(
        &self,
        key: &str,
        node: Option<&ZygoteNode>,
        start: impl FnOnce() -> Result<Zygote, SandboxError>,
    ) -> Option<Arc<Zygote>> {
        if let Some(z) = self.lock_zygotes().get(key).filter(|z| z.is_alive()) {
            z.touch();
            return Some(Arc::clone(z));
        }
        let _starting = self.starting.lock().unwrap_or_else(PoisonError::into_inner);
        // Another thread may have started it while we waited.
        if let Some(z) = self.lock_zygotes().get(key).filter(|z| z.is_alive()) {
            return Some(Arc::clone(z));
        }
        let failed_at = self
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied();
        if failed_at.is_some_and(|t| t.elapsed() < ZYGOTE_RETRY) {
            return None;
        }
        self.forget_zygote(key);
        if node.is_some() {
            self.evict_zygotes();
        }
        match start() {
            Ok(z) => {
                let z = Arc::new(z);
                self.lock_zygotes().insert(key.to_string(), Arc::clone(&z));
                self.wake.notify_all();
                Some(z)
            }
            Err(e) => {
                let what = node.map_or_else(
                    || "the root zygote".to_string(),
                    |n| format!("zygote {}", n.key),
                );
                tracing::warn!("cannot start {what}: {e}");
                self.failed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key.to_string(), Instant::now());
                None
            }
        }
    }

    /// Drops zygote `key` and its blanks.
    fn forget_zygote(&self, key: &str) {
        let gone = self.lock_zygotes().remove(key);
        if let Some(blanks) = self.lock_blanks().remove(key) {
            blanks.ready.into_iter().for_each(Blank::discard);
        }
        drop(gone);
    }

    /// Keeps the import cache under [`MAX_ZYGOTES`]: drops the least
    /// recently used zygotes that no live sandbox was forked from.
    fn evict_zygotes(&self) {
        loop {
            let victim = {
                let zygotes = self.lock_zygotes();
                if zygotes.len() <= MAX_ZYGOTES {
                    return;
                }
                zygotes
                    .iter()
                    .filter(|(key, z)| key.as_str() != ROOT && Arc::strong_count(z) == 1)
                    .min_by_key(|(_, z)| z.last_used())
                    .map(|(key, _)| key.clone())
            };
            match victim {
                Some(key) => {
                    tracing::info!(zygote = %key, "evicting an idle zygote");
                    self.forget_zygote(&key);
                }
                None => return,
            }
        }
    }

    /// Starts the root zygote: the runtime, fresh, in a privileged sandbox.
    fn start_root(&self) -> Result<Zygote, SandboxError> {
        let id = self.new_id("zygote");
        let cgroup = self.cgroup(&id);
        self.spawn(&Program::Zygote, &id, &cgroup, &zygote_limits())
            .and_then(|(sandbox, conn)| Zygote::start(Box::new(sandbox), conn, cgroup.clone()))
            .inspect_err(|_| {
                let _ = cgroup.discard(&kill_pid);
            })
    }

    /// Starts the import-cache zygote `node`, forked from `parent`.
    fn start_child(&self, parent: &Zygote, node: &ZygoteNode) -> Result<Zygote, SandboxError> {
        let id = self.new_id("zygote");
        let cgroup = self.cgroup(&id);
        let scratch = Scratch::create(&self.cfg.scratch_root, &id)?;
        let limits = zygote_limits();
        let started = cgroup
            .create()
            .and_then(|()| cgroup.set_limits(&cgroup_limits(&limits)))
            .map_err(cgroup_err)
            .and_then(|()| scratch.log_pipes(limits.log_kb))
            .and_then(|logs| {
                let began = Instant::now();
                let z = parent.fork_zygote(ChildZygote {
                    id: &id,
                    enclosure: Enclosure {
                        cgroup: cgroup.clone(),
                        scratch: scratch.clone(),
                        downsize: None,
                        oom_baseline: 0,
                        recycle: None,
                    },
                    logs,
                    disk_mb: limits.disk_mb,
                    packages: &package_paths(&node.packages),
                    imports: &node.imports,
                })?;
                tracing::info!(
                    zygote = %node.key,
                    imports = ?node.imports,
                    ms = began.elapsed().as_millis() as u64,
                    "import-cache zygote ready"
                );
                Ok(z)
            });
        started.inspect_err(|_| {
            let _ = cgroup.discard(&kill_pid);
            scratch.remove();
        })
    }

    /// Keys of the live import-cache zygotes.
    pub(super) fn zygote_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .lock_zygotes()
            .iter()
            .filter(|(key, z)| key.as_str() != ROOT && z.is_alive())
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort();
        keys
    }
}
