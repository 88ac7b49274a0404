//! Memory admission: a new sandbox reserves its memory limit from the
//! worker's pool (`mem_pool_mb`) before it is made. While the pool is
//! short, idle sandboxes are evicted (paused ones first, then the longest
//! idle), and the call waits, up to `admission_timeout`, for evicted or
//! busy sandboxes to give memory back; then it fails with
//! [`InvokeError::NoMemory`].

use std::sync::atomic::Ordering;

use ol_sandbox::mem_pool::Reservation;

use super::LambdaManager;
use crate::InvokeError;

impl LambdaManager {
    /// Reserves one sandbox's memory, evicting idle sandboxes (paused and
    /// longest idle first) while the pool is short; waits a bounded time
    /// for busy ones to free memory.
    pub(super) async fn reserve_memory(&self, mb: u64) -> Result<Reservation, InvokeError> {
        if let Some(r) = self.mem.try_reserve(mb) {
            return Ok(r);
        }
        self.mem_waiters.fetch_add(1, Ordering::SeqCst);
        let result = self.reserve_memory_slowly(mb).await;
        self.mem_waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }

    async fn reserve_memory_slowly(&self, mb: u64) -> Result<Reservation, InvokeError> {
        let deadline = tokio::time::Instant::now() + self.settings.admission_timeout;
        loop {
            // Created before the checks, so no release in between is missed.
            let freed = self.mem.freed();
            if let Some(r) = self.mem.try_reserve(mb) {
                return Ok(r);
            }
            // Evicted memory comes back once the sandbox is destroyed, and a
            // busy sandbox turning idle nudges us to evict it: wait for
            // either, up to the deadline. Memory already on its way back
            // counts: no second sandbox goes for it.
            let free = self.mem.total_mb().saturating_sub(self.mem.used_mb());
            if free.saturating_add(self.releasing_mb.load(Ordering::SeqCst)) < mb {
                self.evict_one();
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return match self.mem.try_reserve(mb) {
                    Some(r) => Ok(r),
                    None => Err(InvokeError::NoMemory(format!(
                        "no memory for a new sandbox: {} of {} MiB stayed reserved for {:?} and nothing idle could be evicted (mem_pool_mb)",
                        self.mem.used_mb(),
                        self.mem.total_mb(),
                        self.settings.admission_timeout
                    ))),
                };
            }
        }
    }

    /// Destroys the best idle sandbox to evict, if any.
    fn evict_one(&self) -> bool {
        let functions = self.functions_now();
        let best = functions
            .iter()
            .filter_map(|f| Some((f.eviction_candidate()?, f)))
            .max_by_key(|(key, _)| *key);
        let Some(((paused, idle_for), f)) = best else {
            return false;
        };
        let victim = f.take_idle(1, |i| {
            i.sandbox.is_paused() == paused && i.idle_since.elapsed() >= idle_for
        });
        let Some(inst) = victim.into_iter().next() else {
            return false;
        };
        tracing::info!(lambda = %f.name, sandbox = inst.sandbox.id(), paused, "evicting to free memory");
        self.counters.evictions.fetch_add(1, Ordering::Relaxed);
        self.retire(inst, "evicted");
        true
    }
}
