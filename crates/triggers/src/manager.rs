//! [`TriggerManager`]: keeps one consumer running per queue trigger of
//! every lambda in the registry. It reads the registry at start and again
//! every `rescan` (and at once when told a lambda was installed or
//! removed): a new lambda's consumers start, a removed lambda's stop, a
//! changed entry's consumer is stopped and started anew.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use ol_lambda::ol_yaml::{self, KafkaTrigger, NatsTrigger};
use ol_registry::Registry;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::TriggerSettings;
use crate::delivery::CallTarget;
use crate::stats::{TriggerCounters, TriggerStats};
use crate::{kafka, nats};

/// A trigger's identity: its lambda and its entry (`nats[0]`, `kafka[0]`).
type Key = (String, String);

/// One queue trigger's ol.yaml entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TriggerConfig {
    Nats(NatsTrigger),
    Kafka(KafkaTrigger),
}

impl TriggerConfig {
    /// Broker, stream, subject and consumer, as `/stats` shows them (a
    /// Kafka topic is both stream and subject, its group the consumer).
    fn described(&self) -> [String; 4] {
        match self {
            Self::Nats(c) => [
                c.url.to_string(),
                c.stream.to_string(),
                c.subject.to_string(),
                c.durable.to_string(),
            ],
            Self::Kafka(c) => [
                c.bootstrap(),
                c.topic.to_string(),
                c.topic.to_string(),
                c.group.to_string(),
            ],
        }
    }
}

/// A consumer running for one trigger.
struct Running {
    config: TriggerConfig,
    counters: Arc<TriggerCounters>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Every queue trigger's consumer.
pub struct TriggerManager<T> {
    target: Arc<T>,
    registry: Arc<dyn Registry>,
    settings: Arc<TriggerSettings>,
    running: Mutex<BTreeMap<Key, Running>>,
    /// Consumers stopped but maybe still settling their last calls.
    stopping: Mutex<Vec<JoinHandle<()>>>,
    rescan_now: Notify,
    closed: AtomicBool,
}

impl<T: CallTarget> TriggerManager<T> {
    /// A manager calling lambdas through `target` for the triggers of the
    /// lambdas in `registry`. Nothing runs until [`Self::start`].
    pub fn new(
        target: Arc<T>,
        registry: Arc<dyn Registry>,
        settings: TriggerSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            target,
            registry,
            settings: Arc::new(settings),
            running: Mutex::new(BTreeMap::new()),
            stopping: Mutex::new(Vec::new()),
            rescan_now: Notify::new(),
            closed: AtomicBool::new(false),
        })
    }

    /// Starts watching the registry (inside the async runtime); it stops
    /// when the manager is shut down or dropped. With no broker allowed,
    /// no trigger could run: the registry is not read for them at all (a
    /// remote registry would pay a listing and a request per lambda at
    /// every rescan for nothing).
    pub fn start(self: &Arc<Self>) {
        if self.settings.allowed_brokers.is_empty() {
            tracing::info!(
                "queue triggers are off: config.json triggers.allowed_brokers lists no broker"
            );
            return;
        }
        tokio::spawn(watch_registry(Arc::downgrade(self)));
    }

    /// Reads the registry again now (a lambda was installed or removed).
    pub fn rescan_soon(&self) {
        self.rescan_now.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Brings the running consumers in line with the registry: one read of
    /// every lambda's ol.yaml.
    pub async fn rescan(&self) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let registry = Arc::clone(&self.registry);
        let Ok(Some(wanted)) = tokio::task::spawn_blocking(move || wanted(&*registry)).await else {
            // The registry cannot be listed (a remote one is down): keep
            // what runs rather than stop everything.
            return;
        };
        let mut running = self.lock();
        let stale: Vec<Key> = running
            .iter()
            .filter(|((lambda, name), r)| match wanted.get(lambda) {
                Some(Known::Triggers(list)) => list.get(name) != Some(&r.config),
                Some(Known::Unreadable) => false,
                None => true,
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some(r) = running.remove(&key) {
                tracing::info!(lambda = %key.0, trigger = %key.1, "trigger stopped");
                let _ = r.stop.send(true);
                self.stopping
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(r.task);
            }
        }
        for (lambda, known) in wanted {
            let Known::Triggers(list) = known else {
                continue;
            };
            for (name, config) in list {
                let key = (lambda.clone(), name.clone());
                if running.contains_key(&key) {
                    continue;
                }
                running.insert(key, self.spawn(&lambda, name, config));
            }
        }
    }

    fn spawn(&self, lambda: &str, name: String, config: TriggerConfig) -> Running {
        let counters = Arc::new(TriggerCounters::default());
        counters.set_state("starting");
        let mut policy = match &config {
            TriggerConfig::Nats(c) => c.delivery(),
            TriggerConfig::Kafka(c) => c.delivery(),
        };
        policy.concurrency = policy.concurrency.min(self.settings.max_concurrency).max(1);
        policy.retries = policy.retries.min(self.settings.max_retries);
        let (stop, stopped) = watch::channel(false);
        let (target, lambda) = (Arc::clone(&self.target), lambda.to_owned());
        let (settings, shared) = (Arc::clone(&self.settings), Arc::clone(&counters));
        let task = match &config {
            TriggerConfig::Nats(c) => tokio::spawn(
                nats::Consumer {
                    target,
                    lambda,
                    name,
                    config: c.clone(),
                    policy,
                    settings,
                    counters: shared,
                }
                .run(stopped),
            ),
            TriggerConfig::Kafka(c) => tokio::spawn(
                kafka::Consumer {
                    target,
                    lambda,
                    name,
                    config: c.clone(),
                    policy,
                    settings,
                    counters: shared,
                }
                .run(stopped),
            ),
        };
        Running {
            config,
            counters,
            stop,
            task,
        }
    }

    /// Every running trigger, by lambda and entry.
    pub fn stats(&self) -> Vec<TriggerStats> {
        self.lock()
            .iter()
            .map(|((lambda, trigger), r)| {
                let c = &r.counters;
                let [broker, stream, subject, consumer] = r.config.described();
                TriggerStats {
                    lambda: lambda.clone(),
                    trigger: trigger.clone(),
                    broker,
                    stream,
                    subject,
                    consumer,
                    state: (*c.state.lock().unwrap_or_else(PoisonError::into_inner)).to_owned(),
                    lag: *c.lag.lock().unwrap_or_else(PoisonError::into_inner),
                    in_flight: c.in_flight.load(Ordering::Relaxed),
                    delivered: c.delivered.get(),
                    failed: c.failed.get(),
                    retried: c.retried.get(),
                    dead_lettered: c.dead_lettered.get(),
                    last_error: c
                        .last_error
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone(),
                }
            })
            .collect()
    }

    /// Stops every consumer and waits up to `grace` for their calls in
    /// flight to settle their messages (those still unsettled then are
    /// redelivered by the broker after its ack wait). Returns how many
    /// consumers had not finished.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.closed.store(true, Ordering::Release);
        self.rescan_now.notify_one();
        let mut tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.lock())
            .into_values()
            .map(|r| {
                let _ = r.stop.send(true);
                r.task
            })
            .collect();
        tasks.append(&mut self.stopping.lock().unwrap_or_else(PoisonError::into_inner));
        let deadline = tokio::time::Instant::now() + grace;
        let mut left = 0;
        for task in tasks {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                left += 1;
            }
        }
        left
    }
}

/// What the registry says of one lambda.
enum Known {
    /// Its queue triggers by entry name (none when its ol.yaml is invalid:
    /// it cannot be called anyway).
    Triggers(BTreeMap<String, TriggerConfig>),
    /// Its code could not be fetched now: keep what runs for it.
    Unreadable,
}

/// Every lambda's queue triggers; `None` when the registry cannot be
/// listed. Blocking.
fn wanted(registry: &dyn Registry) -> Option<HashMap<String, Known>> {
    let names = registry.list().ok()?;
    let mut wanted = HashMap::with_capacity(names.len());
    for name in names {
        let known = match registry.fetch(&name) {
            Ok(Some(code)) => match ol_yaml::load(&code.dir) {
                Ok(config) => {
                    let nats = config.triggers.nats.into_iter().enumerate();
                    let kafka = config.triggers.kafka.into_iter().enumerate();
                    Known::Triggers(
                        nats.map(|(i, t)| (format!("nats[{i}]"), TriggerConfig::Nats(t)))
                            .chain(
                                kafka
                                    .map(|(i, t)| (format!("kafka[{i}]"), TriggerConfig::Kafka(t))),
                            )
                            .collect(),
                    )
                }
                Err(e) => {
                    tracing::warn!(lambda = %name, "no triggers: {e}");
                    Known::Triggers(BTreeMap::new())
                }
            },
            Ok(None) => continue,
            Err(_) => Known::Unreadable,
        };
        wanted.insert(name, known);
    }
    Some(wanted)
}

/// Rescans at start, every `rescan` and when asked, until the manager is
/// shut down or dropped.
async fn watch_registry<T: CallTarget>(manager: Weak<TriggerManager<T>>) {
    loop {
        let Some(m) = manager.upgrade() else {
            return;
        };
        if m.closed.load(Ordering::Acquire) {
            return;
        }
        m.rescan().await;
        let every = m.settings.rescan;
        // `shutdown` wakes this wait too, and the loop then ends.
        let wake = m.rescan_now.notified();
        let _ = tokio::time::timeout(every, wake).await;
    }
}
