//! A real broker for tests (feature `testing`): `nats-server -js` on a
//! free loopback port with its own store, killed when dropped, so a test
//! that fails leaves nothing running; and helpers to fill its streams.

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
    /// Starts one and waits (up to 10 s) until it listens. Panics when
    /// `nats-server` is not installed (`apt-get install nats-server`;
    /// `.ci/run` installs it).
    pub fn start() -> Self {
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
        let server = Self {
            child,
            port,
            _store: store,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
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
