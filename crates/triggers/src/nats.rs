//! One `triggers.nats` entry at work: a durable pull consumer on a
//! JetStream stream whose messages become calls of the lambda
//! ([`crate::delivery`]), at most `concurrency` at a time.
//!
//! Back-pressure: a message is pulled only once a call slot is free, the
//! pull batch is `concurrency` and the consumer's `max_ack_pending` is
//! `concurrency`, so neither the worker nor the broker's push buffers
//! more than one batch for a slow lambda. The broker keeps the consumer's
//! position: a restarted worker resumes there, and messages it had not
//! acknowledged are sent again after `ack_wait`.
//!
//! A broker that cannot be reached or refuses the consumer never blocks the
//! worker: every request has a timeout, the error is in `/stats` and the
//! log, and the consumer tries again with a doubling wait (at most 30 s).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures_util::StreamExt;
use ol_lambda::ol_yaml::{DeliveryPolicy, NatsTrigger};
use ol_sandbox::MessageContext;
use tokio::sync::{Semaphore, watch};

use crate::TriggerSettings;
use crate::delivery::{self, CallTarget, Delivery, Outcome, header_value};
use crate::stats::TriggerCounters;
use crate::supervise::{Names, Session, supervise};

/// How often the consumer's lag is read from the broker.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// What one consumer needs to run.
pub(crate) struct Consumer<T> {
    pub(crate) target: Arc<T>,
    pub(crate) lambda: String,
    /// `nats[0]`, ...
    pub(crate) name: String,
    pub(crate) config: NatsTrigger,
    pub(crate) policy: DeliveryPolicy,
    pub(crate) settings: Arc<TriggerSettings>,
    pub(crate) counters: Arc<TriggerCounters>,
}

impl<T: CallTarget> Consumer<T> {
    /// Consumes until `stop` turns true (or its sender is gone); then waits
    /// for the calls in flight, which settle their messages.
    pub(crate) async fn run(self, stop: watch::Receiver<bool>) {
        let url = &self.config.url;
        let refused = (!self.settings.allows(url)).then(|| {
            format!(
                "broker {} is not in this worker's config.json triggers.allowed_brokers",
                url.address()
            )
        });
        let broker = url.to_string();
        let names = Names {
            lambda: &self.lambda,
            trigger: &self.name,
            broker: &broker,
        };
        supervise(&self, refused, names, &self.counters, stop).await;
    }
}

impl<T: CallTarget> Session for Consumer<T> {
    /// One connection: set up the consumer, then pull and call until told
    /// to stop (`Ok`) or the broker fails (`Err`).
    async fn session(&self, stop: &mut watch::Receiver<bool>) -> Result<(), String> {
        let timeout = self.settings.connect_timeout;
        let c = &self.config;
        let connect = async_nats::ConnectOptions::new()
            .name("ol-worker trigger")
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            // The allow-list names the brokers: never follow a server's
            // advice to go elsewhere.
            .ignore_discovered_servers()
            .max_reconnects(Some(3))
            .connect(c.url.address());
        let client = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| format!("connecting to {} timed out after {timeout:?}", c.url))?
            .map_err(|e| format!("cannot connect to {}: {e}", c.url))?;
        let js = jetstream::new(client.clone());
        let stream = js
            .get_stream(c.stream.as_str())
            .await
            .map_err(|e| format!("stream {}: {e}", c.stream))?;
        let config = pull::Config {
            durable_name: Some(c.durable.as_str().to_owned()),
            filter_subject: c.subject.as_str().to_owned(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.settings.ack_wait,
            max_ack_pending: i64::from(self.policy.concurrency),
            ..Default::default()
        };
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| format!("consumer {} of stream {}: {e}", c.durable, c.stream))?;
        let slots = self.policy.concurrency as usize;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(slots)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| format!("pulling from consumer {}: {e}", c.durable))?;
        self.counters.set_state("running");
        tracing::info!(lambda = %self.lambda, trigger = %self.name, broker = %c.url,
            stream = %c.stream, subject = %c.subject, durable = %c.durable, "trigger consumer running");

        let lag = tokio::spawn(poll_lag(consumer, Arc::clone(&self.counters)));
        let calls = Arc::new(Semaphore::new(slots));
        let ended = loop {
            let slot = tokio::select! {
                slot = Arc::clone(&calls).acquire_owned() => slot,
                _ = stop.wait_for(|stopped| *stopped) => break Ok(()),
            };
            let Ok(slot) = slot else {
                break Ok(());
            };
            let message = tokio::select! {
                m = messages.next() => m,
                _ = stop.wait_for(|stopped| *stopped) => break Ok(()),
            };
            let message = match message {
                Some(Ok(message)) => message,
                Some(Err(e)) => break Err(format!("receiving from consumer {}: {e}", c.durable)),
                None => break Err(format!("consumer {} ended", c.durable)),
            };
            let work = self.one_message(message, js.clone(), stop.clone());
            self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
            let counters = Arc::clone(&self.counters);
            tokio::spawn(async move {
                work.await;
                counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                drop(slot);
            });
        };
        lag.abort();
        drop(messages);
        // Every call in flight settles its message before the connection
        // goes: a stop loses nothing and leaves nothing to redeliver.
        let _ = calls.acquire_many(slots as u32).await;
        let _ = client.flush().await;
        ended
    }
}

impl<T: CallTarget> Consumer<T> {
    /// The work of one message: its calls and its settlement.
    fn one_message(
        &self,
        message: jetstream::Message,
        js: jetstream::Context,
        stop: watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (sequence, delivered) = message
            .info()
            .map(|i| (i.stream_sequence, u64::try_from(i.delivered).unwrap_or(0)))
            .unwrap_or((0, 0));
        let mut headers: Vec<(String, String)> = message
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |v| (name.to_string(), v.to_string()))
            })
            .collect();
        headers.sort();
        let context = MessageContext {
            kind: "nats".into(),
            name: self.name.clone(),
            stream: self.config.stream.as_str().to_owned(),
            subject: message.subject.to_string(),
            partition: None,
            sequence,
            key: None,
            headers,
            delivered,
            attempt: 0,
            topic: None,
            offset: None,
        };
        let target = Arc::clone(&self.target);
        let counters = Arc::clone(&self.counters);
        let lambda = self.lambda.clone();
        let policy = self.policy;
        let keepalive = self.settings.keepalive();
        let held = Held {
            message,
            js,
            dead_letter: self
                .config
                .dead_letter
                .as_ref()
                .map(|s| s.as_str().to_owned()),
            lambda: lambda.clone(),
            trigger: self.name.clone(),
        };
        async move {
            let body = held.message.payload.clone();
            let plan = delivery::Plan {
                lambda: &lambda,
                policy: &policy,
                keepalive,
                stop: &stop,
            };
            let outcome = delivery::deliver(&target, &held, plan, &counters, |attempt| {
                delivery::invocation(&body, &context, attempt)
            })
            .await;
            let trigger = &held.trigger;
            match outcome {
                Outcome::Delivered => {}
                Outcome::DeadLettered(why) => tracing::warn!(
                    lambda = %lambda, %trigger, sequence,
                    "message dead-lettered after {} attempts: {why}", policy.retries + 1
                ),
                Outcome::GivenBack(why) => tracing::warn!(
                    lambda = %lambda, %trigger, sequence, "message given back for later: {why}"
                ),
                Outcome::Abandoned(why) => tracing::info!(
                    lambda = %lambda, %trigger, sequence, "message given back untried: {why}"
                ),
            }
        }
    }
}

/// Reads the consumer's lag (pending plus unacknowledged) every
/// [`LAG_EVERY`] until aborted.
async fn poll_lag(
    consumer: jetstream::consumer::Consumer<pull::Config>,
    counters: Arc<TriggerCounters>,
) {
    loop {
        if let Ok(info) = consumer.get_info().await {
            counters.set_lag(info.num_pending + info.num_ack_pending as u64);
        }
        tokio::time::sleep(LAG_EVERY).await;
    }
}

/// A JetStream message being delivered.
struct Held {
    message: jetstream::Message,
    js: jetstream::Context,
    dead_letter: Option<String>,
    lambda: String,
    trigger: String,
}

impl Delivery for Held {
    async fn ack(&self) -> Result<(), String> {
        // Confirmed by the server: "delivered" means the broker knows.
        self.message.double_ack().await.map_err(|e| e.to_string())
    }

    async fn in_progress(&self) -> Result<(), String> {
        self.message
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| e.to_string())
    }

    async fn give_back(&self, delay: Duration) -> Result<(), String> {
        let delay = (!delay.is_zero()).then_some(delay);
        self.message
            .ack_with(AckKind::Nak(delay))
            .await
            .map_err(|e| e.to_string())
    }

    async fn dead_letter(&self, error: &str, attempts: u32) -> Result<bool, String> {
        let Some(subject) = &self.dead_letter else {
            return Ok(false);
        };
        let mut headers = self.message.headers.clone().unwrap_or_default();
        let (stream, sequence) = self
            .message
            .info()
            .map(|i| (i.stream.to_owned(), i.stream_sequence))
            .unwrap_or_default();
        headers.insert("Ol-Error", header_value(error));
        headers.insert("Ol-Lambda", self.lambda.as_str());
        headers.insert("Ol-Trigger", self.trigger.as_str());
        headers.insert("Ol-Attempts", attempts.to_string());
        headers.insert("Ol-Stream", stream);
        headers.insert("Ol-Subject", header_value(self.message.subject.as_str()));
        headers.insert("Ol-Sequence", sequence.to_string());
        // Stored first (the stream's ack), settled after: a crash between
        // the two leaves a duplicate dead letter, never a lost message.
        self.js
            .publish_with_headers(subject.clone(), headers, self.message.payload.clone())
            .await
            .map_err(|e| format!("publishing to {subject}: {e}"))?
            .await
            .map_err(|e| format!("no stream stored the dead letter on {subject}: {e}"))?;
        self.message
            .double_ack_with(AckKind::Term)
            .await
            .map_err(|e| format!("settling after the dead letter: {e}"))?;
        Ok(true)
    }
}
