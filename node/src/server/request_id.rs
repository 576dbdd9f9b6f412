//! Request ids: a sane incoming `X-Request-ID` is kept, else one is generated. The id is
//! carried in a task-local so errors rendered anywhere in the handler can include it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use axum::http::HeaderMap;

tokio::task_local! {
    static REQUEST_ID: Arc<str>;
}

pub const HEADER: axum::http::HeaderName = axum::http::HeaderName::from_static("x-request-id");

static PREFIX: LazyLock<u32> = LazyLock::new(rand::random);
static COUNTER: AtomicU64 = AtomicU64::new(1);

/// The incoming id when it is short and made of safe characters; otherwise a new one.
pub fn from_headers(headers: &HeaderMap) -> Arc<str> {
    if let Some(incoming) = headers.get(&HEADER).and_then(|v| v.to_str().ok())
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
    Arc::from(format!("req-{:08x}{:012x}", *PREFIX, n))
}

pub async fn scope<F: Future>(id: Arc<str>, future: F) -> F::Output {
    REQUEST_ID.scope(id, future).await
}

/// The id of the request being handled, or `-` outside of one.
pub fn current_request_id() -> Arc<str> {
    REQUEST_ID
        .try_with(Arc::clone)
        .unwrap_or_else(|_| Arc::from("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_and_replaces_others() {
        let mut h = HeaderMap::new();
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
