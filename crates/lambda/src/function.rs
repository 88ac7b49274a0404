//! One lambda's instances: the idle ones kept warm (most recently used
//! first) and the bound on how many may exist at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ol_registry::LambdaCode;
use ol_sandbox::mem_pool::Reservation;
use ol_sandbox::{Limits, SafeSandbox};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
// tokio's, so that a test on a paused clock moves idle times too.
use tokio::time::Instant;

use crate::moving_average::MovingAverage;
use crate::ol_yaml::LambdaConfig;

/// A live sandbox of a lambda, holding one of the lambda's instance slots
/// and its memory reservation until it is destroyed.
#[derive(Debug)]
pub(crate) struct Instance {
    pub(crate) sandbox: SafeSandbox,
    /// When it last finished a call.
    pub(crate) idle_since: Instant,
    /// Whether it has not served a call yet.
    pub(crate) fresh: bool,
    _slot: OwnedSemaphorePermit,
    memory: Reservation,
}

impl Instance {
    /// The memory it holds from the pool, in MiB.
    pub(crate) fn memory_mb(&self) -> u64 {
        self.memory.mb()
    }

    pub(crate) fn new(
        sandbox: SafeSandbox,
        slot: OwnedSemaphorePermit,
        memory: Reservation,
    ) -> Self {
        Self {
            sandbox,
            idle_since: Instant::now(),
            fresh: true,
            _slot: slot,
            memory,
        }
    }
}

/// What [`LambdaFunction::acquire`] got: a warm instance, or the right to
/// create a new one.
pub(crate) enum Acquired {
    Idle(Instance),
    NewSlot(OwnedSemaphorePermit),
}

/// Why [`LambdaFunction::acquire`] gave nothing.
pub(crate) enum NotAcquired {
    /// The function was retired or the worker is shutting down.
    Closed,
    /// This many calls already wait for an instance.
    QueueFull(usize),
}

/// Counts a waiting call for as long as it waits (also when the caller
/// gives up).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A lambda and its instances.
#[derive(Debug)]
pub(crate) struct LambdaFunction {
    pub(crate) name: String,
    pub(crate) code: LambdaCode,
    /// Its ol.yaml.
    pub(crate) config: LambdaConfig,
    /// The worker's limits with the lambda's own (lower) ones applied.
    pub(crate) limits: Limits,
    /// Its requirements.txt (or packages.txt), if it has one.
    pub(crate) requirements: Option<String>,
    idle: Mutex<Vec<Instance>>,
    /// One permit per entry of `idle`, so waiting for an idle instance is
    /// an ordinary async acquire.
    idle_ready: Semaphore,
    /// Instance slots: a sandbox holds one for its whole life.
    slots: Arc<Semaphore>,
    /// Calls waiting for an instance.
    waiting: AtomicUsize,
    /// Average call time, to decide between waiting for a busy instance
    /// and starting a new one.
    avg_call: MovingAverage,
    /// Most instances at once (the slots' initial count).
    max_instances: usize,
    /// Most calls that may wait; more are refused (`NotAcquired::QueueFull`).
    max_queue: usize,
    /// When the registry was last asked whether the code changed.
    checked_at: Mutex<Instant>,
    /// Replaced by newer code or removed: its instances go as they finish.
    retired: AtomicBool,
}

impl LambdaFunction {
    pub(crate) fn new(
        name: String,
        code: LambdaCode,
        config: LambdaConfig,
        limits: Limits,
        requirements: Option<String>,
        max_instances: usize,
        max_queue: usize,
    ) -> Self {
        Self {
            name,
            code,
            config,
            limits,
            requirements,
            idle: Mutex::new(Vec::new()),
            idle_ready: Semaphore::new(0),
            slots: Arc::new(Semaphore::new(max_instances.max(1))),
            waiting: AtomicUsize::new(0),
            avg_call: MovingAverage::default(),
            max_instances: max_instances.max(1),
            max_queue,
            checked_at: Mutex::new(Instant::now()),
            retired: AtomicBool::new(false),
        }
    }

    /// Whether the registry should be asked again (at most once per
    /// `every`); the first caller to see it due gets `true`.
    pub(crate) fn due_for_check(&self, every: Duration) -> bool {
        let mut at = self
            .checked_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if at.elapsed() < every {
            return false;
        }
        *at = Instant::now();
        true
    }

    /// Whether newer code replaced this function (or it was removed).
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Records how long a call took (for [`Self::acquire`]'s choice).
    pub(crate) fn record_call(&self, took: Duration) {
        self.avg_call.record(took);
    }

    /// Instances currently serving a call.
    fn busy(&self) -> usize {
        let live = self.max_instances - self.slots.available_permits();
        live.saturating_sub(self.idle_ready.available_permits())
    }

    /// An idle instance if there is one. Else, when at least
    /// `busy_before_waiting` instances are busy (more would not run in
    /// parallel anyway) and they will likely free up sooner than a new
    /// sandbox could start (`create_cost`), waits for one (OpenLambda scales
    /// by outstanding work × average call time the same way); else a free
    /// slot to create one; else waits (if the queue has room) for whichever
    /// comes first.
    pub(crate) async fn acquire(
        &self,
        create_cost: Duration,
        busy_before_waiting: usize,
    ) -> Result<Acquired, NotAcquired> {
        if let Ok(permit) = self.idle_ready.try_acquire() {
            permit.forget();
            return Ok(Acquired::Idle(self.pop_idle()));
        }
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        let busy = self.busy();
        let avg_call = self.avg_call.get();
        if busy >= busy_before_waiting.max(1) && !avg_call.is_zero() {
            let expected = avg_call * (queued as u32 + 1) / busy as u32;
            if expected < create_cost {
                if let Ok(Ok(permit)) =
                    tokio::time::timeout(create_cost, self.idle_ready.acquire()).await
                {
                    permit.forget();
                    return Ok(Acquired::Idle(self.pop_idle()));
                }
            }
        }
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Ok(Acquired::NewSlot(slot));
        }
        if queued >= self.max_queue {
            return Err(NotAcquired::QueueFull(queued));
        }
        tokio::select! {
            biased;
            permit = self.idle_ready.acquire() => {
                permit.map_err(|_| NotAcquired::Closed)?.forget();
                Ok(Acquired::Idle(self.pop_idle()))
            }
            slot = self.slots.clone().acquire_owned() => {
                Ok(Acquired::NewSlot(slot.map_err(|_| NotAcquired::Closed)?))
            }
        }
    }

    fn pop_idle(&self) -> Instance {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // A permit of `idle_ready` is only added after a push, so the list
        // holds at least one instance per permit taken.
        idle.pop()
            .expect("idle_ready permits never exceed idle instances")
    }

    /// Puts a healthy instance back for the next call. Paused instances go
    /// to the cold end, so the next call takes a running one if any.
    pub(crate) fn release(&self, mut inst: Instance) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if inst.sandbox.is_paused() {
            idle.insert(0, inst);
        } else {
            inst.idle_since = Instant::now();
            idle.push(inst);
        }
        drop(idle);
        self.idle_ready.add_permits(1);
    }

    /// Takes out idle instances matching `pick` (at most `max`), as if
    /// acquired: the caller puts them back with [`Self::release`] or
    /// destroys them.
    pub(crate) fn take_idle(&self, max: usize, pick: impl Fn(&Instance) -> bool) -> Vec<Instance> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let mut taken = Vec::new();
        while taken.len() < max {
            let Some(pos) = idle.iter().position(&pick) else {
                break;
            };
            // An acquirer may hold a permit for an entry it has not popped
            // yet; then that entry is spoken for and we stop.
            let Ok(permit) = self.idle_ready.try_acquire() else {
                break;
            };
            permit.forget();
            taken.push(idle.remove(pos));
        }
        taken
    }

    /// The idle instance eviction should take first from this lambda:
    /// paused before running, then the longest idle. `None` if none idle.
    pub(crate) fn eviction_candidate(&self) -> Option<(bool, Duration)> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|i| (i.sandbox.is_paused(), i.idle_since.elapsed()))
            .max()
    }

    /// Number of idle instances.
    pub(crate) fn idle_count(&self) -> usize {
        self.idle_ready.available_permits()
    }

    /// Idle instances by state: (running, paused).
    pub(crate) fn idle_by_state(&self) -> (usize, usize) {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let paused = idle.iter().filter(|i| i.sandbox.is_paused()).count();
        (idle.len() - paused, paused)
    }

    /// Stops handing out instances and returns the idle ones (to destroy).
    pub(crate) fn close(&self) -> Vec<Instance> {
        self.retired.store(true, Ordering::Release);
        self.idle_ready.close();
        self.slots.close();
        std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
