//! The memory pool (docs/architecture.md §3.7, seed 000): every sandbox reserves its
//! memory limit from `mem_pool_mb` before it is created and gives it back
//! when destroyed, so the worker never promises more memory than it has.
//! Admission waits for memory to be freed (the caller evicts in between).

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// Memory all sandboxes together may hold.
#[derive(Debug)]
pub struct MemPool {
    total_mb: u64,
    used_mb: Mutex<u64>,
    freed: Notify,
}

/// Memory held by one sandbox; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    pool: Arc<MemPool>,
    mb: u64,
}

impl MemPool {
    /// A pool of `total_mb`.
    pub fn new(total_mb: u64) -> Arc<Self> {
        Arc::new(Self {
            total_mb,
            used_mb: Mutex::new(0),
            freed: Notify::new(),
        })
    }

    /// Size of the pool.
    pub fn total_mb(&self) -> u64 {
        self.total_mb
    }

    /// Memory reserved now.
    pub fn used_mb(&self) -> u64 {
        *self.used_mb.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves `mb` if that much is free.
    pub fn try_reserve(self: &Arc<Self>, mb: u64) -> Option<Reservation> {
        let mut used = self.used_mb.lock().unwrap_or_else(PoisonError::into_inner);
        if used.saturating_add(mb) > self.total_mb {
            return None;
        }
        *used += mb;
        Some(Reservation {
            pool: Arc::clone(self),
            mb,
        })
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

    fn give_back(&self, mb: u64) {
        let mut used = self.used_mb.lock().unwrap_or_else(PoisonError::into_inner);
        *used = used.saturating_sub(mb);
        drop(used);
        self.freed.notify_waiters();
    }
}

impl Reservation {
    /// Memory this reservation holds.
    pub fn mb(&self) -> u64 {
        self.mb
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.pool.give_back(self.mb);
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
