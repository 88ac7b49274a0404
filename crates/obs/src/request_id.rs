//! Request ids: one per call, returned to the client in `X-Request-Id`,
//! passed to the lambda (`ctx.request_id`) and tagged on its log lines.
//!
//! A new id is this worker's tag (from its start time and pid, so two
//! workers' ids rarely collide) and a counter: one atomic add and one small
//! string per call. A client may bring its own id; it is kept only when it
//! is short and made of characters that cannot break a log line or a
//! header ([`is_acceptable`]).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The header carrying a request id, both ways.
pub const HEADER: &str = "x-request-id";

/// Longest request id accepted from a client.
pub const MAX_LEN: usize = 64;

/// A new request id: 16 lower-case hex digits, unique within this worker.
pub fn next() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:06x}{:010x}", worker_tag(), n & 0xff_ffff_ffff)
}

/// 24 bits telling this worker's ids from another's.
fn worker_tag() -> u32 {
    static TAG: OnceLock<u32> = OnceLock::new();
    *TAG.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mixed =
            (nanos ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (mixed >> 40) as u32
    })
}

/// Whether a client's id can be used as is: 1 to [`MAX_LEN`] characters
/// of `A-Z a-z 0-9 . _ : -` (no spaces, quotes or control characters).
pub fn is_acceptable(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The id of a call: the client's when acceptable, else a new one.
pub fn from_client(incoming: Option<&[u8]>) -> String {
    match incoming {
        Some(id) if is_acceptable(id) => String::from_utf8_lossy(id).into_owned(),
        _ => next(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_distinct_hex_of_one_length() {
        let (a, b) = (next(), next());
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_eq!(a[..6], b[..6], "one worker tag");
    }

    #[test]
    fn only_short_plain_client_ids_are_kept() {
        assert_eq!(from_client(Some(b"abc-123_x.y:z")), "abc-123_x.y:z");
        for bad in [
            &b""[..],
            b"has space",
            b"quote\"",
            b"new\nline",
            b"\x1b[31mred",
            &[b'a'; MAX_LEN + 1],
        ] {
            let id = from_client(Some(bad));
            assert_eq!(id.len(), 16, "{bad:?} replaced by a new id, got {id}");
        }
        assert!(is_acceptable(&[b'a'; MAX_LEN]));
        assert_eq!(from_client(None).len(), 16);
    }
}
