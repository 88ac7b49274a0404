//! The one place where this crate's blocking API meets async I/O: a small
//! tokio runtime owned by whatever needs one (the S3 backend's client, the
//! code store), running on threads of its own.
//!
//! [`crate::Registry`] is blocking and is called from anywhere: a worker's
//! blocking threads (inside its runtime's context), the CLI (no runtime at
//! all), a test's async task. `Handle::block_on` panics in an async
//! context and ties the I/O to a runtime the caller may drop, so instead
//! the work is spawned on the bridge's own runtime and the caller waits on
//! a plain channel, which blocks the calling thread in every context and
//! panics in none. Dropping the bridge never blocks either (a runtime
//! dropped inside an async context would panic).

use std::future::Future;
use std::io;
use std::sync::mpsc;

use tokio::runtime::{Builder, Handle, Runtime};

/// A runtime of our own, for blocking callers.
#[derive(Debug)]
pub(crate) struct Bridge {
    handle: Handle,
    /// `None` only while being dropped.
    runtime: Option<Runtime>,
}

impl Bridge {
    /// A runtime with `threads` worker threads named `name`.
    pub(crate) fn new(name: &str, threads: usize) -> io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// Runs `work` on the bridge's runtime and blocks until it is done.
    /// `None` when the runtime stopped before it finished (shutting down).
    pub(crate) fn run<F>(&self, work: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle.spawn(async move {
            // The caller may have gone (its thread ended); nothing to tell.
            let _ = tx.send(work.await);
        });
        rx.recv().ok()
    }

    /// Spawns `work` on the bridge's runtime without waiting for it.
    pub(crate) fn spawn<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(work)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn bridge() -> Bridge {
        Bridge::new("ol-test-bridge", 1).expect("runtime")
    }

    async fn io_work() -> u32 {
        // Needs the runtime's timer: work that would fail outside one.
        tokio::time::sleep(Duration::from_millis(1)).await;
        7
    }

    #[test]
    fn runs_from_a_plain_thread() {
        assert_eq!(bridge().run(io_work()), Some(7));
    }

    #[test]
    fn runs_from_a_blocking_thread_of_another_runtime() {
        let rt = Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let b = std::sync::Arc::new(bridge());
        let got = rt.block_on(async move {
            let b2 = std::sync::Arc::clone(&b);
            let got = tokio::task::spawn_blocking(move || b2.run(io_work()))
                .await
                .expect("join");
            // Dropped inside an async context: must not panic.
            drop(b);
            got
        });
        assert_eq!(got, Some(7));
    }

    #[test]
    fn runs_from_inside_an_async_task_without_panicking() {
        let rt = Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let got = rt.block_on(async {
            let b = bridge();
            let got = b.run(io_work());
            drop(b);
            got
        });
        assert_eq!(got, Some(7));
    }
}
