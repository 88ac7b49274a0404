//! Worker side of the worker ↔ runtime protocol (docs/protocol.md): one
//! length-prefixed frame per message over a persistent unix socket.
//!
//! A frame is `meta_len: u32 BE`, `body_len: u32 BE`, the meta as a JSON
//! object, then the raw body. Encoding reuses one buffer per sandbox so the
//! hot path allocates nothing but the response body.
//!
//! The runtime runs hostile code, which can write anything onto its end of
//! the socket: every reader takes the most bytes a frame may hold
//! (`max_frame`, meta and body together) and checks the lengths in the
//! header against it before it reserves or reads anything, so a header
//! claiming 4 GiB costs the worker nothing.

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest meta object either side may send.
pub const MAX_META_BYTES: usize = 1 << 20;
/// Largest body either side may send.
pub const MAX_BODY_BYTES: usize = 1 << 30;
/// Bodies up to this size are copied into the frame buffer and sent with one
/// write; larger ones are written separately to avoid the copy.
const INLINE_BODY_BYTES: usize = 64 * 1024;
const HEADER_BYTES: usize = 8;
/// Least room made in a read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;
/// Most bytes (meta and body) of a frame on a control socket or of a
/// runtime's first frame (ready or load error): these carry no user data.
pub const MAX_CONTROL_FRAME_BYTES: usize = MAX_META_BYTES;

/// One HTTP call of a lambda, as the event layer hands it down.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    /// HTTP method, upper case.
    pub method: String,
    /// What follows `/run/<name>` in the URL; `/` when nothing does.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    /// Request headers, names lower-case, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Bytes,
    /// The call's id (`X-Request-Id`, `ctx.request_id`, its log lines).
    pub request_id: String,
    /// The queue message the call delivers (`ctx.trigger`); `None` for
    /// HTTP and cron calls.
    pub trigger: Option<MessageContext>,
}

/// Where a queue-triggered call's message came from (docs/triggers.md):
/// the request meta's `trigger` object, `ctx.trigger` in the lambda.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MessageContext {
    /// The broker kind: `nats` or `kafka`.
    pub kind: String,
    /// The lambda's trigger it came through: `nats[0]`, ...
    pub name: String,
    /// The JetStream stream (or Kafka topic) it is stored in.
    pub stream: String,
    /// The subject it was published on (or the Kafka topic).
    pub subject: String,
    /// Its partition (Kafka); `None` for NATS.
    pub partition: Option<i32>,
    /// Its position: the stream sequence (NATS) or the offset (Kafka).
    pub sequence: u64,
    /// Its key (Kafka), if any.
    pub key: Option<String>,
    /// Its headers, in the order sent; a name may repeat.
    pub headers: Vec<(String, String)>,
    /// How many times the broker has delivered it, this time included.
    pub delivered: u64,
    /// This call's attempt at it in this delivery, from 1.
    pub attempt: u32,
    /// The Kafka topic (the same as `stream`); absent for NATS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The Kafka offset (the same as `sequence`); absent for NATS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// A lambda's answer to one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Response headers as the lambda set them.
    pub headers: Vec<(String, String)>,
    /// The response body.
    pub body: Bytes,
}

#[derive(Serialize)]
struct RequestMeta<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: &'a [(String, String)],
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    trigger: Option<&'a MessageContext>,
}

/// The meta object of any frame the runtime sends (ready, load error or
/// response); which fields are set says which it is.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
pub struct RuntimeMeta {
    /// `ready` or `load_error` for the first frame; absent on responses.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The runtime's pid, on `ready`.
    pub pid: Option<u32>,
    /// HTTP status of a response.
    pub status: Option<u16>,
    /// Response headers.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// `ExcType: message` when user code raised or failed to load.
    pub error: Option<String>,
    /// Short traceback to go with `error`.
    #[serde(default)]
    pub traceback: String,
}

/// What can go wrong on the wire.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The runtime closed its end (it exited or was killed).
    #[error("the runtime closed the connection")]
    Closed,
    /// Reading or writing the socket failed.
    #[error("i/o error talking to the runtime: {0}")]
    Io(#[from] std::io::Error),
    /// The runtime sent something that is not a valid frame.
    #[error("the runtime sent a malformed frame: {0}")]
    Malformed(String),
    /// The frame header claims more bytes than the reader accepts; nothing
    /// of it was read (the stream is out of step from here on).
    #[error("the runtime sent a frame of {claimed} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Meta and body bytes the header claims.
        claimed: u64,
        /// Most bytes the reader accepts.
        limit: usize,
    },
}

/// Writes `inv` as one request frame, using `buf` as scratch space.
pub async fn write_request<W: AsyncWrite + Unpin>(
    w: &mut W,
    inv: &Invocation,
    buf: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    encode_request_head(inv, buf)?;
    if inv.body.len() <= INLINE_BODY_BYTES {
        buf.extend_from_slice(&inv.body);
        w.write_all(buf).await?;
    } else {
        w.write_all(buf).await?;
        w.write_all(&inv.body).await?;
    }
    Ok(())
}

/// Fills `buf` with the frame header and meta of `inv` (everything but the
/// body).
fn encode_request_head(inv: &Invocation, buf: &mut Vec<u8>) -> Result<(), ProtocolError> {
    if inv.body.len() > MAX_BODY_BYTES {
        return Err(ProtocolError::Malformed(format!(
            "request body of {} bytes is over the {MAX_BODY_BYTES}-byte frame limit",
            inv.body.len()
        )));
    }
    buf.clear();
    buf.extend_from_slice(&[0; HEADER_BYTES]);
    let meta = RequestMeta {
        method: &inv.method,
        path: &inv.path,
        query: &inv.query,
        headers: &inv.headers,
        request_id: &inv.request_id,
        trigger: inv.trigger.as_ref(),
    };
    serde_json::to_writer(&mut *buf, &meta)
        .map_err(|e| ProtocolError::Malformed(format!("cannot encode request meta: {e}")))?;
    let meta_len = buf.len() - HEADER_BYTES;
    if meta_len > MAX_META_BYTES {
        return Err(ProtocolError::Malformed(format!(
            "request headers take {meta_len} bytes, over the {MAX_META_BYTES}-byte limit"
        )));
    }
    // Both lengths were bounded above, so they fit in u32.
    buf[0..4].copy_from_slice(&(meta_len as u32).to_be_bytes());
    buf[4..8].copy_from_slice(&(inv.body.len() as u32).to_be_bytes());
    Ok(())
}

/// Reads one frame from the runtime through `buf`, a read buffer kept per
/// connection: a whole small frame costs one `recv`, not one per part, and
/// the body is handed out without a copy. `Closed` means EOF (before or in
/// the middle of a frame). A frame of more than `max_frame` bytes (meta and
/// body) is [`ProtocolError::TooLarge`], found from its header alone: `buf`
/// never grows past `max_frame` plus one read's worth.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max_frame: usize,
) -> Result<(RuntimeMeta, Bytes), ProtocolError> {
    loop {
        let wanted = if buf.len() >= HEADER_BYTES {
            let header: [u8; HEADER_BYTES] = buf[..HEADER_BYTES]
                .try_into()
                .map_err(|_| ProtocolError::Malformed("short header".into()))?;
            let (meta_len, body_len) = parse_header(&header, max_frame)?;
            let total = HEADER_BYTES + meta_len + body_len;
            if buf.len() >= total {
                let mut frame = buf.split_to(total);
                let meta = parse_meta(&frame[HEADER_BYTES..HEADER_BYTES + meta_len])?;
                let body = frame.split_off(HEADER_BYTES + meta_len).freeze();
                return Ok((meta, body));
            }
            total - buf.len()
        } else {
            READ_CHUNK
        };
        buf.reserve(wanted.max(READ_CHUNK));
        if r.read_buf(buf).await? == 0 {
            return Err(ProtocolError::Closed);
        }
    }
}

/// Blocking twin of [`read_frame`] for control sockets driven from plain
/// threads (the zygote's): frames of at most [`MAX_CONTROL_FRAME_BYTES`].
pub fn read_frame_blocking<R: std::io::Read>(
    r: &mut R,
) -> Result<(RuntimeMeta, Bytes), ProtocolError> {
    read_frame_blocking_limited(r, MAX_CONTROL_FRAME_BYTES)
}

/// [`read_frame_blocking`] with frames of at most `max_frame` bytes (meta
/// and body), checked from the header before anything is allocated.
pub fn read_frame_blocking_limited<R: std::io::Read>(
    r: &mut R,
    max_frame: usize,
) -> Result<(RuntimeMeta, Bytes), ProtocolError> {
    read_frame_blocking_as(r, max_frame)
}

/// [`read_frame_blocking_limited`] for frames whose meta is an `M` (a
/// runtime's side reads requests with it).
pub fn read_frame_blocking_as<M: DeserializeOwned, R: std::io::Read>(
    r: &mut R,
    max_frame: usize,
) -> Result<(M, Bytes), ProtocolError> {
    let closed = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ProtocolError::Closed,
        _ => ProtocolError::Io(e),
    };
    let mut header = [0u8; HEADER_BYTES];
    r.read_exact(&mut header).map_err(closed)?;
    let (meta_len, body_len) = parse_header(&header, max_frame)?;
    let mut meta = vec![0u8; meta_len];
    r.read_exact(&mut meta).map_err(closed)?;
    let meta = parse_meta(&meta)?;
    let mut body = BytesMut::zeroed(body_len);
    r.read_exact(&mut body).map_err(closed)?;
    Ok((meta, body.freeze()))
}

/// Encodes one frame with an empty body around `meta`.
pub fn encode_frame<T: Serialize>(meta: &T) -> Result<Vec<u8>, ProtocolError> {
    encode_frame_with_body(meta, &[])
}

/// Encodes one frame of `meta` and `body` (a runtime's response).
pub fn encode_frame_with_body<T: Serialize>(
    meta: &T,
    body: &[u8],
) -> Result<Vec<u8>, ProtocolError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ProtocolError::Malformed(format!(
            "body of {} bytes is over the {MAX_BODY_BYTES}-byte limit",
            body.len()
        )));
    }
    let mut out = vec![0u8; HEADER_BYTES];
    serde_json::to_writer(&mut out, meta)
        .map_err(|e| ProtocolError::Malformed(format!("cannot encode meta: {e}")))?;
    let meta_len = (out.len() - HEADER_BYTES) as u32;
    out[0..4].copy_from_slice(&meta_len.to_be_bytes());
    // Bounded by MAX_BODY_BYTES above, so it fits in u32.
    out[4..8].copy_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// The meta and body lengths of a frame header, checked against the
/// protocol's limits and against `max_frame` (both lengths together).
fn parse_header(
    header: &[u8; HEADER_BYTES],
    max_frame: usize,
) -> Result<(usize, usize), ProtocolError> {
    let meta_len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let body_len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    // In u64: the sum of two u32 cannot overflow, whatever usize is.
    let claimed = u64::from(meta_len) + u64::from(body_len);
    let limit = max_frame.min(MAX_META_BYTES + MAX_BODY_BYTES);
    if claimed > limit as u64 {
        return Err(ProtocolError::TooLarge { claimed, limit });
    }
    // Both fit in usize now: their sum is at most `max_frame`.
    let (meta_len, body_len) = (meta_len as usize, body_len as usize);
    if meta_len > MAX_META_BYTES {
        return Err(ProtocolError::Malformed(format!(
            "meta of {meta_len} bytes is over the {MAX_META_BYTES}-byte limit"
        )));
    }
    if body_len > MAX_BODY_BYTES {
        return Err(ProtocolError::Malformed(format!(
            "body of {body_len} bytes is over the {MAX_BODY_BYTES}-byte limit"
        )));
    }
    Ok((meta_len, body_len))
}

fn parse_meta<M: DeserializeOwned>(raw: &[u8]) -> Result<M, ProtocolError> {
    serde_json::from_slice(raw)
        .map_err(|e| ProtocolError::Malformed(format!("meta is not the expected JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response limit like the default `limits.max_response_mb`.
    const LIMIT: usize = 6 << 20;

    fn frame(meta: &str, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(meta.as_bytes());
        out.extend_from_slice(body);
        out
    }

    #[tokio::test]
    async fn request_frame_has_exact_layout() {
        let inv = Invocation {
            method: "POST".into(),
            path: "/a/b".into(),
            query: "x=1".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from_static(b"{\"name\": \"Alice\"}"),
            request_id: "0123abcd".into(),
            trigger: None,
        };
        let mut out = Vec::new();
        let mut buf = Vec::new();
        write_request(&mut out, &inv, &mut buf)
            .await
            .expect("write");
        let meta = r#"{"method":"POST","path":"/a/b","query":"x=1","headers":[["content-type","application/json"]],"request_id":"0123abcd"}"#;
        assert_eq!(out, frame(meta, b"{\"name\": \"Alice\"}"));
    }

    #[tokio::test]
    async fn a_queue_message_rides_in_the_meta_as_trigger() {
        let inv = Invocation {
            method: "POST".into(),
            path: "/".into(),
            body: Bytes::from_static(b"m"),
            request_id: "77".into(),
            trigger: Some(MessageContext {
                kind: "nats".into(),
                name: "nats[0]".into(),
                stream: "ORDERS".into(),
                subject: "orders.new".into(),
                partition: None,
                sequence: 42,
                key: None,
                headers: vec![("id".into(), "7".into())],
                delivered: 2,
                attempt: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut out = Vec::new();
        write_request(&mut out, &inv, &mut Vec::new())
            .await
            .expect("write");
        let meta = r#"{"method":"POST","path":"/","query":"","headers":[],"request_id":"77","trigger":{"kind":"nats","name":"nats[0]","stream":"ORDERS","subject":"orders.new","partition":null,"sequence":42,"key":null,"headers":[["id","7"]],"delivered":2,"attempt":1}}"#;
        assert_eq!(out, frame(meta, b"m"));
    }

    #[tokio::test]
    async fn large_body_is_written_after_the_head() {
        let body = Bytes::from(vec![7u8; INLINE_BODY_BYTES + 1]);
        let inv = Invocation {
            method: "PUT".into(),
            path: "/".into(),
            body: body.clone(),
            ..Default::default()
        };
        let mut out = Vec::new();
        write_request(&mut out, &inv, &mut Vec::new())
            .await
            .expect("write");
        let meta = r#"{"method":"PUT","path":"/","query":"","headers":[],"request_id":""}"#;
        assert_eq!(out, frame(meta, &body));
    }

    #[tokio::test]
    async fn reads_response_ready_and_error_frames() {
        let mut input = frame(r#"{"type":"ready","pid":42}"#, b"");
        input.extend(frame(
            r#"{"status":418,"headers":[["A","B"]]}"#,
            b"hi\n\x00\xff",
        ));
        input.extend(frame(
            r#"{"status":500,"error":"ZeroDivisionError: division by zero","traceback":"f.py:2"}"#,
            b"",
        ));
        let mut r = input.as_slice();
        let mut meta_buf = BytesMut::new();

        let (ready, body) = read_frame(&mut r, &mut meta_buf, LIMIT)
            .await
            .expect("ready");
        assert_eq!(ready.kind.as_deref(), Some("ready"));
        assert_eq!(ready.pid, Some(42));
        assert!(body.is_empty());

        let (resp, body) = read_frame(&mut r, &mut meta_buf, LIMIT)
            .await
            .expect("resp");
        assert_eq!(resp.status, Some(418));
        assert_eq!(resp.headers, vec![("A".to_string(), "B".to_string())]);
        assert_eq!(&body[..], b"hi\n\x00\xff");

        let (err, _) = read_frame(&mut r, &mut meta_buf, LIMIT).await.expect("err");
        assert_eq!(
            err.error.as_deref(),
            Some("ZeroDivisionError: division by zero")
        );
        assert_eq!(err.traceback, "f.py:2");

        assert!(matches!(
            read_frame(&mut r, &mut meta_buf, LIMIT).await,
            Err(ProtocolError::Closed)
        ));
    }

    #[tokio::test]
    async fn truncated_frame_is_closed_not_a_hang() {
        let full = frame(r#"{"status":200}"#, b"abcdef");
        for cut in [3, 8, 12, full.len() - 1] {
            let mut r = &full[..cut];
            let got = read_frame(&mut r, &mut BytesMut::new(), LIMIT).await;
            assert!(
                matches!(got, Err(ProtocolError::Closed)),
                "cut at {cut}: {got:?}"
            );
        }
    }

    #[test]
    fn blocking_reader_and_frame_encoder_agree() {
        let bytes = encode_frame(&serde_json::json!({"type": "forked", "pid": 7})).expect("encode");
        let (meta, body) = read_frame_blocking(&mut bytes.as_slice()).expect("read");
        assert_eq!((meta.kind.as_deref(), meta.pid), (Some("forked"), Some(7)));
        assert!(body.is_empty());
        assert!(matches!(
            read_frame_blocking(&mut &bytes[..5]),
            Err(ProtocolError::Closed)
        ));
    }

    #[tokio::test]
    async fn oversized_or_bad_meta_is_malformed() {
        let mut huge = Vec::new();
        huge.extend_from_slice(&((MAX_META_BYTES + 1) as u32).to_be_bytes());
        huge.extend_from_slice(&0u32.to_be_bytes());
        let got = read_frame(
            &mut huge.as_slice(),
            &mut BytesMut::new(),
            2 * MAX_META_BYTES,
        )
        .await;
        assert!(matches!(got, Err(ProtocolError::Malformed(_))), "{got:?}");

        let bad = frame("not json", b"");
        let got = read_frame(&mut bad.as_slice(), &mut BytesMut::new(), LIMIT).await;
        assert!(matches!(got, Err(ProtocolError::Malformed(_))), "{got:?}");
    }

    /// A frame header claiming `meta_len` and `body_len` bytes.
    fn header(meta_len: u32, body_len: u32) -> Vec<u8> {
        let mut out = meta_len.to_be_bytes().to_vec();
        out.extend_from_slice(&body_len.to_be_bytes());
        out
    }

    #[tokio::test]
    async fn frame_over_the_limit_is_refused_from_its_header() {
        // A runtime claiming 400 MiB and then sending it, endlessly: the
        // reader must stop at the header, with next to nothing buffered.
        let claim = header(2, 400 << 20);
        let mut endless = tokio::io::AsyncReadExt::chain(claim.as_slice(), tokio::io::repeat(b'x'));
        let mut buf = BytesMut::new();
        let got = read_frame(&mut endless, &mut buf, LIMIT).await;
        match got {
            Err(ProtocolError::TooLarge { claimed, limit }) => {
                assert_eq!((claimed, limit), ((400 << 20) + 2, LIMIT));
            }
            other => panic!("{other:?}"),
        }
        assert!(buf.capacity() <= 2 * READ_CHUNK, "{}", buf.capacity());

        // Meta and body count together; exactly the limit is fine.
        let meta = r#"{"status":200}"#;
        let body = vec![b'y'; LIMIT - meta.len()];
        let ok = frame(meta, &body);
        let (_, got) = read_frame(&mut ok.as_slice(), &mut BytesMut::new(), LIMIT)
            .await
            .expect("at the limit");
        assert_eq!(got.len(), body.len());
        let over = frame(meta, &[body.as_slice(), b"z"].concat());
        let got = read_frame(&mut over.as_slice(), &mut BytesMut::new(), LIMIT).await;
        assert!(
            matches!(got, Err(ProtocolError::TooLarge { .. })),
            "{got:?}"
        );

        // The largest header there is: no overflow, no allocation.
        let max = header(u32::MAX, u32::MAX);
        let got = read_frame(&mut max.as_slice(), &mut BytesMut::new(), usize::MAX).await;
        assert!(
            matches!(got, Err(ProtocolError::TooLarge { .. })),
            "{got:?}"
        );
        let got = read_frame_blocking_limited(&mut max.as_slice(), usize::MAX);
        assert!(
            matches!(got, Err(ProtocolError::TooLarge { .. })),
            "{got:?}"
        );
    }

    #[test]
    fn blocking_reader_keeps_control_frames_small() {
        let claim = header(16, (MAX_CONTROL_FRAME_BYTES) as u32);
        let mut endless = std::io::Read::chain(claim.as_slice(), std::io::repeat(b'x'));
        let got = read_frame_blocking(&mut endless);
        assert!(
            matches!(got, Err(ProtocolError::TooLarge { limit, .. }) if limit == MAX_CONTROL_FRAME_BYTES),
            "{got:?}"
        );
    }
}

/// The frame decoders under random input (proptest).
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    /// Cases per property: thousands, yet the whole module runs in about a
    /// second.
    const CASES: u32 = 2000;

    /// Reads `data` in the chunk sizes given (cycling), as a socket might
    /// deliver it.
    struct Chunked {
        data: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
        turn: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let size = self.sizes[self.turn % self.sizes.len()];
            self.turn += 1;
            let n = size.min(buf.remaining()).min(self.data.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    }

    /// A response meta as the runtime writes it.
    fn meta() -> impl Strategy<Value = serde_json::Value> {
        (
            100u16..600,
            prop::collection::vec(("[a-z-]{1,12}", "\\PC{0,20}"), 0..4),
            prop::option::of("\\PC{0,40}"),
        )
            .prop_map(|(status, headers, error)| {
                let mut meta = serde_json::json!({"status": status, "headers": headers});
                if let Some(error) = error {
                    meta["error"] = serde_json::json!(error);
                }
                meta
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        #[test]
        fn arbitrary_bytes_never_panic_nor_overallocate(
            data in prop::collection::vec(any::<u8>(), 0..256),
            header in prop::option::of((any::<u32>(), any::<u32>())),
            max_frame in 0usize..(64 << 10),
            sizes in prop::collection::vec(1usize..64, 1..4),
        ) {
            // Random bytes, sometimes behind a header of random lengths.
            let mut input = Vec::new();
            if let Some((meta_len, body_len)) = header {
                input.extend_from_slice(&meta_len.to_be_bytes());
                input.extend_from_slice(&body_len.to_be_bytes());
            }
            input.extend_from_slice(&data);
            let mut reader = Chunked { data: input.clone(), at: 0, sizes, turn: 0 };
            let mut buf = BytesMut::new();
            let got = runtime().block_on(read_frame(&mut reader, &mut buf, max_frame));
            prop_assert!(buf.capacity() <= HEADER_BYTES + max_frame + 2 * READ_CHUNK);
            if let Ok((_, body)) = &got {
                prop_assert!(body.len() <= max_frame);
            }
            let blocking = read_frame_blocking_limited(&mut input.as_slice(), max_frame);
            prop_assert_eq!(got.is_ok(), blocking.is_ok(), "{:?} / {:?}", got, blocking);
        }

        #[test]
        fn valid_frames_round_trip_in_any_chunking(
            metas in prop::collection::vec(meta(), 1..4),
            bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..512), 4),
            sizes in prop::collection::vec(1usize..300, 1..4),
        ) {
            let mut stream = Vec::new();
            for (meta, body) in metas.iter().zip(&bodies) {
                let mut frame = encode_frame(meta).expect("encode");
                let body_len = u32::try_from(body.len()).expect("small body");
                frame[4..8].copy_from_slice(&body_len.to_be_bytes());
                frame.extend_from_slice(body);
                stream.extend_from_slice(&frame);
            }
            let mut reader = Chunked { data: stream.clone(), at: 0, sizes, turn: 0 };
            let mut buf = BytesMut::new();
            let rt = runtime();
            let mut blocking = stream.as_slice();
            for (meta, body) in metas.iter().zip(&bodies) {
                let (got, got_body) = rt
                    .block_on(read_frame(&mut reader, &mut buf, 1 << 20))
                    .expect("valid frame");
                prop_assert_eq!(got.status, meta["status"].as_u64().and_then(|s| u16::try_from(s).ok()));
                prop_assert_eq!(got.error.as_deref(), meta["error"].as_str());
                prop_assert_eq!(got.headers.len(), meta["headers"].as_array().map_or(0, Vec::len));
                prop_assert_eq!(&got_body[..], &body[..]);
                let (again, again_body) =
                    read_frame_blocking_limited(&mut blocking, 1 << 20).expect("valid frame");
                prop_assert_eq!(again, got);
                prop_assert_eq!(again_body, got_body);
            }
            let end = rt.block_on(read_frame(&mut reader, &mut buf, 1 << 20));
            prop_assert!(matches!(end, Err(ProtocolError::Closed)), "{:?}", end);
        }

        #[test]
        fn any_cut_of_a_valid_frame_is_closed(
            meta in meta(),
            body in prop::collection::vec(any::<u8>(), 0..256),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut frame = encode_frame(&meta).expect("encode");
            let body_len = u32::try_from(body.len()).expect("small body");
            frame[4..8].copy_from_slice(&body_len.to_be_bytes());
            frame.extend_from_slice(&body);
            let cut = cut.index(frame.len());
            let got = runtime().block_on(read_frame(&mut &frame[..cut], &mut BytesMut::new(), 1 << 20));
            prop_assert!(matches!(got, Err(ProtocolError::Closed)), "{:?}", got);
        }
    }
}
