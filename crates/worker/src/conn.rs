//! How the HTTP server holds connections, whatever they carry, so that slow
//! or idle clients cannot hold the worker's descriptors (config.json
//! `http`). A connection is HTTP/1.1 or, when it opens with HTTP/2's
//! preface, h2c (gRPC's transport, [`crate::grpc`]); the limits are the
//! same for both:
//!
//! - At most `max_connections` are served at once. Past that the worker
//!   stops accepting until one ends: new clients wait in the kernel's accept
//!   queue (and are served as soon as a slot frees) instead of being reset,
//!   and the worker never spends a descriptor on a connection it cannot
//!   serve.
//! - A connection waiting for a request is closed after `idle_timeout`
//!   without a byte (the keep-alive idle timeout, which hyper does not have).
//! - Once the first byte of a request arrives, its head (request line and
//!   headers) must be complete within `header_timeout`. On HTTP/2, where
//!   bytes also flow between requests (pings, window updates), this holds
//!   for the connection's first request; after it, a connection without a
//!   request for `idle_timeout` is closed whatever it sends.
//! - A request body that stops arriving for `idle_timeout` fails the request
//!   ([`StallLimited`], 408).
//!
//! A watchdog beside each connection enforces the first two. It costs a
//! request nothing but a few uncontended locks: nobody wakes it; it wakes
//! itself at each deadline, and at least every `header_timeout` (how late
//! it may notice that a request's head has begun). (hyper's own header
//! timer is not used: it starts as soon as a connection waits for a
//! request, so it cannot tell idle time from a slow head, and it arms a
//! timer for every request.) While a request is being served (on HTTP/2,
//! any of its streams) no deadline runs: the lambda's `runtime_sec` bounds
//! that. An HTTP/2 connection serves at most [`MAX_STREAMS`] requests at
//! once, so a connection slot cannot hold unbounded work.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

/// Most requests (streams) an HTTP/2 connection has in flight at once; a
/// client that wants more opens more connections, within `max_connections`.
pub const MAX_STREAMS: u32 = 64;

/// The connection limits (config.json `http`, as durations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    /// Longest from a request's first byte to the end of its head.
    pub header_timeout: Duration,
    /// Longest a connection may wait for a request without a byte, and a
    /// request body may stall.
    pub idle_timeout: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
}

/// Accepts connections on `listener` and serves each with `handler` within
/// `limits` until `shutdown` completes, then lets open requests finish for
/// up to `grace`.
pub(crate) async fn serve_connections<H, Fut, B>(
    listener: TcpListener,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .header_read_timeout(None)
        .keep_alive(true)
        .http2()
        .max_concurrent_streams(MAX_STREAMS);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let limits = Arc::new(limits);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A slot first: past the cap, connections wait in the accept queue.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of fds and similar: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let watch = Arc::new(ConnWatch::new());
        let io = TokioIo::new(WatchedIo {
            inner: stream,
            watch: Arc::clone(&watch),
        });
        let service = {
            let watch = Arc::clone(&watch);
            let handler = handler.clone();
            service_fn(move |req: Request<Incoming>| {
                let serving = watch.serving(req.version() == http::Version::HTTP_2);
                let answer = handler(req);
                async move {
                    let response = answer.await;
                    drop(serving);
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let conn = graceful.watch(builder.serve_connection(io, service).into_owned());
        let limits = Arc::clone(&limits);
        tokio::spawn(async move {
            tokio::select! {
                ended = conn => if let Err(e) = ended {
                    tracing::debug!("connection ended: {e}");
                },
                why = watch.expired(&limits) => tracing::debug!("connection closed: {why}"),
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open connections did not finish within {grace:?}");
    }
}

/// Where a connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request; nothing of it has arrived.
    Idle,
    /// Part of a request's head has arrived.
    Head,
    /// A request is being served (body, lambda, response).
    Serving,
}

/// Where a connection is, as its watchdog sees it.
#[derive(Debug, Clone, Copy)]
struct WatchState {
    phase: Phase,
    /// Since when it is in `phase`.
    since: Instant,
    /// Requests being served (more than one only on HTTP/2).
    serving: usize,
    /// HTTP/2: bytes between requests do not begin a request head.
    multiplexed: bool,
}

/// A connection's phase, shared by its IO, its services and its watchdog
/// (all in the connection's tasks; the lock is held for a few loads).
struct ConnWatch {
    state: Mutex<WatchState>,
}

impl ConnWatch {
    fn new() -> Self {
        Self {
            state: Mutex::new(WatchState {
                phase: Phase::Idle,
                since: Instant::now(),
                serving: 0,
                multiplexed: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes arrived: an idle HTTP/1.1 connection has started a request.
    fn received(&self) {
        let mut state = self.lock();
        if state.phase == Phase::Idle && !state.multiplexed {
            state.phase = Phase::Head;
            state.since = Instant::now();
        }
    }

    /// Marks a request (on HTTP/2 when `multiplexed`) as being served
    /// until the guard is dropped.
    fn serving(self: &Arc<Self>, multiplexed: bool) -> Serving {
        let mut state = self.lock();
        state.serving += 1;
        state.multiplexed |= multiplexed;
        state.phase = Phase::Serving;
        state.since = Instant::now();
        drop(state);
        Serving(Arc::clone(self))
    }

    /// A request was answered: idle from now once none is left.
    fn served(&self) {
        let mut state = self.lock();
        state.serving = state.serving.saturating_sub(1);
        if state.serving == 0 {
            state.phase = Phase::Idle;
            state.since = Instant::now();
        }
    }

    /// When the connection is to be closed, as things stand.
    fn deadline(&self, limits: &ConnLimits) -> Option<(Instant, &'static str)> {
        let WatchState { phase, since, .. } = *self.lock();
        match phase {
            Phase::Idle => Some((
                since + limits.idle_timeout,
                "no request within http.idle_timeout_ms",
            )),
            Phase::Head => Some((
                since + limits.header_timeout,
                "request head incomplete after http.header_timeout_ms",
            )),
            Phase::Serving => None,
        }
    }

    /// Completes (saying why) once the connection has waited on its client
    /// past a limit.
    async fn expired(&self, limits: &ConnLimits) -> &'static str {
        // A head that begins while the watchdog sleeps is noticed within
        // this, when its own deadline is due at the latest.
        let step = limits.header_timeout.min(limits.idle_timeout);
        loop {
            let now = Instant::now();
            let wake = match self.deadline(limits) {
                Some((at, why)) if at <= now => return why,
                Some((at, _)) => at.min(now + step),
                None => now + step,
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// While alive, the connection is serving a request.
struct Serving(Arc<ConnWatch>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.served();
    }
}

/// A TCP stream that tells its [`ConnWatch`] when bytes arrive.
struct WatchedIo {
    inner: TcpStream,
    watch: Arc<ConnWatch>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.received();
        }
        polled
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request body the routes can read: hyper's `Incoming` when serving,
/// any in-memory body in unit tests.
pub(crate) trait RequestBody:
    HttpBody<Data = bytes::Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + Unpin
    + 'static
{
}

impl<B> RequestBody for B
where
    B: HttpBody<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
}

/// A request body stopped arriving.
#[derive(Debug, thiserror::Error)]
#[error("the request body stopped arriving for {0:?} (http.idle_timeout_ms)")]
pub struct BodyStalled(pub Duration);

/// A request body that fails with [`BodyStalled`] when no part of it
/// arrives for `stall`.
pub(crate) struct StallLimited<B> {
    inner: B,
    stall: Duration,
    /// Made on the first wait only: a body that arrives with its head
    /// (most do) never needs it.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> StallLimited<B> {
    pub(crate) fn new(inner: B, stall: Duration) -> Self {
        Self {
            inner,
            stall,
            timer: None,
        }
    }
}

impl<B> HttpBody for StallLimited<B>
where
    B: HttpBody + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(timer) = &mut this.timer {
                    timer.as_mut().reset(Instant::now() + this.stall);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let stall = this.stall;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled(stall))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

    /// A server answering "ok" (or, for `/body`, the request body's
    /// length), and its address; it stops when the sender is dropped.
    async fn server(limits: ConnLimits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stall = limits.idle_timeout;
        tokio::spawn(serve_connections(
            listener,
            limits,
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(1),
            move |req: Request<Incoming>| async move {
                if req.uri().path() == "/slow" {
                    tokio::time::sleep(Duration::from_millis(800)).await;
                }
                let text = if req.uri().path() == "/body" {
                    match StallLimited::new(req.into_body(), stall).collect().await {
                        Ok(body) => body.to_bytes().len().to_string(),
                        Err(e) if e.downcast_ref::<BodyStalled>().is_some() => "stalled".into(),
                        Err(e) => format!("error: {e}"),
                    }
                } else {
                    "ok".into()
                };
                Response::new(Full::new(Bytes::from(text)))
            },
        ));
        (addr, stop)
    }

    fn limits(header_ms: u64, idle_ms: u64, max_connections: usize) -> ConnLimits {
        ConnLimits {
            header_timeout: Duration::from_millis(header_ms),
            idle_timeout: Duration::from_millis(idle_ms),
            max_connections,
        }
    }

    /// Sends `request` on `conn` and reads one whole (small) response's
    /// body; fails the test rather than hang when none comes.
    async fn exchange(conn: &mut TcpStream, request: &[u8]) -> String {
        tokio::time::timeout(Duration::from_secs(30), exchange_now(conn, request))
            .await
            .expect("no response within 30 s")
    }

    async fn exchange_now(conn: &mut TcpStream, request: &[u8]) -> String {
        conn.write_all(request).await.expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = conn.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("content-length");
                if body.len() >= len {
                    return body.to_string();
                }
            }
        }
    }

    /// Whether the server closes `conn` (EOF or reset) within `within`.
    async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(within, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }

    #[tokio::test]
    async fn stalled_request_heads_are_closed_and_others_served() {
        let (addr, _stop) = server(limits(200, 60_000, 64)).await;
        let mut stalled = Vec::new();
        for _ in 0..20 {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
                .await
                .expect("write");
            stalled.push(c);
        }
        let mut fine = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(exchange(&mut fine, GET).await, "ok");
        for c in &mut stalled {
            assert!(closed_within(c, Duration::from_secs(30)).await);
        }
    }

    #[tokio::test]
    async fn keep_alive_outlives_the_header_timeout_but_not_the_idle_one() {
        let (addr, _stop) = server(limits(100, 60_000, 64)).await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(exchange(&mut c, GET).await, "ok");
        // Idle for several header timeouts: a keep-alive wait, not a head.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(exchange(&mut c, GET).await, "ok");

        let (addr, _stop) = server(limits(60_000, 200, 64)).await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(exchange(&mut c, GET).await, "ok");
        assert!(closed_within(&mut c, Duration::from_secs(30)).await);
        // A connection that never sends anything goes the same way.
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        assert!(closed_within(&mut silent, Duration::from_secs(30)).await);
    }

    #[tokio::test]
    async fn connections_past_the_cap_wait_for_a_free_slot() {
        let (addr, _stop) = server(limits(300, 300, 2)).await;
        let mut holders = Vec::new();
        for _ in 0..2 {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(b"GET").await.expect("write");
            holders.push(c);
        }
        // Connected (the kernel queues it) but not served until a holder
        // times out; then it is.
        let mut waiting = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(exchange(&mut waiting, GET).await, "ok");
        for c in &mut holders {
            assert!(closed_within(c, Duration::from_secs(30)).await);
        }
    }

    #[tokio::test]
    async fn an_http2_connection_is_busy_while_any_stream_is_and_idle_after() {
        use hyper_util::rt::TokioExecutor;
        let (addr, _stop) = server(limits(100, 300, 64)).await;
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2c handshake");
        let driver = tokio::spawn(conn);
        let get = |path: &'static str| {
            let mut sender = sender.clone();
            async move {
                let req = Request::get(format!("http://x{path}"))
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let resp = sender.send_request(req).await?;
                let body = resp.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>(String::from_utf8_lossy(&body).into_owned())
            }
        };
        // The quick call ends long before the slow one; the slow one
        // outlives the idle timeout: the connection stays open for it.
        let (slow, fast) = tokio::join!(get("/slow"), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            get("/fast").await
        });
        assert_eq!(fast.expect("fast"), "ok");
        assert_eq!(slow.expect("slow outlived idle_timeout"), "ok");
        // With nothing in flight, the idle timeout closes it.
        tokio::time::timeout(Duration::from_secs(30), driver)
            .await
            .expect("closed when idle")
            .expect("driver task")
            .ok();
    }

    #[tokio::test]
    async fn stalled_body_fails_the_request() {
        let (addr, _stop) = server(limits(60_000, 200, 64)).await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        let head = b"POST /body HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc";
        assert_eq!(exchange(&mut c, head).await, "stalled");
        let mut c = TcpStream::connect(addr).await.expect("connect");
        let whole = b"POST /body HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc";
        assert_eq!(exchange(&mut c, whole).await, "3");
    }
}
