//! The memory pool (docs/architecture.md §3.7, seed 000): every sandbox reserves its
//! memory limit from `mem_pool_mb` before it is created and gives it back
//! when destroyed, so the worker never promises more memory than it has.
//! Admission waits for memory to be freed (the caller evicts in between);
//! memory of sandboxes being destroyed counts as on its way back, so a
//! waiter evicts more only when that is not enough.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// Memory all sandboxes together may hold.
#[derive(Debug)]
pub struct MemPool {
    total_mb: u64,
    usage: Mutex<Usage>,
    freed: Notify,
}

/// What is reserved, one lock for both so a waiter never sees memory
/// counted as returning after it is back (or back before it counts).
#[derive(Debug, Default)]
struct Usage {
    used_mb: u64,
    /// Of `used_mb`, what sandboxes being destroyed will give back.
    returning_mb: u64,
}

/// Memory held by one sandbox; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    pool: Arc<MemPool>,
    mb: u64,
    returning: bool,
}

impl MemPool {
    /// A pool of `total_mb`.
    pub fn new(total_mb: u64) -> Arc<Self> {
        Arc::new(Self {
            total_mb,
            usage: Mutex::new(Usage::default()),
            freed: Notify::new(),
        })
    }

    /// Size of the pool.
    pub fn total_mb(&self) -> u64 {
        self.total_mb
    }

    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Memory reserved now.
    pub fn used_mb(&self) -> u64 {
        self.usage().used_mb
    }

    /// Reserves `mb` if that much is free.
    pub fn try_reserve(self: &Arc<Self>, mb: u64) -> Option<Reservation> {
        let mut usage = self.usage();
        if usage.used_mb.saturating_add(mb) > self.total_mb {
            return None;
        }
        usage.used_mb += mb;
        Some(Reservation {
            pool: Arc::clone(self),
            mb,
            returning: false,
        })
    }

    /// Whether `mb` would not fit even once the memory on its way back
    /// ([`Reservation::returning`]) is back: only then does freeing more
    /// (evicting) help a waiter.
    pub fn short_of(&self, mb: u64) -> bool {
        let usage = self.usage();
        usage
            .used_mb
            .saturating_sub(usage.returning_mb)
            .saturating_add(mb)
            > self.total_mb
    }

    /// A future that completes when memory is given back after this call.
    /// Create it before `try_reserve`, await it after a failure: no
    /// release in between is missed.
    pub fn freed(&self) -> Notified<'_> {
        self.freed.notified()
    }

    /// Wakes everyone waiting in [`Self::freed`] without freeing anything:
    /// an instance became idle, so waiters can now evict it.
    pub fn nudge(&self) {
        self.freed.notify_waiters();
    }

    fn give_back(&self, mb: u64, returning: bool) {
        let mut usage = self.usage();
        usage.used_mb = usage.used_mb.saturating_sub(mb);
        if returning {
            usage.returning_mb = usage.returning_mb.saturating_sub(mb);
        }
        drop(usage);
        self.freed.notify_waiters();
    }
}

impl Reservation {
    /// Memory this reservation holds.
    pub fn mb(&self) -> u64 {
        self.mb
    }

    /// Counts this memory as on its way back: its sandbox is being
    /// destroyed (destroying takes a while; the memory is given back when
    /// the reservation is dropped after it).
    pub fn returning(&mut self) {
        if !self.returning {
            self.returning = true;
            self.pool.usage().returning_mb += self.mb;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.pool.give_back(self.mb, self.returning);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_up_to_total_and_frees_on_drop() {
        let pool = MemPool::new(100);
        let a = pool.try_reserve(60).expect("fits");
        assert!(pool.try_reserve(50).is_none(), "over the total");
        let b = pool.try_reserve(40).expect("exactly fills");
        assert_eq!(pool.used_mb(), 100);
        drop(a);
        assert_eq!(pool.used_mb(), 40);
        assert!(pool.try_reserve(60).is_some());
        assert_eq!(b.mb(), 40);
    }

    #[test]
    fn memory_on_its_way_back_counts_before_it_is_back() {
        let pool = MemPool::new(100);
        let mut a = pool.try_reserve(50).expect("fits");
        let _b = pool.try_reserve(50).expect("fits");
        assert!(pool.short_of(50), "full, nothing returning");
        a.returning();
        a.returning();
        assert!(!pool.short_of(50), "a's 50 will do");
        assert!(pool.short_of(60), "a's 50 will not do");
        assert!(pool.try_reserve(50).is_none(), "not back yet");
        drop(a);
        assert!(!pool.short_of(50));
        let c = pool.try_reserve(50).expect("back");
        assert!(pool.short_of(1), "returning memory is counted once");
        drop(c);
    }

    #[tokio::test]
    async fn waiters_wake_when_memory_is_freed() {
        let pool = MemPool::new(10);
        let held = pool.try_reserve(10).expect("fits");
        let waiter = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                loop {
                    let freed = pool.freed();
                    if let Some(r) = pool.try_reserve(5) {
                        return r.mb();
                    }
                    freed.await;
                }
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(got, 5);
    }
}
