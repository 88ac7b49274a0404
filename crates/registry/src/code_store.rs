//! The code store: the S3 API over a local directory (s3s, with s3s-fs
//! keeping each bucket as a directory and each object as a file), for a
//! cluster that has no S3 of its own (`ol cluster registry`). Workers read
//! it as an [`crate::S3Registry`]; `ol cluster upload` writes it through
//! [`crate::upload`].
//!
//! Every request must be signed (AWS SigV4) with the store's one access
//! key and secret key: a wrong or missing signature gets 403 and changes
//! nothing. Whoever holds the keys may write any lambda (registry writers
//! are trusted, docs/security.md), so the keys are the store's whole
//! protection; serve it plain only on a network you trust (TLS belongs in
//! front of it).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::bridge::Bridge;

/// The bucket a store holds unless told otherwise (workers then use
/// `registry: s3://lambdas/`).
pub const DEFAULT_BUCKET: &str = "lambdas";
/// A request's head must arrive this fast (slow clients hold connections).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long requests under way may finish once the store is stopped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What a store serves and who may use it. `Debug` never shows the secret.
#[derive(Clone)]
pub struct StoreConfig {
    /// The directory holding the buckets (created if missing).
    pub root: PathBuf,
    /// Where to listen (`0.0.0.0:9000`; port 0 picks a free one).
    pub bind: SocketAddr,
    /// The bucket to create under `root` ([`DEFAULT_BUCKET`]); clients with
    /// the keys may create others.
    pub bucket: String,
    /// The access key clients sign with.
    pub access_key: String,
    /// The secret key clients sign with.
    pub secret_key: String,
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("root", &self.root)
            .field("bind", &self.bind)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

/// Why a store cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A value of the [`StoreConfig`] can never work.
    #[error("code store: {0}")]
    Config(String),
    /// The directory cannot be made or opened.
    #[error("code store: cannot use {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The address cannot be bound.
    #[error("code store: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The async runtime or signal handlers cannot be set up.
    #[error("code store: cannot start: {0}")]
    Start(std::io::Error),
}

/// A running code store; it stops with [`CodeStore::stop`] or when
/// dropped.
pub struct CodeStore {
    addr: SocketAddr,
    requests: Arc<RequestCounts>,
    stop: Option<oneshot::Sender<()>>,
    stopped: Option<mpsc::Receiver<()>>,
    /// Last: the runtime goes after the server has stopped.
    bridge: Bridge,
}

impl fmt::Debug for CodeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeStore")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl CodeStore {
    /// Creates `root/bucket`, binds `bind` and serves until stopped, on
    /// threads of its own; returns once it listens. Blocks only for that.
    pub fn start(config: StoreConfig) -> Result<Self, StoreError> {
        if config.access_key.is_empty() || config.secret_key.is_empty() {
            return Err(StoreError::Config(
                "the access key and the secret key must not be empty".into(),
            ));
        }
        crate::S3Config::from_url(&format!("s3://{}", config.bucket))
            .map_err(|e| StoreError::Config(e.message))?;
        let bucket_dir = config.root.join(&config.bucket);
        std::fs::create_dir_all(&bucket_dir).map_err(|source| StoreError::Io {
            path: bucket_dir,
            source,
        })?;
        let files = s3s_fs::FileSystem::new(&config.root).map_err(|e| StoreError::Io {
            path: config.root.clone(),
            // s3s-fs's error has no Display.
            source: std::io::Error::other(format!("{e:?}")),
        })?;
        let mut builder = S3ServiceBuilder::new(files);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(
            config.access_key.clone(),
            config.secret_key.clone(),
        ));
        let requests = Arc::new(RequestCounts::default());
        let service = Counted {
            s3: builder.build(),
            requests: Arc::clone(&requests),
        };
        // Two threads: s3s-fs does its file I/O on the blocking pool.
        let bridge = Bridge::new("ol-code-store", 2).map_err(StoreError::Start)?;
        let bind = config.bind;
        let listener = bridge
            .run(async move { TcpListener::bind(bind).await })
            .ok_or_else(|| StoreError::Start(std::io::Error::other("the runtime stopped")))?
            .map_err(|source| StoreError::Bind { addr: bind, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StoreError::Bind { addr: bind, source })?;
        let (stop, stop_rx) = oneshot::channel();
        let (stopped_tx, stopped) = mpsc::sync_channel(1);
        bridge.spawn(async move {
            serve(listener, service, stop_rx).await;
            let _ = stopped_tx.send(());
        });
        tracing::info!(%addr, root = %config.root.display(), bucket = %config.bucket, "code store listening");
        Ok(Self {
            addr,
            requests,
            stop: Some(stop),
            stopped: Some(stopped),
            bridge,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received so far, by HTTP method (`HEAD`, `GET`, `PUT`...),
    /// whatever their outcome; a `GET` that lists a bucket (what a
    /// registry's `list` sends, e.g. the cron scheduler's at every whole
    /// minute) counts as `LIST`, so `GET` counts object downloads alone.
    pub fn requests(&self) -> BTreeMap<String, u64> {
        self.requests.snapshot()
    }

    /// Blocks until SIGTERM or SIGINT, then stops (`ol cluster registry`
    /// in the foreground).
    pub fn serve_until_signal(self) -> Result<(), StoreError> {
        use tokio::signal::unix::{SignalKind, signal};
        let waited = self.bridge.run(async {
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping the code store"),
                _ = int.recv() => tracing::info!("SIGINT: stopping the code store"),
            }
            Ok(())
        });
        self.stop();
        match waited {
            Some(result) => result.map_err(StoreError::Start),
            None => Ok(()),
        }
    }

    /// Stops listening, lets requests under way finish (a few seconds at
    /// most) and closes every connection.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.recv_timeout(SHUTDOWN_GRACE + Duration::from_secs(1));
        }
    }
}

impl Drop for CodeStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Accepts connections until `stop`, then lets them finish (up to
/// [`SHUTDOWN_GRACE`]).
async fn serve(listener: TcpListener, service: Counted, mut stop: oneshot::Receiver<()>) {
    let graceful = GracefulShutdown::new();
    loop {
        let stream: TcpStream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, typically: let some close.
                    tracing::warn!("code store: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT);
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("code store connection: {e}");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("code store: requests still under way after the grace period; dropped");
        }
    }
    tracing::info!("code store stopped");
}

/// What [`CodeStore::requests`] counts a request as: its method, or `LIST`
/// for a `GET` of a bucket (path-style: no key after the bucket).
fn request_kind<'a>(method: &'a http::Method, uri: &http::Uri) -> &'a str {
    let bucket_only = !uri.path().trim_matches('/').contains('/');
    if method == http::Method::GET && bucket_only {
        "LIST"
    } else {
        method.as_str()
    }
}

/// Requests by method.
#[derive(Debug, Default)]
struct RequestCounts(Mutex<BTreeMap<String, u64>>);

impl RequestCounts {
    fn record(&self, method: &str) {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.entry(method.to_string()).or_default() += 1;
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The S3 service, counting requests as they arrive.
#[derive(Clone)]
struct Counted {
    s3: S3Service,
    requests: Arc<RequestCounts>,
}

impl Service<http::Request<Incoming>> for Counted {
    type Response = <S3Service as Service<http::Request<Incoming>>>::Response;
    type Error = <S3Service as Service<http::Request<Incoming>>>::Error;
    type Future = <S3Service as Service<http::Request<Incoming>>>::Future;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        self.requests.record(request_kind(req.method(), req.uri()));
        tracing::debug!(method = %req.method(), uri = %req.uri(), "code store request");
        Service::call(&self.s3, req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_are_counted_apart_from_object_downloads() {
        let kind = |method: http::Method, uri: &str| {
            request_kind(&method, &uri.parse().expect("uri")).to_string()
        };
        assert_eq!(
            kind(http::Method::GET, "/lambdas?list-type=2&prefix=e2e/"),
            "LIST"
        );
        assert_eq!(kind(http::Method::GET, "/lambdas/"), "LIST");
        assert_eq!(kind(http::Method::GET, "/"), "LIST");
        assert_eq!(kind(http::Method::GET, "/lambdas/e2e/ver.tar.gz"), "GET");
        assert_eq!(kind(http::Method::HEAD, "/lambdas/e2e/ver.tar.gz"), "HEAD");
        assert_eq!(kind(http::Method::PUT, "/lambdas/e2e/ver.tar.gz"), "PUT");
        assert_eq!(kind(http::Method::HEAD, "/lambdas"), "HEAD");
    }
}
