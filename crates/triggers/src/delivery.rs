//! One message's way through its lambda, whatever the broker: a call,
//! retries with doubling backoff while the call fails, then the dead-letter
//! target; the message is acknowledged only after a call succeeded or the
//! dead-letter target holds it, so nothing is lost (docs/triggers.md).
//!
//! The broker side is a [`Delivery`] (ack, extend, give back, dead-letter);
//! the lambda side a [`CallTarget`]. While a call runs or a retry waits,
//! the message is kept alive at the broker ([`Delivery::in_progress`] every
//! `keepalive`), so a long call is not redelivered to another consumer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ol_lambda::InvokeError;
use ol_lambda::ol_yaml::DeliveryPolicy;
use ol_sandbox::{Invocation, MessageContext, Reply};

use crate::stats::TriggerCounters;

/// Longest header value copied onto a dead letter (`Ol-Error`).
const MAX_ERROR_HEADER: usize = 1024;

/// `text` as one header line for a dead letter: control characters become
/// spaces, at most [`MAX_ERROR_HEADER`] bytes.
pub(crate) fn header_value(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_ERROR_HEADER {
        let mut end = MAX_ERROR_HEADER;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

/// What calls lambdas for a trigger: the lambda manager, in a worker.
pub trait CallTarget: Send + Sync + 'static {
    /// Calls lambda `name` with `inv`.
    fn call(
        self: Arc<Self>,
        name: String,
        inv: Invocation,
    ) -> impl Future<Output = Result<Reply, InvokeError>> + Send;
}

/// The worker's lambda layer calls lambdas for triggers through the same
/// path as HTTP calls (queue, scaling, limits).
impl CallTarget for ol_lambda::LambdaManager {
    async fn call(self: Arc<Self>, name: String, inv: Invocation) -> Result<Reply, InvokeError> {
        self.invoke_by(&name, inv, ol_lambda::Trigger::Queue).await
    }
}

/// One message held from its broker until it is settled.
pub trait Delivery: Send + Sync {
    /// Acknowledges it: delivered, never to be sent again.
    fn ack(&self) -> impl Future<Output = Result<(), String>> + Send;
    /// Tells the broker the message is still being worked on.
    fn in_progress(&self) -> impl Future<Output = Result<(), String>> + Send;
    /// Hands it back to be delivered again after `delay`.
    fn give_back(&self, delay: Duration) -> impl Future<Output = Result<(), String>> + Send;
    /// Stores it on the dead-letter target with `error`, then settles it;
    /// `Ok(false)` when the trigger has no dead-letter target.
    fn dead_letter(
        &self,
        error: &str,
        attempts: u32,
    ) -> impl Future<Output = Result<bool, String>> + Send;
}

/// How a message ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A call succeeded and the message was acknowledged.
    Delivered,
    /// Every attempt failed; the message is on the dead-letter target.
    DeadLettered(String),
    /// Every attempt failed and there is no dead-letter target (or it
    /// refused the message): given back, to be delivered again later.
    GivenBack(String),
    /// Not tried to the end (the worker is stopping, the lambda is gone):
    /// given back at once, the failures not counted against it.
    Abandoned(String),
}

/// Why a call failed, or `None` when it succeeded: an error of the lambda
/// layer, or an answer with status 400 or more (a WSGI app's 500).
fn failure(result: &Result<Reply, InvokeError>) -> Option<String> {
    match result {
        Ok(reply) if reply.status < 400 => None,
        Ok(reply) => {
            let body = String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)]);
            Some(format!("the lambda answered {}: {body}", reply.status))
        }
        Err(e) => Some(e.to_string()),
    }
}

/// Errors after which trying again cannot help this worker now: the
/// message goes back to the broker unharmed.
fn is_abandon(e: &InvokeError) -> bool {
    matches!(e, InvokeError::ShuttingDown | InvokeError::NotFound(_))
}

/// How one message is delivered: its lambda, retries and keepalive, and
/// the trigger's stop signal.
#[derive(Debug)]
pub struct Plan<'a> {
    /// The lambda to call.
    pub lambda: &'a str,
    /// Retries and backoff.
    pub policy: &'a DeliveryPolicy,
    /// How often the broker is told the message is in progress.
    pub keepalive: Duration,
    /// Turns true when the trigger stops: a message waiting for a retry is
    /// then given back at once instead of waiting.
    pub stop: &'a tokio::sync::watch::Receiver<bool>,
}

/// The call one attempt at a message makes, whatever the broker: a POST
/// of `body` to `/`, a new request id, `context` with this `attempt` as
/// `ctx.trigger`.
pub fn invocation(body: &Bytes, context: &MessageContext, attempt: u32) -> Invocation {
    Invocation {
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers: Vec::new(),
        body: body.clone(),
        request_id: ol_obs::request_id::next(),
        trigger: Some(MessageContext {
            attempt,
            ..context.clone()
        }),
    }
}

/// Delivers one message as `plan` says: `make` builds the call of each
/// attempt (1, 2, ...). Runs at most `1 + policy.retries` calls.
pub async fn deliver<T: CallTarget, D: Delivery>(
    target: &Arc<T>,
    message: &D,
    plan: Plan<'_>,
    counters: &TriggerCounters,
    make: impl Fn(u32) -> Invocation,
) -> Outcome {
    let Plan {
        lambda: name,
        policy,
        keepalive,
        stop,
    } = plan;
    let mut stop = stop.clone();
    let mut last_error = String::new();
    let attempts = 1 + policy.retries;
    for attempt in 1..=attempts {
        if attempt > 1 {
            let wait = tokio::time::sleep(policy.backoff(attempt - 1));
            let stopped = async {
                // A dropped sender means stopped too.
                let _ = stop.wait_for(|stopped| *stopped).await;
            };
            let stopping = tokio::select! {
                () = keep_alive(message, keepalive, wait) => false,
                () = stopped => true,
            };
            if stopping {
                let _ = message.give_back(Duration::ZERO).await;
                return Outcome::Abandoned(format!("the trigger stopped; {last_error}"));
            }
            counters.retried.inc();
        }
        let call = Arc::clone(target).call(name.to_owned(), make(attempt));
        let result = keep_alive(message, keepalive, call).await;
        match (&result, failure(&result)) {
            (_, None) => {
                return match message.ack().await {
                    Ok(()) => {
                        counters.delivered.inc();
                        Outcome::Delivered
                    }
                    // The call ran; the broker will send it again: at least once.
                    Err(e) => Outcome::Abandoned(format!("ack failed: {e}")),
                };
            }
            (Err(e), Some(why)) if is_abandon(e) => {
                let _ = message.give_back(Duration::ZERO).await;
                return Outcome::Abandoned(why);
            }
            (_, Some(why)) => {
                counters.failed.inc();
                counters.set_error(&format!("attempt {attempt}: {why}"));
                last_error = why;
            }
        }
    }
    match message.dead_letter(&last_error, attempts).await {
        Ok(true) => {
            counters.dead_lettered.inc();
            Outcome::DeadLettered(last_error)
        }
        Ok(false) => {
            let _ = message
                .give_back(policy.backoff(policy.retries.saturating_add(1)))
                .await;
            Outcome::GivenBack(last_error)
        }
        Err(e) => {
            counters.set_error(&format!("dead letter: {e}"));
            let _ = message
                .give_back(policy.backoff(policy.retries.saturating_add(1)))
                .await;
            Outcome::GivenBack(format!("{last_error}; dead letter failed: {e}"))
        }
    }
}

/// Runs `work`, telling the broker the message is in progress every
/// `every` until it is done.
async fn keep_alive<D: Delivery, F: Future>(message: &D, every: Duration, work: F) -> F::Output {
    tokio::pin!(work);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                let _ = message.in_progress().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use bytes::Bytes;

    use super::*;

    /// A lambda failing its first `fail_first` calls with `error`, each
    /// call taking `takes`.
    struct Lambda {
        fail_first: u32,
        error: fn() -> InvokeError,
        takes: Duration,
        calls: AtomicU32,
        attempts_seen: Mutex<Vec<u32>>,
    }

    impl Lambda {
        fn new(fail_first: u32, error: fn() -> InvokeError) -> Arc<Self> {
            Arc::new(Self {
                fail_first,
                error,
                takes: Duration::from_millis(1),
                calls: AtomicU32::new(0),
                attempts_seen: Mutex::new(Vec::new()),
            })
        }
    }

    impl CallTarget for Lambda {
        async fn call(self: Arc<Self>, _: String, inv: Invocation) -> Result<Reply, InvokeError> {
            tokio::time::sleep(self.takes).await;
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let attempt = inv.trigger.as_ref().map_or(0, |t| t.attempt);
            self.attempts_seen.lock().expect("lock").push(attempt);
            if n <= self.fail_first {
                Err((self.error)())
            } else {
                Ok(Reply {
                    status: 200,
                    headers: vec![],
                    body: Bytes::new(),
                })
            }
        }
    }

    /// A message recording what was done to it, at which (paused) time.
    #[derive(Default)]
    struct Recorded {
        events: Mutex<Vec<(String, Duration)>>,
        dead_letter: Option<Result<(), String>>,
        started: Option<tokio::time::Instant>,
    }

    impl Recorded {
        fn new(dead_letter: Option<Result<(), String>>) -> Self {
            Self {
                dead_letter,
                started: Some(tokio::time::Instant::now()),
                ..Self::default()
            }
        }
        fn push(&self, what: String) {
            let at = self.started.map_or(Duration::ZERO, |s| s.elapsed());
            self.events.lock().expect("lock").push((what, at));
        }
        fn names(&self) -> Vec<String> {
            let events = self.events.lock().expect("lock");
            events.iter().map(|(w, _)| w.clone()).collect()
        }
    }

    impl Delivery for Recorded {
        async fn ack(&self) -> Result<(), String> {
            self.push("ack".into());
            Ok(())
        }
        async fn in_progress(&self) -> Result<(), String> {
            self.push("progress".into());
            Ok(())
        }
        async fn give_back(&self, delay: Duration) -> Result<(), String> {
            self.push(format!("give_back {}ms", delay.as_millis()));
            Ok(())
        }
        async fn dead_letter(&self, error: &str, attempts: u32) -> Result<bool, String> {
            match &self.dead_letter {
                None => Ok(false),
                Some(Ok(())) => {
                    self.push(format!("dead_letter {attempts}: {error}"));
                    Ok(true)
                }
                Some(Err(e)) => Err(e.clone()),
            }
        }
    }

    fn policy(retries: u32) -> DeliveryPolicy {
        DeliveryPolicy {
            concurrency: 1,
            retries,
            backoff_ms: 100,
            max_backoff_ms: 250,
        }
    }

    fn raised() -> InvokeError {
        InvokeError::Raised {
            error: "ValueError: bad".into(),
            traceback: String::new(),
        }
    }

    /// A stop signal that never turns true (its sender lives forever).
    fn running() -> tokio::sync::watch::Receiver<bool> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        std::mem::forget(tx);
        rx
    }

    fn plan<'a>(
        policy: &'a DeliveryPolicy,
        keepalive: Duration,
        stop: &'a tokio::sync::watch::Receiver<bool>,
    ) -> Plan<'a> {
        Plan {
            lambda: "l",
            policy,
            keepalive,
            stop,
        }
    }

    async fn run(
        lambda: &Arc<Lambda>,
        message: &Recorded,
        retries: u32,
    ) -> (Outcome, TriggerCounters) {
        let counters = TriggerCounters::default();
        let stop = running();
        let policy = policy(retries);
        let outcome = deliver(
            lambda,
            message,
            plan(&policy, Duration::from_secs(10), &stop),
            &counters,
            |attempt| Invocation {
                trigger: Some(ol_sandbox::MessageContext {
                    attempt,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await;
        (outcome, counters)
    }

    #[test]
    fn header_values_are_one_bounded_line() {
        assert_eq!(header_value("a\r\nb\tc"), "a  b c");
        let long = "é".repeat(MAX_ERROR_HEADER);
        let v = header_value(&long);
        assert!(v.len() <= MAX_ERROR_HEADER && v.len() >= MAX_ERROR_HEADER - 1);
        assert!(v.chars().all(|c| c == 'é'));
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_success_is_acked_once() {
        let lambda = Lambda::new(0, raised);
        let message = Recorded::new(Some(Ok(())));
        let (outcome, counters) = run(&lambda, &message, 3).await;
        assert_eq!(outcome, Outcome::Delivered);
        assert_eq!(message.names(), ["ack"]);
        assert_eq!(counters.snapshot(), (1, 0, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_retried_with_doubling_capped_backoff_then_acked() {
        let lambda = Lambda::new(3, raised);
        let message = Recorded::new(Some(Ok(())));
        let (outcome, counters) = run(&lambda, &message, 3).await;
        assert_eq!(outcome, Outcome::Delivered);
        assert_eq!(*lambda.attempts_seen.lock().expect("lock"), [1, 2, 3, 4]);
        // Four 1 ms calls and waits of 100, 200 and 250 (capped) ms.
        let events = message.events.lock().expect("lock").clone();
        assert_eq!(events, [("ack".to_string(), Duration::from_millis(554))]);
        assert_eq!(counters.snapshot(), (1, 3, 3, 0));
        assert!(counters.last_error().contains("attempt 3: ValueError: bad"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_failure_goes_to_the_dead_letter_target_with_its_error() {
        let lambda = Lambda::new(u32::MAX, raised);
        let message = Recorded::new(Some(Ok(())));
        let (outcome, counters) = run(&lambda, &message, 2).await;
        assert!(matches!(outcome, Outcome::DeadLettered(ref e) if e.contains("ValueError: bad")));
        assert_eq!(lambda.calls.load(Ordering::SeqCst), 3, "1 + retries calls");
        let names = message.names();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].starts_with("dead_letter 3: "), "{names:?}");
        assert!(
            !names.iter().any(|n| n == "ack"),
            "never acked as delivered"
        );
        assert_eq!(counters.snapshot(), (0, 3, 2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_dead_letter_target_or_when_it_fails_the_message_is_given_back() {
        let lambda = Lambda::new(u32::MAX, raised);
        let message = Recorded::new(None);
        let (outcome, counters) = run(&lambda, &message, 0).await;
        assert!(matches!(outcome, Outcome::GivenBack(_)), "{outcome:?}");
        assert_eq!(message.names(), ["give_back 100ms"]);
        assert_eq!(counters.snapshot(), (0, 1, 0, 0));

        let lambda = Lambda::new(u32::MAX, raised);
        let message = Recorded::new(Some(Err("no stream for subject".into())));
        let (outcome, counters) = run(&lambda, &message, 1).await;
        assert!(
            matches!(outcome, Outcome::GivenBack(ref e) if e.contains("no stream for subject")),
            "{outcome:?}"
        );
        assert_eq!(message.names(), ["give_back 200ms"]);
        assert!(counters.last_error().contains("dead letter: no stream"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopping_worker_or_a_removed_lambda_gives_the_message_back_untried() {
        for error in [
            (|| InvokeError::ShuttingDown) as fn() -> InvokeError,
            || InvokeError::NotFound("gone".into()),
        ] {
            let lambda = Lambda::new(u32::MAX, error);
            let message = Recorded::new(Some(Ok(())));
            let (outcome, counters) = run(&lambda, &message, 5).await;
            assert!(matches!(outcome, Outcome::Abandoned(_)), "{outcome:?}");
            assert_eq!(lambda.calls.load(Ordering::SeqCst), 1, "no retries");
            assert_eq!(message.names(), ["give_back 0ms"]);
            assert_eq!(counters.snapshot(), (0, 0, 0, 0));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_status_is_a_failure() {
        struct Answers500;
        impl CallTarget for Answers500 {
            async fn call(self: Arc<Self>, _: String, _: Invocation) -> Result<Reply, InvokeError> {
                Ok(Reply {
                    status: 500,
                    headers: vec![],
                    body: Bytes::from_static(b"oops"),
                })
            }
        }
        let message = Recorded::new(Some(Ok(())));
        let counters = TriggerCounters::default();
        let (stop, policy) = (running(), policy(0));
        let outcome = deliver(
            &Arc::new(Answers500),
            &message,
            plan(&policy, Duration::from_secs(10), &stop),
            &counters,
            |_| Invocation::default(),
        )
        .await;
        assert_eq!(
            outcome,
            Outcome::DeadLettered("the lambda answered 500: oops".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_call_keeps_its_message_in_progress() {
        let lambda = Arc::new(Lambda {
            takes: Duration::from_millis(2500),
            ..Arc::try_unwrap(Lambda::new(0, raised))
                .ok()
                .expect("sole owner")
        });
        let message = Recorded::new(Some(Ok(())));
        let counters = TriggerCounters::default();
        let (stop, policy) = (running(), policy(0));
        let outcome = deliver(
            &lambda,
            &message,
            plan(&policy, Duration::from_secs(1), &stop),
            &counters,
            |_| Invocation::default(),
        )
        .await;
        assert_eq!(outcome, Outcome::Delivered);
        assert_eq!(message.names(), ["progress", "progress", "ack"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopping_trigger_gives_back_a_message_waiting_for_its_retry() {
        let lambda = Lambda::new(u32::MAX, raised);
        let message = Recorded::new(Some(Ok(())));
        let counters = TriggerCounters::default();
        let (tx, stop) = tokio::sync::watch::channel(false);
        let policy = DeliveryPolicy {
            backoff_ms: 60_000,
            ..policy(5)
        };
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = tx.send(true);
        });
        let outcome = deliver(
            &lambda,
            &message,
            plan(&policy, Duration::from_secs(100), &stop),
            &counters,
            |_| Invocation::default(),
        )
        .await;
        stopper.await.expect("stopper");
        assert!(
            matches!(outcome, Outcome::Abandoned(ref e) if e.contains("the trigger stopped; ValueError: bad")),
            "{outcome:?}"
        );
        assert_eq!(
            lambda.calls.load(Ordering::SeqCst),
            1,
            "no retry after the stop"
        );
        let events = message.events.lock().expect("lock").clone();
        assert_eq!(
            events,
            [("give_back 0ms".to_string(), Duration::from_millis(1000))]
        );
        assert_eq!(counters.snapshot(), (0, 1, 0, 0));
    }
}
