//! One `triggers.kafka` entry at work: a member of a Kafka consumer group
//! (librdkafka, through `rdkafka`) whose records become calls of the
//! lambda ([`crate::delivery`]), at most `concurrency` at a time.
//!
//! Offsets are committed to the group only for settled records, and only
//! up to the first record not yet settled in each partition
//! ([`crate::offsets`]): a restarted worker, or another member after a
//! rebalance, resumes at the first record not known to be done. Kafka has
//! no per-record acknowledgement or redelivery, so a record whose calls
//! all failed and that has no dead-letter topic is tried again here after
//! `max_backoff_ms`, holding its partition's commit meanwhile.
//!
//! Back-pressure: a record is taken from the client only once a call slot
//! is free; librdkafka's own prefetch is bounded by `queued.max.messages.kbytes`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use ol_lambda::ol_yaml::{DeliveryPolicy, KafkaTrigger};
use ol_sandbox::MessageContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::{Semaphore, watch};

use crate::TriggerSettings;
use crate::delivery::{self, CallTarget, Delivery, Outcome, header_value};
use crate::offsets::Offsets;
use crate::stats::TriggerCounters;
use crate::supervise::{Names, Session, supervise};

/// How often the group's lag is read from the broker.
const LAG_EVERY: Duration = Duration::from_secs(1);
/// librdkafka's prefetch per partition, in KiB (its default is 64 MiB).
const PREFETCH_KIB: &str = "1024";

/// What one consumer needs to run.
pub(crate) struct Consumer<T> {
    pub(crate) target: Arc<T>,
    pub(crate) lambda: String,
    /// `kafka[0]`, ...
    pub(crate) name: String,
    pub(crate) config: KafkaTrigger,
    pub(crate) policy: DeliveryPolicy,
    pub(crate) settings: Arc<TriggerSettings>,
    pub(crate) counters: Arc<TriggerCounters>,
}

/// The client of one session, shared by its record tasks.
struct Client {
    consumer: StreamConsumer,
    /// For dead letters; `None` without a `dead_letter` topic.
    producer: Option<FutureProducer>,
    offsets: Mutex<Offsets>,
    topic: String,
    timeout: Duration,
}

impl Client {
    /// Commits `offset` of `partition` (the next record to read) without
    /// waiting: a later commit supersedes it, and a stop ends with a
    /// commit that waits.
    fn commit(&self, partition: i32, offset: i64) -> Result<(), String> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
            .map_err(|e| e.to_string())?;
        self.consumer
            .commit(&list, CommitMode::Async)
            .map_err(|e| format!("committing offset {offset} of partition {partition}: {e}"))
    }

    /// Marks a record settled and commits what that allows.
    fn settle(&self, partition: i32, offset: i64) -> Result<(), String> {
        let next = self
            .offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .settled(partition, offset);
        match next {
            Some(next) => self.commit(partition, next),
            None => Ok(()),
        }
    }

    /// The last commit of a session, waited for. Blocking.
    fn commit_all(&self) -> Result<(), String> {
        let positions = self
            .offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .positions();
        if positions.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in positions {
            list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
                .map_err(|e| e.to_string())?;
        }
        self.consumer
            .commit(&list, CommitMode::Sync)
            .map_err(|e| format!("committing at the stop: {e}"))
    }

    /// The group's lag on the partitions assigned here: each one's high
    /// watermark less its committed offset (its low watermark when nothing
    /// is committed). Blocking.
    ///
    /// On the way it commits again what was settled here and the broker
    /// does not have: a commit is asynchronous and its refusal (a
    /// rebalance in progress, a broker's hiccup) reaches nobody, and with
    /// no later record on its partition nothing else would commit it
    /// again (seen on tansu: 1,000 records delivered, their partition's
    /// lag stuck above 0). Only assigned partitions, only forward: what
    /// another member committed since is never moved back.
    fn lag(&self) -> Option<u64> {
        let assigned = self.consumer.assignment().ok()?;
        let committed = self
            .consumer
            .committed_offsets(assigned.clone(), self.timeout)
            .ok()?;
        let settled: HashMap<i32, i64> = self
            .offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .positions()
            .into_iter()
            .collect();
        let mut lag = 0u64;
        for element in committed.elements() {
            let partition = element.partition();
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.topic, partition, self.timeout)
                .ok()?;
            let on_broker = match element.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            if let Some(&ours) = settled.get(&partition)
                && on_broker.is_none_or(|o| o < ours)
            {
                // Counted in the lag until the broker says it has it.
                let _ = self.commit(partition, ours);
            }
            let from = on_broker.map_or(low, |o| o.max(low));
            lag += u64::try_from(high - from).unwrap_or(0);
        }
        Some(lag)
    }
}

impl<T: CallTarget> Consumer<T> {
    /// Consumes until `stop` turns true (or its sender is gone); then waits
    /// for the calls in flight and commits what they settled.
    pub(crate) async fn run(self, stop: watch::Receiver<bool>) {
        let refused = self
            .config
            .brokers
            .iter()
            .find(|b| !self.settings.allows_address(&b.address()))
            .map(|b| {
                format!(
                    "broker {} is not in this worker's config.json triggers.allowed_brokers",
                    b.address()
                )
            });
        let broker = self.config.bootstrap();
        let names = Names {
            lambda: &self.lambda,
            trigger: &self.name,
            broker: &broker,
        };
        supervise(&self, refused, names, &self.counters, stop).await;
    }

    /// The work of one record: its calls and its settlement, tried again
    /// after `max_backoff_ms` while its calls fail and no dead-letter topic
    /// takes it, until it is settled or the trigger stops.
    fn one_record(
        &self,
        record: OwnedMessage,
        client: Arc<Client>,
        stop: watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut headers: Vec<(String, String)> = record
            .headers()
            .map(|h| {
                h.iter()
                    .map(|Header { key, value }| {
                        let value = value.map(String::from_utf8_lossy).unwrap_or_default();
                        (key.to_owned(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        headers.sort();
        let offset = u64::try_from(record.offset()).unwrap_or(0);
        let context = MessageContext {
            kind: "kafka".into(),
            name: self.name.clone(),
            stream: record.topic().to_owned(),
            subject: record.topic().to_owned(),
            partition: Some(record.partition()),
            sequence: offset,
            key: record
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            delivered: 1,
            attempt: 0,
            topic: Some(record.topic().to_owned()),
            offset: Some(offset),
        };
        let target = Arc::clone(&self.target);
        let counters = Arc::clone(&self.counters);
        let lambda = self.lambda.clone();
        let policy = self.policy;
        let keepalive = self.settings.keepalive();
        let held = Held {
            body: Bytes::from(record.payload().unwrap_or_default().to_vec()),
            record,
            client,
            dead_letter: self
                .config
                .dead_letter
                .as_ref()
                .map(|t| t.as_str().to_owned()),
            lambda: lambda.clone(),
            trigger: self.name.clone(),
            again_after: Mutex::new(None),
        };
        async move {
            let mut context = context;
            let partition = held.record.partition();
            loop {
                let plan = delivery::Plan {
                    lambda: &lambda,
                    policy: &policy,
                    keepalive,
                    stop: &stop,
                };
                let outcome = delivery::deliver(&target, &held, plan, &counters, |attempt| {
                    delivery::invocation(&held.body, &context, attempt)
                })
                .await;
                let trigger = &held.trigger;
                match outcome {
                    Outcome::Delivered => {}
                    Outcome::DeadLettered(why) => tracing::warn!(
                        lambda = %lambda, %trigger, partition, offset,
                        "record dead-lettered after {} attempts: {why}", policy.retries + 1
                    ),
                    Outcome::GivenBack(why) => {
                        tracing::warn!(
                            lambda = %lambda, %trigger, partition, offset,
                            "record to be tried again: {why}"
                        );
                        let wait = held
                            .again_after
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .take()
                            .unwrap_or_else(|| policy.backoff(policy.retries + 1));
                        let mut stop = stop.clone();
                        let stopped = tokio::time::timeout(wait, stop.wait_for(|s| *s)).await;
                        if stopped.is_err() {
                            context.delivered += 1;
                            continue;
                        }
                    }
                    Outcome::Abandoned(why) => tracing::info!(
                        lambda = %lambda, %trigger, partition, offset,
                        "record left uncommitted for the next session: {why}"
                    ),
                }
                return;
            }
        }
    }
}

impl<T> Consumer<T> {
    /// The member's static identity in its group (KIP-345): the worker's
    /// id, the lambda, the entry (`kafka[0]` as `kafka0`, for Kafka's
    /// character set) and a digest of the entry's settings. It is the same
    /// after a restart of this worker, so the restarted member takes its
    /// partitions back without waiting for the broker to drop the killed
    /// one, and it differs for every other worker, lambda and entry. The
    /// digest keeps a changed entry's new member apart from the old one,
    /// which may still be settling its last calls: two live members under
    /// one id would fence one another.
    fn group_instance_id(&self) -> Option<String> {
        let worker = self.settings.worker_id.as_deref()?;
        let entry: String = self
            .name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let settings = fnv1a(format!("{:?}", self.config).as_bytes());
        Some(format!(
            "ol-{worker}.{}.{entry}.{settings:016x}",
            self.lambda
        ))
    }
}

/// FNV-1a, 64 bits: a digest that stays the same from one build to the
/// next (std's hashers promise no such thing).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl<T: CallTarget> Session for Consumer<T> {
    /// One group membership: join, then take records and call until told
    /// to stop (`Ok`) or the client cannot be set up (`Err`). librdkafka
    /// reconnects to brokers by itself; its errors while running are shown
    /// in `/stats` and the log.
    async fn session(&self, stop: &mut watch::Receiver<bool>) -> Result<(), String> {
        let (config, timeout) = (self.config.clone(), self.settings.connect_timeout);
        let instance = self.group_instance_id();
        let client = tokio::task::spawn_blocking(move || connect(&config, timeout, instance))
            .await
            .map_err(|e| format!("connecting: {e}"))??;
        let client = Arc::new(client);
        self.counters.set_state("running");
        let c = &self.config;
        tracing::info!(lambda = %self.lambda, trigger = %self.name, brokers = %c.bootstrap(),
            topic = %c.topic, group = %c.group, "trigger consumer running");

        let lag = tokio::spawn(poll_lag(Arc::clone(&client), Arc::clone(&self.counters)));
        let slots = self.policy.concurrency as usize;
        let calls = Arc::new(Semaphore::new(slots));
        loop {
            let slot = tokio::select! {
                slot = Arc::clone(&calls).acquire_owned() => slot,
                _ = stop.wait_for(|stopped| *stopped) => break,
            };
            let Ok(slot) = slot else {
                break;
            };
            let record = tokio::select! {
                r = client.consumer.recv() => r.map(|r| r.detach()),
                _ = stop.wait_for(|stopped| *stopped) => break,
            };
            let record = match record {
                Ok(record) => record,
                Err(e) => {
                    // Brokers down, a rebalance, a deleted topic: the
                    // client goes on by itself; say so and slow down.
                    let why = format!("receiving from topic {}: {e}", c.topic);
                    tracing::warn!(lambda = %self.lambda, trigger = %self.name, "{why}");
                    self.counters.set_error(&why);
                    drop(slot);
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), stop.wait_for(|s| *s)).await;
                    continue;
                }
            };
            client
                .offsets
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .received(record.partition(), record.offset());
            let work = self.one_record(record, Arc::clone(&client), stop.clone());
            self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
            let counters = Arc::clone(&self.counters);
            tokio::spawn(async move {
                work.await;
                counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                drop(slot);
            });
        }
        lag.abort();
        let _ = lag.await;
        // Every call in flight settles its record, then one commit that
        // waits: a stop loses nothing and repeats nothing it called. The
        // client goes on the blocking pool: closing it leaves the group,
        // a request to the broker.
        let _ = calls.acquire_many(slots as u32).await;
        let committed = tokio::task::spawn_blocking(move || {
            let done = client.commit_all();
            client.consumer.unsubscribe();
            drop(client);
            done
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|done| done);
        if let Err(why) = committed {
            tracing::warn!(lambda = %self.lambda, trigger = %self.name, "{why}");
            self.counters.set_error(&why);
        }
        Ok(())
    }
}

/// The client of a session: a group member and, for dead letters, a
/// producer. Blocking (metadata requests).
fn connect(
    c: &KafkaTrigger,
    timeout: Duration,
    instance: Option<String>,
) -> Result<Client, String> {
    let timeout_ms = timeout.as_millis().to_string();
    let mut common = ClientConfig::new();
    common
        .set("bootstrap.servers", c.bootstrap())
        .set("client.id", "ol-worker")
        .set("socket.timeout.ms", timeout_ms.as_str())
        .set("socket.connection.setup.timeout.ms", timeout_ms.as_str());
    let mut member = common.clone();
    if let Some(instance) = instance {
        member.set("group.instance.id", instance);
    }
    let consumer: StreamConsumer = member
        .set("group.id", c.group.as_str())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("allow.auto.create.topics", "false")
        // Calls, not polls, decide the pace: a member holding
        // `concurrency` slow calls is not polling, and must not be
        // thrown out of the group for it (a dead worker still is, by
        // its missing heartbeats).
        .set("max.poll.interval.ms", "86400000")
        .set("queued.max.messages.kbytes", PREFETCH_KIB)
        .create()
        .map_err(|e| format!("creating the Kafka consumer: {e}"))?;
    let metadata = consumer
        .fetch_metadata(Some(c.topic.as_str()), timeout)
        .map_err(|e| format!("brokers {}: {e}", c.bootstrap()))?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == c.topic.as_str());
    match topic {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {}
        Some(t) if t.error().is_some() => {
            return Err(format!("topic {}: {:?}", c.topic, t.error()));
        }
        _ => return Err(format!("topic {} does not exist", c.topic)),
    }
    consumer
        .subscribe(&[c.topic.as_str()])
        .map_err(|e| format!("subscribing to {}: {e}", c.topic))?;
    let producer = match &c.dead_letter {
        None => None,
        Some(_) => Some(
            common
                .set("acks", "all")
                .set("enable.idempotence", "false")
                .set("message.timeout.ms", "30000")
                .create::<FutureProducer>()
                .map_err(|e| format!("creating the dead-letter producer: {e}"))?,
        ),
    };
    Ok(Client {
        consumer,
        producer,
        offsets: Mutex::new(Offsets::default()),
        topic: c.topic.as_str().to_owned(),
        timeout,
    })
}

/// Reads the group's lag every [`LAG_EVERY`] until aborted.
async fn poll_lag(client: Arc<Client>, counters: Arc<TriggerCounters>) {
    loop {
        let c = Arc::clone(&client);
        if let Ok(Some(lag)) = tokio::task::spawn_blocking(move || c.lag()).await {
            counters.set_lag(lag);
        }
        tokio::time::sleep(LAG_EVERY).await;
    }
}

/// A Kafka record being delivered.
struct Held {
    record: OwnedMessage,
    body: Bytes,
    client: Arc<Client>,
    dead_letter: Option<String>,
    lambda: String,
    trigger: String,
    /// Set when its calls all failed without a dead-letter topic: when to
    /// try it again.
    again_after: Mutex<Option<Duration>>,
}

impl Delivery for Held {
    async fn ack(&self) -> Result<(), String> {
        self.client
            .settle(self.record.partition(), self.record.offset())
    }

    async fn in_progress(&self) -> Result<(), String> {
        // A group member owns its partitions while it heartbeats: nothing
        // to renew per record.
        Ok(())
    }

    async fn give_back(&self, delay: Duration) -> Result<(), String> {
        // Kafka cannot take one record back. Untried at a stop (no delay):
        // left uncommitted, read again by the next session. After failures:
        // tried again here after `delay`.
        if !delay.is_zero() {
            *self
                .again_after
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(delay);
        }
        Ok(())
    }

    async fn dead_letter(&self, error: &str, attempts: u32) -> Result<bool, String> {
        let (Some(topic), Some(producer)) = (&self.dead_letter, &self.client.producer) else {
            return Ok(false);
        };
        let r = &self.record;
        let partition = r.partition().to_string();
        let offset = r.offset().to_string();
        let attempts = attempts.to_string();
        let error = header_value(error);
        let mut headers = r.headers().cloned().unwrap_or_else(OwnedHeaders::new);
        for (key, value) in [
            ("Ol-Error", error.as_str()),
            ("Ol-Lambda", self.lambda.as_str()),
            ("Ol-Trigger", self.trigger.as_str()),
            ("Ol-Attempts", attempts.as_str()),
            ("Ol-Topic", r.topic()),
            ("Ol-Partition", partition.as_str()),
            ("Ol-Offset", offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(&self.body[..])
            .headers(headers);
        if let Some(key) = r.key() {
            record = record.key(key);
        }
        // Stored first (acks=all), committed after: a crash between the
        // two leaves a duplicate dead letter, never a lost record.
        producer
            .send(record, self.client.timeout)
            .await
            .map_err(|(e, _)| format!("producing to {topic}: {e}"))?;
        self.client.settle(r.partition(), r.offset())?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    #[test]
    fn the_settings_digest_is_fnv1a_64() {
        // The published FNV-1a test vectors: the digest must not change
        // between builds, or a restarted worker would join as a stranger.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x85944171f73967e8);
    }
}
