//! Request ids: a sane incoming `X-Request-ID` is kept, else one is generated. The id is
//! carried in the request's scope (`scope.rs`) so errors and log lines can include it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use crate::wire::headers::RequestHeaders;

pub const HEADER: axum::http::HeaderName = axum::http::HeaderName::from_static("x-request-id");

static PREFIX: LazyLock<u32> = LazyLock::new(rand::random);
static COUNTER: AtomicU64 = AtomicU64::new(1);

/// The incoming id when it is short and made of safe characters; otherwise a new one.
pub fn from_headers(headers: &impl RequestHeaders) -> Arc<str> {
    if let Some(incoming) = headers.first_str(&HEADER)
        && is_sane(incoming)
    {
        return Arc::from(incoming);
    }
    generate()
}

fn is_sane(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Unique per process (random prefix) and cheap (a counter): no syscall, no lock.
pub fn generate() -> Arc<str> {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = [0u8; 24];
    id[..4].copy_from_slice(b"req-");
    hex_into(&mut id[4..12], u64::from(*PREFIX));
    hex_into(&mut id[12..], n);
    Arc::from(std::str::from_utf8(&id).unwrap_or("req-"))
}

/// Writes the low `out.len()` hex digits of `value`, zero-padded (what `{:0Nx}` would print).
fn hex_into(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_read_like_the_formatted_ones() {
        let mut out = [0u8; 12];
        for value in [0u64, 1, 0xabc, u64::from(u32::MAX), 0x1234_5678_9abc_def0] {
            hex_into(&mut out, value);
            assert_eq!(
                out,
                *format!("{:012x}", value & 0xffff_ffff_ffff).as_bytes()
            );
        }
        let id = generate();
        assert_eq!(id.len(), 24);
        assert!(id.starts_with("req-") && is_sane(&id), "{id}");
        assert_ne!(generate(), id, "a counter makes each one new");
    }

    #[test]
    fn keeps_sane_ids_and_replaces_others() {
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            HEADER.clone(),
            axum::http::HeaderValue::from_static("abc-123"),
        );
        assert_eq!(&*from_headers(&h), "abc-123");
        h.insert(
            HEADER,
            axum::http::HeaderValue::from_static("bad id<script>"),
        );
        assert!(from_headers(&h).starts_with("req-"));
        assert_ne!(generate(), generate());
    }
}
