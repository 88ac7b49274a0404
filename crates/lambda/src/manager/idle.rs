//! Idle sandboxes: paused after `pause_after_idle` (a paused sandbox costs
//! no CPU and thaws in a millisecond at its next call) and destroyed after
//! `idle_timeout` (scale down), by one background task ticking at a quarter
//! of the shorter of the two (10 to 250 ms).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::LambdaManager;

impl LambdaManager {
    /// Starts the task that pauses and expires idle sandboxes (if the
    /// settings ask for either); it stops when the manager is dropped or
    /// shut down.
    pub(super) fn start_idle_loop(self: &Arc<Self>) {
        let pause = self.settings.pause_after_idle;
        let expire = self.settings.idle_timeout;
        let shortest = match (pause, expire) {
            (None, None) => return,
            (Some(p), Some(e)) => p.min(e),
            (Some(d), None) | (None, Some(d)) => d,
        };
        let weak = Arc::downgrade(self);
        let tick = (shortest / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(this) = weak.upgrade() else { return };
                if this.is_closed() {
                    return;
                }
                if let Some(after) = expire {
                    this.expire_idle(after);
                }
                if let Some(after) = pause {
                    this.pause_idle(after).await;
                }
            }
        });
    }

    /// Scales down: destroys every sandbox idle for at least `after`.
    fn expire_idle(&self, after: Duration) {
        for f in self.functions_now() {
            for inst in f.take_idle(usize::MAX, |i| i.idle_since.elapsed() >= after) {
                tracing::debug!(lambda = %f.name, sandbox = inst.sandbox.id(), "idle too long");
                self.retire(inst, "idle too long");
            }
        }
    }

    /// Pauses every running sandbox idle for at least `after`.
    async fn pause_idle(&self, after: Duration) {
        for f in self.functions_now() {
            let stale = f.take_idle(usize::MAX, |i| {
                !i.sandbox.is_paused() && i.idle_since.elapsed() >= after
            });
            if stale.is_empty() {
                continue;
            }
            let paused = tokio::task::spawn_blocking(move || {
                stale
                    .into_iter()
                    .map(|mut inst| {
                        let ok = inst.sandbox.pause().is_ok();
                        (inst, ok)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
            let Ok(paused) = paused else { continue };
            for (inst, ok) in paused {
                if ok {
                    self.counters.pauses.fetch_add(1, Ordering::Relaxed);
                    self.release(&f, inst);
                } else {
                    self.retire(inst, "pause failed");
                }
            }
        }
    }
}
