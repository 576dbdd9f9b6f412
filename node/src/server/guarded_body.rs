//! A response body that holds a guard until the body ends, fails or is dropped: how a
//! streamed response keeps its in-flight permit and records its figures at the right time.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

pub struct GuardedBody<G: Send + Unpin + 'static> {
    inner: Body,
    guard: Option<G>,
}

impl<G: Send + Unpin + 'static> GuardedBody<G> {
    /// Wraps `inner`; `guard` is dropped when the body is done with (its `Drop` does the work).
    pub fn wrap(inner: Body, guard: G) -> Body {
        Body::new(Self {
            inner,
            guard: Some(guard),
        })
    }
}

impl<G: Send + Unpin + 'static> http_body::Body for GuardedBody<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
