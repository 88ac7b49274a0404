//! The phases of a call on the worker (docs/architecture.md §2, "the flow of a
//! call"), each with one process-wide [`LatencyHistogram`] (what `/stats`
//! and `/metrics` report) and one `tracing` span of the same name (what a
//! Chrome trace shows). Timing a phase does both, so the numbers and the
//! trace never disagree about what a phase is.
//!
//! Spans are at DEBUG level under the target [`SPAN_TARGET`]: with the
//! default log filter they are disabled and cost a few nanoseconds; a
//! trace file (or `OL_LOG=ol_phase=debug`) turns them on.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::histogram::LatencyHistogram;

/// The `tracing` target of every phase span.
pub const SPAN_TARGET: &str = "ol_phase";

/// One step of serving a call. The names are the span names, the `/stats`
/// key prefixes (`<name>.cnt`, `<name>.ms-avg`, ... as in OpenLambda) and
/// the `phase` label of `/metrics`; `web-request` and `pull-lambda` are
/// OpenLambda's own names for the same steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// A whole `/run` request in the worker (`web-request`).
    Request,
    /// Fetching the lambda's code from the registry, on the first call and
    /// whenever the cached copy is older than `registry_cache_ms`
    /// (`pull-lambda`).
    CodePull,
    /// Waiting for an idle instance or a slot to create one (`queue-wait`).
    QueueWait,
    /// Reserving a new sandbox's memory, evicting if needed (`mem-reserve`).
    MemReserve,
    /// Thawing a paused sandbox before a call (`unpause`).
    Unpause,
    /// Making a sandbox until its runtime is ready (`create-sandbox`).
    SandboxCreate,
    /// Resolving and installing a lambda's requirements, or finding them
    /// done already (`packages`; only for lambdas with requirements).
    Packages,
    /// Finding (and, the first time, starting) the import-cache zygote to
    /// fork from (`zygote-lookup`).
    ZygoteLookup,
    /// sock: taking a pre-forked blank sandbox, or forking one now
    /// (`sock-blank`).
    SockBlank,
    /// sock: starting a fresh interpreter when no zygote serves
    /// (`sock-spawn`).
    SockSpawn,
    /// sock: setting the sandbox cgroup's limits (`sock-cgroup`).
    SockCgroup,
    /// sock: handing the lambda (code and scratch mounts, logs, env) to a
    /// blank (`sock-assign`).
    SockAssign,
    /// Waiting for the new runtime's ready message: the child has loaded
    /// the lambda (`sandbox-ready`).
    SandboxReady,
    /// The first call on a new sandbox, up to its response (`first-call`).
    FirstCall,
    /// A call on a warm sandbox, up to its response (`call`).
    Call,
}

/// How many phases there are.
const COUNT: usize = 15;

static HISTOGRAMS: [LatencyHistogram; COUNT] = [const { LatencyHistogram::new() }; COUNT];

/// OpenLambda's `trace.latency`: log every timed phase.
static LOG_LATENCY: AtomicBool = AtomicBool::new(false);

impl Phase {
    /// Every phase, in the order a cold call goes through them.
    pub const ALL: [Phase; COUNT] = [
        Phase::Request,
        Phase::CodePull,
        Phase::QueueWait,
        Phase::MemReserve,
        Phase::Unpause,
        Phase::SandboxCreate,
        Phase::Packages,
        Phase::ZygoteLookup,
        Phase::SockBlank,
        Phase::SockSpawn,
        Phase::SockCgroup,
        Phase::SockAssign,
        Phase::SandboxReady,
        Phase::FirstCall,
        Phase::Call,
    ];

    /// The phase's name.
    pub const fn name(self) -> &'static str {
        match self {
            Phase::Request => "web-request",
            Phase::CodePull => "pull-lambda",
            Phase::QueueWait => "queue-wait",
            Phase::MemReserve => "mem-reserve",
            Phase::Unpause => "unpause",
            Phase::SandboxCreate => "create-sandbox",
            Phase::Packages => "packages",
            Phase::ZygoteLookup => "zygote-lookup",
            Phase::SockBlank => "sock-blank",
            Phase::SockSpawn => "sock-spawn",
            Phase::SockCgroup => "sock-cgroup",
            Phase::SockAssign => "sock-assign",
            Phase::SandboxReady => "sandbox-ready",
            Phase::FirstCall => "first-call",
            Phase::Call => "call",
        }
    }

    /// The process-wide latency histogram of the phase.
    pub fn histogram(self) -> &'static LatencyHistogram {
        &HISTOGRAMS[self as usize]
    }

    /// A new span for the phase. `web-request` has a `lambda` field and
    /// `create-sandbox` a `sandbox` field, to be recorded by the caller.
    pub fn span(self) -> tracing::Span {
        use tracing::field::Empty;
        // Span names must be literals: one macro call per phase.
        macro_rules! span {
            ($name:literal $(, $field:ident)?) => {
                tracing::debug_span!(target: SPAN_TARGET, $name $(, $field = Empty)?)
            };
        }
        match self {
            Phase::Request => span!("web-request", lambda),
            Phase::CodePull => span!("pull-lambda"),
            Phase::QueueWait => span!("queue-wait"),
            Phase::MemReserve => span!("mem-reserve"),
            Phase::Unpause => span!("unpause"),
            Phase::SandboxCreate => span!("create-sandbox", sandbox),
            Phase::Packages => span!("packages"),
            Phase::ZygoteLookup => span!("zygote-lookup"),
            Phase::SockBlank => span!("sock-blank"),
            Phase::SockSpawn => span!("sock-spawn"),
            Phase::SockCgroup => span!("sock-cgroup"),
            Phase::SockAssign => span!("sock-assign"),
            Phase::SandboxReady => span!("sandbox-ready"),
            Phase::FirstCall => span!("first-call"),
            Phase::Call => span!("call"),
        }
    }

    /// Records one run of the phase that took `took` (for callers that
    /// measure the time anyway).
    pub fn record(self, took: Duration) {
        self.histogram().record(took);
        if LOG_LATENCY.load(Ordering::Relaxed) {
            tracing::info!(
                phase = self.name(),
                ms = took.as_secs_f64() * 1e3,
                "latency"
            );
        }
    }

    /// Starts timing the phase (no span); recorded when dropped.
    pub fn start(self) -> PhaseTimer {
        PhaseTimer {
            phase: self,
            started: Instant::now(),
        }
    }

    /// Times a stretch of blocking code: the phase's span is entered and
    /// the time recorded until the guard drops.
    pub fn enter(self) -> EnteredPhase {
        EnteredPhase {
            _timer: self.start(),
            _span: self.span().entered(),
        }
    }

    /// Runs blocking `f` as the phase (timed, inside its span).
    pub fn run<T>(self, f: impl FnOnce() -> T) -> T {
        let _phase = self.enter();
        f()
    }

    /// Times `fut` inside the phase's span.
    pub async fn time<F: Future>(self, fut: F) -> F::Output {
        self.time_in(self.span(), fut).await
    }

    /// Times `fut` inside `span` (the phase's span, made by the caller to
    /// record fields on it).
    pub async fn time_in<F: Future>(self, span: tracing::Span, fut: F) -> F::Output {
        let _timer = self.start();
        fut.instrument(span).await
    }
}

/// Turns logging of every timed phase on or off (OpenLambda's
/// `trace.latency`).
pub fn set_log_latency(on: bool) {
    LOG_LATENCY.store(on, Ordering::Relaxed);
}

/// Times one phase; records into its histogram when dropped.
#[derive(Debug)]
#[must_use = "the phase is timed until this is dropped"]
pub struct PhaseTimer {
    phase: Phase,
    started: Instant,
}

impl Drop for PhaseTimer {
    fn drop(&mut self) {
        self.phase.record(self.started.elapsed());
    }
}

/// A phase timed and its span entered, until dropped (blocking code only:
/// it cannot cross an `.await`).
#[derive(Debug)]
#[must_use = "the phase is timed until this is dropped"]
pub struct EnteredPhase {
    _timer: PhaseTimer,
    _span: tracing::span::EnteredSpan,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_phase_once_in_index_order() {
        for (i, p) in Phase::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i, "{p:?}");
        }
        let mut names: Vec<&str> = Phase::ALL.iter().map(|p| p.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COUNT);
    }

    #[test]
    fn span_names_are_the_phase_names() {
        // Another test of this binary may hit a phase's callsite first, on
        // a thread with no subscriber. With one dispatcher registered,
        // tracing asks only the registering thread's default whether the
        // callsite is wanted, and caches "never" for every thread (this
        // test failed 3 times in 100). A second registered dispatcher
        // makes it ask all of them.
        let _second = tracing::Dispatch::new(tracing_subscriber::registry());
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            for p in Phase::ALL {
                let span = p.span();
                let meta = span.metadata().expect("span enabled");
                assert_eq!(meta.name(), p.name());
                assert_eq!(meta.target(), SPAN_TARGET);
            }
        });
    }

    #[test]
    fn timing_records_exactly_once_per_guard() {
        let before = Phase::SockSpawn.histogram().snapshot().count;
        drop(Phase::SockSpawn.enter());
        drop(Phase::SockSpawn.start());
        assert_eq!(Phase::SockSpawn.run(|| 7), 7);
        Phase::SockSpawn.record(Duration::from_millis(1));
        poll_once(Phase::SockSpawn.time(async {}));
        assert_eq!(Phase::SockSpawn.histogram().snapshot().count, before + 5);
    }

    /// Polls a future that never waits to completion.
    fn poll_once<F: Future>(fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(out) => out,
            std::task::Poll::Pending => panic!("the future waited"),
        }
    }
}
