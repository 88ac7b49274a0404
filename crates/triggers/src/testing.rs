//! Real brokers for tests (feature `testing`): `nats-server -js` on a
//! free loopback port with its own store, killed when dropped, so a test
//! that fails leaves nothing running, and `tansu` (Kafka) likewise; and
//! helpers to fill their streams and topics.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

/// A `nats-server -js` killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts one and waits (up to 10 s) until it answers. Panics when
    /// `nats-server` is not installed (`apt-get install nats-server`;
    /// `.ci/run` installs it). The free port is found by binding port 0
    /// and letting go, so another process (a parallel test's worker) may
    /// take it first: then this server exits and one more port is tried.
    pub fn start() -> Self {
        for _ in 0..5 {
            if let Some(server) = Self::start_once() {
                return server;
            }
        }
        panic!("nats-server did not start on any of 5 free ports");
    }

    /// One try: `None` when the server exited (its port was taken).
    fn start_once() -> Option<Self> {
        let store = tempfile::tempdir().expect("store dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (apt-get install nats-server; .ci/run does)");
        let mut server = Self {
            child,
            port,
            _store: store,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if server.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            // A NATS server greets every client with INFO: whatever else
            // listens on the port does not.
            if greets_as_nats(port) {
                return Some(server);
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not answer on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, as config.json `triggers.allowed_brokers` lists it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether what listens on 127.0.0.1:`port` greets a client as a NATS
/// server does (`INFO {...}`).
fn greets_as_nats(port: u16) -> bool {
    use std::io::Read;
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut greeting = [0u8; 5];
    stream.read_exact(&mut greeting).is_ok() && &greeting == b"INFO "
}

/// A JetStream context on `server` with stream `T` (subjects `t.>`) and a
/// dead-letter stream `DEAD` (`dead.>`).
pub async fn jetstream_with_streams(server: &NatsServer) -> jetstream::Context {
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client);
    for (name, subjects) in [("T", "t.>"), ("DEAD", "dead.>")] {
        js.create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subjects.into()],
            ..Default::default()
        })
        .await
        .expect("create stream");
    }
    js
}

/// Publishes bodies `from..=to` (the numbers as text) on `subject`, each
/// with header `id` (the same number), and waits until the stream stored
/// each.
pub async fn publish(js: &jetstream::Context, subject: &str, from: u64, to: u64) {
    let mut acks = Vec::new();
    for n in from..=to {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("id", n.to_string());
        acks.push(
            js.publish_with_headers(subject.to_owned(), headers, n.to_string().into())
                .await
                .expect("publish"),
        );
    }
    for ack in acks {
        ack.await.expect("stored");
    }
}

/// Where the tests look for `tansu` (the Kafka broker, 0.6.0): env
/// `OL_TANSU`, else the path `.ci/run` builds it at.
pub const TANSU_DEFAULT: &str = "/var/tmp/ol-ci-tools/tansu/bin/tansu";

/// A `tansu` Kafka broker (in memory) on a free loopback port, killed on
/// drop.
#[derive(Debug)]
pub struct TansuBroker {
    child: Child,
    port: u16,
}

impl TansuBroker {
    /// Starts one and waits (up to 20 s) until it answers metadata.
    /// `None`, with the reason printed, when there is no `tansu` binary
    /// and env `OL_REQUIRE_TANSU` is unset; with it set (CI), a missing
    /// binary fails the test.
    pub fn start_or_skip(test: &str) -> Option<Self> {
        let binary = std::env::var("OL_TANSU").unwrap_or_else(|_| TANSU_DEFAULT.to_owned());
        if !std::path::Path::new(&binary).exists() {
            assert!(
                std::env::var_os("OL_REQUIRE_TANSU").is_none(),
                "OL_REQUIRE_TANSU is set but there is no tansu at {binary} (set OL_TANSU; .ci/run builds it)"
            );
            eprintln!("skipping {test}: no tansu at {binary} (set OL_TANSU, or run .ci/run)");
            return None;
        }
        // As for nats-server: a port another process took first makes
        // this broker exit; then one more port is tried.
        for _ in 0..5 {
            if let Some(broker) = Self::start_once(&binary) {
                return Some(broker);
            }
        }
        panic!("tansu did not start on any of 5 free ports");
    }

    /// One try: `None` when the broker exited (its port was taken).
    fn start_once(binary: &str) -> Option<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let mut broker = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if broker.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Listening, and still ours a moment later.
                std::thread::sleep(Duration::from_millis(100));
                if broker.child.try_wait().ok().flatten().is_some() {
                    return None;
                }
                return Some(broker);
            }
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1:PORT`: the ol.yaml broker and config.json's allowed one.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates `topic` with `partitions` partitions.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            self.client_config().create().expect("admin client");
        let done = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .expect("create topics");
        for r in done {
            r.expect("topic created");
        }
    }

    /// Produces bodies `from..=to` (the numbers as text) to `topic`, each
    /// with key and header `id` the same number, and waits until each is
    /// stored.
    pub async fn produce(&self, topic: &str, from: u64, to: u64) {
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = self
            .client_config()
            .set("acks", "all")
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        let texts: Vec<String> = (from..=to).map(|n| n.to_string()).collect();
        let sends: Vec<_> = texts
            .iter()
            .map(|text| {
                let headers = OwnedHeaders::new().insert(Header {
                    key: "id",
                    value: Some(text.as_str()),
                });
                let record = FutureRecord::to(topic)
                    .key(text.as_str())
                    .payload(text.as_str())
                    .headers(headers);
                producer.send(record, Duration::from_secs(10))
            })
            .collect();
        for send in sends {
            send.await.map_err(|(e, _)| e).expect("stored");
        }
    }

    /// The first `count` records of `topic` (fewer if they do not come
    /// `within`), as (body, headers), read without a group. (Not up to
    /// the high watermark: reading a tansu 0.6 topic that way once got
    /// 8 of its 10 records.)
    pub fn read(
        &self,
        topic: &str,
        count: usize,
        within: Duration,
    ) -> Vec<(String, Vec<(String, String)>)> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Headers;
        use rdkafka::{Message, Offset, TopicPartitionList};
        let consumer: BaseConsumer = self
            .client_config()
            .set("group.id", "ol-test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("reader");
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let mut list = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                list.add_partition_offset(topic, p.id(), Offset::Beginning)
                    .expect("partition");
            }
        }
        consumer.assign(&list).expect("assign");
        let mut out = Vec::new();
        let deadline = Instant::now() + within;
        while out.len() < count && Instant::now() < deadline {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let body = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            let v = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                            (h.key.to_owned(), v.into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push((body, headers));
        }
        out
    }

    fn client_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", self.address());
        c
    }
}

impl Drop for TansuBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
