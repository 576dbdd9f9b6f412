//! When a request that failed on its way to an upstream may go again on another connection:
//! only when the upstream never processed it. The keep-alive race (an upstream closing an idle
//! connection as a request arrives on it) and an HTTP/2 stream refused or shut out by a GOAWAY
//! are not the upstream failing, so they must not reach the circuit breaker; a drop while the
//! upstream may have been at work is, and sending the request again would repeat the work.

use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus::IntCounter;

use super::http::{HttpClient, describe};

/// Why an exchange failed, and whether it may go again on a new connection.
pub(super) struct Failed {
    pub error: String,
    /// None of the request went out.
    unsent: bool,
    /// The upstream closed or reset the connection before any byte of an answer: on a
    /// kept-alive connection, and soon after the request went out, the upstream's idle
    /// timeout (or its graceful shutdown) dropping the connection as the request arrived.
    dropped_unanswered: bool,
}

impl Failed {
    pub fn new(error: String, written: usize) -> Self {
        Self {
            error,
            unsent: written == 0,
            dropped_unanswered: false,
        }
    }

    pub fn closed_unanswered(mut self, unanswered: bool) -> Self {
        self.dropped_unanswered = unanswered;
        self
    }

    /// Whether the request on a kept connection taken at `taken` may go once more.
    pub fn may_resend(&self, taken: Instant) -> bool {
        self.unsent || (self.dropped_unanswered && taken.elapsed() < RACE_WINDOW)
    }
}

/// How soon after a request goes out on a kept connection a drop without an answer is taken
/// for the keep-alive race: the upstream had closed the connection already, so its reset comes
/// within a round trip. A drop after longer (a crash while generating, a balancer cutting a
/// long call) is the upstream failing, and sending the request again would repeat its work.
pub const RACE_WINDOW: Duration = Duration::from_secs(1);

/// Errors by which a socket says its peer closed or reset the connection.
pub fn is_closed_by_peer(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// Sends `request` through hyper-util's client, and once more, on another connection, when the
/// upstream never processed it. hyper-util itself sends again only a request that never went
/// out. One that went out on a kept HTTP/1.1 connection just as the upstream's keep-alive
/// timeout (or a graceful restart) dropped it would fail, and count against the provider's
/// circuit breaker, although the upstream never saw it fail; so would an HTTP/2 stream the
/// upstream refused or shut out with a GOAWAY. See [`never_processed`].
pub(super) async fn request_resending(
    client: &HttpClient,
    request: http::Request<Full<Bytes>>,
    resent: Option<IntCounter>,
) -> Result<http::Response<Incoming>, hyper_util::client::legacy::Error> {
    let sent = std::time::Instant::now();
    let mut again = http::Request::new(request.body().clone());
    *again.method_mut() = request.method().clone();
    *again.uri_mut() = request.uri().clone();
    *again.headers_mut() = request.headers().clone();
    match client.inner.request(request).await {
        Err(error) if never_processed(&error, sent) => {
            tracing::debug!(
                error = %describe(&error),
                "the upstream never processed the request (a connection dropped before an answer, a refused stream, a GOAWAY): sending it again"
            );
            if let Some(resent) = resent {
                resent.inc();
            }
            client.inner.request(again).await
        }
        answered_or_failed => answered_or_failed,
    }
}

/// Whether the client's error, for a request sent at `sent`, says the upstream never processed
/// it. Connect errors, TLS handshakes included, are failures of the upstream.
/// - HTTP/2: the stream was refused (`REFUSED_STREAM`), or the upstream's GOAWAY named a
///   last stream below it; RFC 9113 §8.7 and §6.8 say neither was processed. h2 gives a
///   remote GOAWAY's error to the streams above that last one and to requests handed to the
///   connection after it (never opened there). A stream at or below it that the connection
///   then loses fails with another error (I/O, a reset) and is not sent again: it may have
///   been at work. One race is left, in hyper's client task: it checks the connection for an
///   error right after handing a request to h2, so a GOAWAY read in that instant that names
///   the new stream as processed would fail it with the same error. It needs the connection's
///   task to send the request and read the upstream's answer to it while the client task is
///   between two calls, which a request to a remote upstream does not leave time for.
/// - HTTP/1.1: the connection was closed or reset before a complete answer head (an error
///   after the head comes from the body instead), within [`RACE_WINDOW`] of the request going
///   out, as the plain pool's rule. hyper-util does not say whether the connection was a
///   kept one, so a new connection dropped so soon is sent again too, once.
fn never_processed(error: &hyper_util::client::legacy::Error, sent: std::time::Instant) -> bool {
    if error.is_connect() {
        return false;
    }
    let http2 = error
        .connect_info()
        .is_some_and(hyper_util::client::legacy::connect::Connected::is_negotiated_h2);
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        if http2 {
            if let Some(stream) = inner.downcast_ref::<h2::Error>() {
                return stream.reason() == Some(h2::Reason::REFUSED_STREAM)
                    || (stream.is_go_away() && stream.is_remote());
            }
        } else if inner
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
        {
            return sent.elapsed() < RACE_WINDOW;
        } else if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return is_closed_by_peer(io) && sent.elapsed() < RACE_WINDOW;
        }
        source = inner.source();
    }
    false
}
