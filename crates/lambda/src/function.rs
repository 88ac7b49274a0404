//! One lambda's instances: the idle ones kept warm (most recently used
//! first) and the bound on how many may exist at once.

use std::sync::{Arc, Mutex, PoisonError};

use ol_registry::LambdaCode;
use ol_sandbox::SafeSandbox;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A live sandbox of a lambda, holding one of the lambda's instance slots
/// until it is destroyed.
#[derive(Debug)]
pub(crate) struct Instance {
    pub(crate) sandbox: SafeSandbox,
    _slot: OwnedSemaphorePermit,
}

impl Instance {
    pub(crate) fn new(sandbox: SafeSandbox, slot: OwnedSemaphorePermit) -> Self {
        Self {
            sandbox,
            _slot: slot,
        }
    }
}

/// What [`LambdaFunction::acquire`] got: a warm instance, or the right to
/// create a new one.
pub(crate) enum Acquired {
    Idle(Instance),
    NewSlot(OwnedSemaphorePermit),
}

/// A lambda and its instances.
#[derive(Debug)]
pub(crate) struct LambdaFunction {
    pub(crate) name: String,
    pub(crate) code: LambdaCode,
    idle: Mutex<Vec<Instance>>,
    /// One permit per entry of `idle`, so waiting for an idle instance is
    /// an ordinary async acquire.
    idle_ready: Semaphore,
    /// Instance slots: a sandbox holds one for its whole life.
    slots: Arc<Semaphore>,
}

impl LambdaFunction {
    pub(crate) fn new(name: String, code: LambdaCode, max_instances: usize) -> Self {
        Self {
            name,
            code,
            idle: Mutex::new(Vec::new()),
            idle_ready: Semaphore::new(0),
            slots: Arc::new(Semaphore::new(max_instances.max(1))),
        }
    }

    /// An idle instance if there is one, else a free slot to create one,
    /// else waits for whichever comes first. `None` once shut down.
    pub(crate) async fn acquire(&self) -> Option<Acquired> {
        if let Ok(permit) = self.idle_ready.try_acquire() {
            permit.forget();
            return Some(Acquired::Idle(self.pop_idle()));
        }
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Some(Acquired::NewSlot(slot));
        }
        tokio::select! {
            biased;
            permit = self.idle_ready.acquire() => {
                permit.ok()?.forget();
                Some(Acquired::Idle(self.pop_idle()))
            }
            slot = self.slots.clone().acquire_owned() => Some(Acquired::NewSlot(slot.ok()?)),
        }
    }

    fn pop_idle(&self) -> Instance {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // A permit of `idle_ready` is only added after a push, so the list
        // holds at least one instance per permit taken.
        idle.pop()
            .expect("idle_ready permits never exceed idle instances")
    }

    /// Puts a healthy instance back for the next call.
    pub(crate) fn release(&self, inst: Instance) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(inst);
        self.idle_ready.add_permits(1);
    }

    /// Number of idle instances.
    pub(crate) fn idle_count(&self) -> usize {
        self.idle_ready.available_permits()
    }

    /// Stops handing out instances and returns the idle ones (to destroy).
    pub(crate) fn close(&self) -> Vec<Instance> {
        self.idle_ready.close();
        self.slots.close();
        std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
