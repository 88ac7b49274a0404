//! Blank sandboxes (see [`Blank`]): forked ahead from each zygote by the
//! refill threads (`scaling.blanks` for the root, [`NODE_BLANKS`] for each
//! import-cache zygote), each already in its cgroup (a reused one when
//! `features.reuse_cgroups`), namespaces and scratch dir; a cold start
//! takes one (or forks one on the spot when none is ready) and hands it
//! its lambda.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use ol_obs::{Phase, counters};

use super::enclosure::Enclosure;
use super::pool::PoolInner;
use super::rootfs::host_scratch;
use super::zygote::{self, Assignment, Blank, ForkedSandbox, Zygote};
use super::zygote_cache::ROOT;
use super::{base_env, cgroup_err, cgroup_limits, kill_pid, package_paths};
use crate::scratch::Scratch;
use crate::{NewSandbox, SandboxError, SandboxSpec};

/// A zygote's blanks: those ready, how many the refill threads are
/// forking (counted so that two threads never fork the same missing one),
/// and how many of those cold starts are waiting for.
#[derive(Debug, Default)]
pub(super) struct ZygoteBlanks {
    pub(super) ready: VecDeque<Blank>,
    pub(super) forking: usize,
    pub(super) claimed: usize,
}

/// How long a cold start that found no ready blank waits for one being
/// forked (a fork takes ~1–3 ms) before it forks its own.
const CLAIM_WAIT: Duration = Duration::from_millis(20);

/// Longest a refill thread lets cold starts under way go first before it
/// forks its next blank.
const REFILL_DEFER: Duration = Duration::from_millis(10);

/// Blank sandboxes kept ready by each import-cache zygote.
const NODE_BLANKS: usize = 1;

impl PoolInner {
    /// A live zygote short of ready blanks, if any, counting those being
    /// forked (the root wants `scaling.blanks`, each import-cache zygote
    /// [`NODE_BLANKS`]); one more of its blanks is then counted as being
    /// forked, until [`PoolInner::forked`].
    fn short_of_blanks(&self) -> Option<(String, Arc<Zygote>)> {
        let zygotes = self.lock_zygotes();
        let mut blanks = self.lock_blanks();
        let (key, zygote) = zygotes
            .iter()
            .filter(|(_, z)| z.is_alive())
            .find(|(key, _)| {
                let want = if key.as_str() == ROOT {
                    self.cfg.blanks
                } else {
                    NODE_BLANKS
                };
                blanks
                    .get(key.as_str())
                    .map_or(0, |b| b.ready.len() + b.forking)
                    < want
            })
            .map(|(key, z)| (key.clone(), Arc::clone(z)))?;
        blanks.entry(key.clone()).or_default().forking += 1;
        Some((key, zygote))
    }

    /// A blank of zygote `key` counted by [`PoolInner::short_of_blanks`]
    /// is ready (`Some`, kept unless the zygote was evicted meanwhile) or
    /// failed (`None`).
    fn forked(&self, key: String, zygote: &Arc<Zygote>, blank: Option<Blank>) {
        let live = self
            .lock_zygotes()
            .get(&key)
            .is_some_and(|z| Arc::ptr_eq(z, zygote));
        let mut blanks = self.lock_blanks();
        let entry = blanks.entry(key).or_default();
        entry.forking = entry.forking.saturating_sub(1);
        match blank {
            Some(blank) if live => entry.ready.push_back(blank),
            Some(blank) => {
                drop(blanks);
                blank.discard();
            }
            None => {}
        }
        // A cold start may wait for it (`take_blank`).
        self.wake.notify_all();
    }

    /// The refill thread: forks blanks until every zygote has its share
    /// ready, sleeps until one is taken, until the pool closes.
    pub(super) fn keep_blanks_ready(&self) {
        loop {
            if self.closing.load(Ordering::Acquire) {
                return;
            }
            self.let_first_calls_go_first();
            let Some((key, zygote)) = self.short_of_blanks() else {
                let blanks = self.lock_blanks();
                if !self.closing.load(Ordering::Acquire) {
                    let _ = self.wake.wait_timeout(blanks, Duration::from_secs(1));
                }
                continue;
            };
            // The fork too yields the CPUs (its `clone` beside a cold
            // start's lambda load slowed back-to-back cold starts: p50
            // 2.3→2.1, p90 4.8→3.7 ms, side by side), unless a cold start
            // waits for it or for another fork of this zygote.
            zygote.prioritize(|| {
                !zygote.is_awaited() && self.lock_blanks().get(&key).is_none_or(|b| b.claimed == 0)
            });
            match self.prefork(&zygote, true) {
                Ok(mut blank) => {
                    // Its warm-up (and anything else it does before its
                    // lambda comes) yields the CPUs to everything else:
                    // back-to-back cold starts ran ~2× slower while the
                    // blanks refilled beside them at the same priority.
                    // Unless a cold start waits for it already: that one
                    // would wait for the warm-up at idle priority.
                    let claimed = self.lock_blanks().get(&key).is_some_and(|b| b.claimed > 0);
                    if !claimed {
                        blank.idle = blank.cgroup.set_cpu_idle(true).is_ok();
                    }
                    self.forked(key, &zygote, Some(blank))
                }
                Err(e) => {
                    self.forked(key, &zygote, None);
                    tracing::warn!("cannot fork a blank sandbox: {e}");
                    // Back off before trying again; wake early on close.
                    let blanks = self.lock_blanks();
                    let _ = self.wake.wait_timeout(blanks, Duration::from_secs(1));
                }
            }
        }
    }

    /// Waits while cold starts that waited for the root zygote to start are
    /// under way (see [`PoolInner::create`]), for at most
    /// [`REFILL_DEFER`]: a blank forked beside one takes the zygote and a
    /// CPU from it. The first call after `up` waited for the root zygote
    /// while the refill stood ready to fork four blanks the moment it was
    /// ready; that call took ~8 ms longer (45.5 vs 37.6 ms, median of 10,
    /// 2 vCPUs) than with no blanks at all. Not for every cold start: the
    /// refill then forked during their lambdas' loads instead, and back to
    /// back cold starts got slower (p50 4.9 -> 5.3 ms). The bound keeps
    /// the refill going whatever happens.
    fn let_first_calls_go_first(&self) {
        let deadline = Instant::now() + REFILL_DEFER;
        let mut blanks = self.lock_blanks();
        while self.first_calls.load(Ordering::Acquire) > 0 && !self.closing.load(Ordering::Acquire)
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            blanks = self
                .wake
                .wait_timeout(blanks, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Forks one blank sandbox into a reused or new cgroup.
    fn prefork(&self, zygote: &Zygote, warm: bool) -> Result<Blank, SandboxError> {
        let id = self.new_id("sb");
        let (cgroup, oom_baseline) = match self.reused.take() {
            Some(reused) => (reused.cgroup, reused.oom_baseline),
            None => {
                let cgroup = self.cgroup(&id);
                cgroup.create().map_err(cgroup_err)?;
                (cgroup, 0)
            }
        };
        let limits = cgroup_limits(&self.cfg.blank_limits);
        let made = cgroup
            .set_limits(&limits)
            .map_err(cgroup_err)
            .and_then(|()| {
                zygote.prefork(&id, cgroup.clone(), self.cfg.blank_limits.disk_mb, warm)
            });
        match made {
            Ok(mut blank) => {
                blank.oom_baseline = oom_baseline;
                blank.recycle = self.reused.enabled().then(|| Arc::clone(&self.reused));
                blank.limits = Some(limits);
                // Its `/host` too (a lambda with another disk limit gets
                // its own when assigned).
                let disk_mb = self.cfg.blank_limits.disk_mb;
                blank.host = ol_jail::outside::scratch(host_scratch(disk_mb))
                    .ok()
                    .map(|host| (host, disk_mb));
                // Its logs, and the scratch dir they go to (made at the
                // first output), ready to be renamed after its sandbox.
                let scratch = Scratch::later(&self.cfg.scratch_root, &id);
                blank.scratch = scratch
                    .log_pipes(self.cfg.blank_limits.log_kb)
                    .map(|logs| (scratch, logs))
                    .ok();
                Ok(blank)
            }
            Err(e) => {
                let _ = cgroup.discard(&kill_pid);
                Err(e)
            }
        }
    }

    /// A ready blank of zygote `key`; else one a refill thread is forking
    /// that no other cold start waits for (the first call after the
    /// worker starts finds the root zygote's first blanks on their way),
    /// waited for up to [`CLAIM_WAIT`]; else a new one forked now.
    pub(super) fn take_blank(&self, key: &str, zygote: &Zygote) -> Result<Blank, SandboxError> {
        let _phase = Phase::SockBlank.enter();
        // The refill threads learn that a blank was taken only once it has
        // its lambda (`PoolInner::create`): woken here, one ran its next
        // blank's cgroup set-up ahead of this cold start on the same CPU
        // (0.5–0.6 ms in 13 of 30 cold starts, traced).
        let taken = self.ready_or_claimed(key, zygote);
        match taken {
            Some(blank) => {
                counters::BLANK_HITS.inc();
                Ok(blank)
            }
            None => {
                counters::BLANK_MISSES.inc();
                zygote.awaited(|| self.prefork(zygote, false))
            }
        }
    }

    /// A ready blank of `key`, or (see [`PoolInner::take_blank`]) one
    /// being forked, once it is ready.
    fn ready_or_claimed(&self, key: &str, zygote: &Zygote) -> Option<Blank> {
        let mut blanks = self.lock_blanks();
        let entry = blanks.get_mut(key)?;
        if let Some(blank) = entry.ready.pop_front() {
            return Some(blank);
        }
        if entry.forking <= entry.claimed {
            return None;
        }
        entry.claimed += 1;
        drop(blanks);
        // This cold start now waits for a fork the refill asked for,
        // maybe at idle priority.
        zygote.prioritize(|| false);
        let deadline = Instant::now() + CLAIM_WAIT;
        let mut blanks = self.lock_blanks();
        let taken = loop {
            let Some(entry) = blanks.get_mut(key) else {
                return None; // the zygote was dropped, its blanks with it
            };
            if let Some(blank) = entry.ready.pop_front() {
                break Some(blank);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if entry.forking == 0 || left.is_zero() || self.closing.load(Ordering::Acquire) {
                break None;
            }
            blanks = self
                .wake
                .wait_timeout(blanks, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        if let Some(entry) = blanks.get_mut(key) {
            entry.claimed = entry.claimed.saturating_sub(1);
        }
        taken
    }

    /// Turns `blank` into the sandbox `id` of `spec`.
    pub(super) fn assign(
        &self,
        blank: Blank,
        spec: &SandboxSpec,
        id: &str,
        zygote: &Arc<Zygote>,
    ) -> Result<NewSandbox, SandboxError> {
        let mut blank = blank;
        let made_ahead = blank.scratch.take().and_then(|(scratch, logs)| {
            match scratch.rename(self.cfg.scratch_root.join(id)) {
                Ok(()) => Some((scratch, logs)),
                Err(_) => {
                    scratch.remove();
                    None
                }
            }
        });
        // Made ahead with the worker's log cap: a lambda's own cap may be
        // lower.
        let (scratch, logs) = match made_ahead {
            Some((scratch, logs)) if spec.limits.log_kb == self.cfg.blank_limits.log_kb => {
                (scratch, Some(logs))
            }
            Some((scratch, _)) => (scratch, None),
            None => (Scratch::later(&self.cfg.scratch_root, id), None),
        };
        let limits = cgroup_limits(&spec.limits);
        // Blanks have the worker's limits already: most lambdas need no write.
        let set_limits = Phase::SockCgroup
            .run(|| {
                if blank.limits.as_ref() == Some(&limits) {
                    Ok(())
                } else {
                    blank.cgroup.set_limits(&limits)
                }
            })
            .map_err(cgroup_err);
        let logs = set_limits.and_then(|()| match logs {
            Some(logs) => Ok(logs),
            None => scratch.log_pipes(spec.limits.log_kb),
        });
        let mut log_tag = None;
        let handed = match logs {
            Ok(logs) => {
                // Routed before the lambda loads: what it prints at import is kept.
                logs.tag.route(spec.log_sink(id));
                log_tag = Some(logs.tag.clone());
                let _phase = Phase::SockAssign.enter();
                let mut env = base_env();
                env.extend(spec.env.iter().cloned());
                let host = blank
                    .host
                    .take()
                    .filter(|(_, mb)| *mb == spec.limits.disk_mb)
                    .map(|(host, _)| host);
                zygote::assign(
                    &blank,
                    Assignment {
                        code_dir: &spec.code_dir,
                        disk_mb: spec.limits.disk_mb,
                        host,
                        logs,
                        env: &env,
                        packages: &package_paths(&spec.packages),
                    },
                )
            }
            Err(e) => Err(e),
        };
        // Back to a normal CPU share, while the blank loads its lambda (the
        // write takes ~0.1 ms): a sandbox never runs its lambda idle.
        let handed = handed.and_then(|()| {
            if blank.idle {
                blank.cgroup.set_cpu_idle(false).map_err(cgroup_err)?;
                blank.idle = false;
            }
            Ok(())
        });
        if let Err(e) = handed {
            blank.discard();
            scratch.remove();
            return Err(e);
        }
        let Blank {
            cgroup,
            conn,
            pid1,
            oom_baseline,
            recycle,
            ..
        } = blank;
        Ok(NewSandbox {
            sandbox: Box::new(ForkedSandbox {
                id: id.to_string(),
                pid: OnceLock::new(),
                enclosure: Enclosure {
                    cgroup,
                    scratch,
                    downsize: self.downsize(&spec.limits),
                    oom_baseline,
                    recycle,
                },
                pid1: Some(pid1),
                exit_reason: None,
                destroyed: false,
                _zygote: Some(Arc::clone(zygote)),
                log_tag,
            }),
            conn,
            forked_from: None,
        })
    }
}
