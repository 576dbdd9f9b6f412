//! HTTP/3: a QUIC endpoint (quinn + h3) bridged into the same router as TCP, so
//! every endpoint, layer and limit is shared — there is one handler stack.
//!
//! One task per connection accepts request streams; one task per request turns the h3
//! request into an `http::Request<Body>` whose body streams from `recv_data` (so the
//! handlers' own size limit and read timeout apply unchanged), calls the router
//! ([`ObservedRouter::answer`]), then sends the head with the gateway's headers written into
//! its header section, and one DATA frame per body frame (an SSE chunk leaves as soon as the
//! handler yields it), and finishes the stream.
//!
//! **0-RTT** (`enable_0rtt`, off by default). Early data can be replayed by an attacker, but a
//! replayed handshake never completes. A request whose headers are read before the
//! connection's TLS handshake has completed is marked [`EarlyData`]; the router then answers
//! unsafe methods (anything but GET, HEAD, OPTIONS) with 425 Too Early, and the client retries
//! after the handshake (RFC 8470). A request read once the handshake has completed is served,
//! even if its bytes arrived as early data: the completed handshake proves it is no replay.
//! quinn reports completion under the same lock that orders it before any 1-RTT stream,
//! so a 1-RTT request is never mistaken for early data.
//!
//! **Shutdown.** The endpoint stops accepting, each connection sends GOAWAY, in-flight
//! requests and streams finish, then connections close (after the client does, or after a
//! few round trips so the last bytes are acknowledged); `wait_idle` bounds it all by
//! `shutdown_timeout`, then the endpoint closes what is left.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, Method};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes};
use h3::error::{Code, StreamError};
use h3::server::{RequestResolver, RequestStream};
use hapax_config::{Http3Config, ServerConfig};
use http_body::Frame;
use http_body_util::BodyExt;
use quinn::VarInt;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::gateway_headers::GatewayHeaders;
use super::observe::ObservedRouter;
use crate::error::ApiError;

/// H3_NO_ERROR, the application close code of a clean HTTP/3 shutdown.
const H3_NO_ERROR: VarInt = VarInt::from_u32(0x100);

/// The QUIC and HTTP/3 settings of `server.http3` (quinn's defaults where unset).
#[derive(Debug, Clone)]
pub struct Http3Settings {
    pub idle_timeout: Option<Duration>,
    pub max_bi_streams: Option<u64>,
    pub max_uni_streams: Option<u64>,
    pub stream_receive_window: Option<u64>,
    pub connection_receive_window: Option<u64>,
    pub enable_0rtt: bool,
    /// Largest request header section (QPACK-decoded), as on TCP.
    pub max_header_bytes: usize,
    /// How long a request stream may take to deliver its headers, as on TCP.
    pub header_read_timeout: Duration,
    pub shutdown_timeout: Duration,
}

impl Http3Settings {
    pub fn from_config(server: &ServerConfig, http3: &Http3Config) -> Self {
        Self {
            idle_timeout: http3.idle_timeout.map(|d| d.get()),
            max_bi_streams: http3.max_bi_streams_concurrent,
            max_uni_streams: http3.max_uni_streams_concurrent,
            stream_receive_window: http3.max_stream_receive_window,
            connection_receive_window: http3.max_connection_receive_window,
            enable_0rtt: http3.enable_0rtt,
            max_header_bytes: server.max_header_bytes,
            header_read_timeout: server.read_timeout.get(),
            shutdown_timeout: server.shutdown_timeout.get(),
        }
    }

    fn transport(&self) -> anyhow::Result<quinn::TransportConfig> {
        let varint = |value: u64, key: &str| {
            VarInt::from_u64(value)
                .map_err(|_| anyhow::anyhow!("server.http3.{key}: {value} is too large"))
        };
        let mut transport = quinn::TransportConfig::default();
        if let Some(idle) = self.idle_timeout {
            let idle = quinn::IdleTimeout::try_from(idle)
                .map_err(|_| anyhow::anyhow!("server.http3.idle_timeout: too long"))?;
            transport.max_idle_timeout(Some(idle));
        }
        if let Some(n) = self.max_bi_streams {
            transport.max_concurrent_bidi_streams(varint(n, "max_bi_streams_concurrent")?);
        }
        if let Some(n) = self.max_uni_streams {
            transport.max_concurrent_uni_streams(varint(n, "max_uni_streams_concurrent")?);
        }
        if let Some(n) = self.stream_receive_window {
            transport.stream_receive_window(varint(n, "max_stream_receive_window")?);
        }
        if let Some(n) = self.connection_receive_window {
            transport.receive_window(varint(n, "max_connection_receive_window")?);
        }
        Ok(transport)
    }
}

/// Binds the UDP socket of the QUIC endpoint. `tls` must speak TLS 1.3 with ALPN `h3`
/// ([`super::tls::CertifiedFiles::quic_config`]).
pub fn bind(
    address: SocketAddr,
    tls: rustls::ServerConfig,
    settings: &Http3Settings,
) -> anyhow::Result<quinn::Endpoint> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .context("setting up TLS for QUIC")?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(settings.transport()?));
    quinn::Endpoint::server(config, address)
        .with_context(|| format!("binding the HTTP/3 (UDP) listener on {address}"))
}

/// Serves `router` over HTTP/3 on `endpoint` until `shutdown` resolves, then drains.
pub async fn serve(
    endpoint: quinn::Endpoint,
    router: ObservedRouter,
    settings: Http3Settings,
    shutdown: impl Future<Output = ()>,
) {
    let settings = Arc::new(settings);
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    let connection = connection(incoming, router.clone(), Arc::clone(&settings), stopping.clone());
                    connections.spawn(connection);
                }
                None => break,
            },
            () = &mut shutdown => break,
        }
        while connections.try_join_next().is_some() {}
    }
    endpoint.set_server_config(None);
    let _ = stop.send(true);
    tracing::info!(
        connections = connections.len(),
        "HTTP/3: draining connections"
    );
    let drain = async {
        while connections.join_next().await.is_some() {}
        endpoint.wait_idle().await;
    };
    match tokio::time::timeout(settings.shutdown_timeout, drain).await {
        Ok(()) => tracing::info!("HTTP/3: all connections drained"),
        Err(_) => tracing::warn!("HTTP/3: shutdown timeout reached with connections still open"),
    }
    endpoint.close(H3_NO_ERROR, b"server shutting down");
}

/// One QUIC connection: the handshake, then its request streams until the client goes away
/// or the server drains.
async fn connection(
    incoming: quinn::Incoming,
    router: ObservedRouter,
    settings: Arc<Http3Settings>,
    mut stopping: watch::Receiver<bool>,
) {
    let remote = incoming.remote_address();
    let (quic, handshake) = match accept(incoming, settings.enable_0rtt).await {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(%remote, %error, "QUIC handshake failed");
            return;
        }
    };
    let mut h3 = match h3::server::builder()
        .max_field_section_size(settings.max_header_bytes as u64)
        .build::<_, Bytes>(h3_quinn::Connection::new(quic.clone()))
        .await
    {
        Ok(h3) => h3,
        Err(error) => {
            tracing::debug!(%remote, %error, "HTTP/3 connection set-up failed");
            return;
        }
    };
    let handshake = Arc::new(handshake);
    let mut requests = JoinSet::new();
    let mut draining = false;
    loop {
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let request = request(resolver, router.clone(), Arc::clone(&handshake), settings.header_read_timeout);
                    requests.spawn(request);
                }
                Ok(None) => break,
                Err(error) => {
                    if !error.is_h3_no_error() {
                        tracing::debug!(%remote, %error, "HTTP/3 connection ended");
                    }
                    break;
                }
            },
            Some(_) = requests.join_next(), if !requests.is_empty() => {
                if draining && requests.is_empty() {
                    break;
                }
            }
            _ = stopping.changed(), if !draining => {
                draining = true;
                if let Err(error) = h3.shutdown(0).await {
                    tracing::debug!(%remote, %error, "HTTP/3 GOAWAY not sent");
                    break;
                }
                if requests.is_empty() {
                    break;
                }
            }
        }
    }
    if draining {
        // Give the last response bytes a few round trips to be acknowledged.
        let linger = (quic.rtt() * 4).max(Duration::from_millis(50));
        let _ = tokio::time::timeout(linger, quic.closed()).await;
    }
    quic.close(H3_NO_ERROR, b"");
}

/// Completes (or, with 0-RTT, starts) the handshake of an incoming connection.
async fn accept(
    incoming: quinn::Incoming,
    early_data: bool,
) -> Result<(quinn::Connection, Handshake), quinn::ConnectionError> {
    let connecting = incoming.accept()?;
    if early_data {
        match connecting.into_0rtt() {
            Ok((quic, completed)) => {
                let handshake = Handshake::pending(quic.clone(), completed);
                return Ok((quic, handshake));
            }
            Err(connecting) => return Ok((connecting.await?, Handshake::completed())),
        }
    }
    Ok((connecting.await?, Handshake::completed()))
}

/// Whether a connection's TLS handshake has completed (always, without 0-RTT).
struct Handshake {
    completed: AtomicBool,
    state: parking_lot::Mutex<HandshakeState>,
}

enum HandshakeState {
    Completed,
    Pending(quinn::Connection, quinn::ZeroRttAccepted),
    Failed,
}

impl Handshake {
    fn completed() -> Self {
        Self {
            completed: AtomicBool::new(true),
            state: parking_lot::Mutex::new(HandshakeState::Completed),
        }
    }

    fn pending(quic: quinn::Connection, completed: quinn::ZeroRttAccepted) -> Self {
        Self {
            completed: AtomicBool::new(false),
            state: parking_lot::Mutex::new(HandshakeState::Pending(quic, completed)),
        }
    }

    /// Checked without waiting: quinn signals completion before it hands out any stream
    /// that arrived after it, and a connection that failed its handshake never completes.
    fn is_completed(&self) -> bool {
        if self.completed.load(Ordering::Acquire) {
            return true;
        }
        let mut state = self.state.lock();
        let HandshakeState::Pending(quic, signal) = &mut *state else {
            return matches!(*state, HandshakeState::Completed);
        };
        let mut cx = Context::from_waker(Waker::noop());
        if Pin::new(signal).poll(&mut cx).is_pending() {
            return false;
        }
        let completed = quic.close_reason().is_none();
        *state = match completed {
            true => HandshakeState::Completed,
            false => HandshakeState::Failed,
        };
        self.completed.store(completed, Ordering::Release);
        completed
    }
}

/// Marks a request whose headers were read before its connection's handshake completed.
#[derive(Debug, Clone, Copy)]
pub struct EarlyData;

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Checked before routing: an unsafe method in early data may be a replay, so it gets 425 Too
/// Early (the client retries once the handshake has completed).
pub fn refuse_unsafe_early_data(request: &Request) -> Option<Response> {
    if request.extensions().get::<EarlyData>().is_some() && !is_safe(request.method()) {
        return Some(ApiError::TooEarly(request.method().to_string()).into_response());
    }
    None
}

type Resolver = RequestResolver<h3_quinn::Connection, Bytes>;
type SendHalf = RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type RecvHalf = RequestStream<h3_quinn::RecvStream, Bytes>;

/// One request stream through the router.
async fn request(
    resolver: Resolver,
    router: ObservedRouter,
    handshake: Arc<Handshake>,
    header_read_timeout: Duration,
) {
    let (head, stream) =
        match tokio::time::timeout(header_read_timeout, resolver.resolve_request()).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(error)) => {
                tracing::debug!(%error, "HTTP/3 request headers not read");
                return;
            }
            Err(_) => {
                tracing::debug!("HTTP/3 request headers not received in time");
                return;
            }
        };
    let early = !handshake.is_completed();
    let (mut send, recv) = stream.split();
    let mut request = head.map(|()| {
        Body::new(RequestBody {
            stream: recv,
            ended: false,
        })
    });
    if early {
        request.extensions_mut().insert(EarlyData);
    }
    let (response, gateway) = router.answer(request).await;
    if let Err(error) = respond(&mut send, response, &gateway).await {
        tracing::debug!(%error, "HTTP/3 response not delivered");
    }
}

/// Header fields that mean nothing in HTTP/3 and make a response malformed (RFC 9114 4.2).
const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Sends the head (the answer's map, then the gateway's headers, which replace any of the
/// same name in the map, as on the other listeners), one DATA frame per body frame as it
/// comes, trailers if any, and the end.
async fn respond(
    send: &mut SendHalf,
    response: Response,
    gateway: &GatewayHeaders,
) -> Result<(), StreamError> {
    let (mut parts, mut body) = response.into_parts();
    strip_head(&mut parts.headers, gateway);
    let head = http::Response::from_parts(parts, ());
    send.send_response_with_fields(head, |field| gateway.for_each_field(field))
        .await?;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                tracing::debug!(%error, "HTTP/3 response body failed");
                send.stop_stream(Code::H3_INTERNAL_ERROR);
                return Ok(());
            }
        };
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) => send.send_data(data).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await?;
                }
            }
        }
    }
    send.finish().await
}

/// Removes from the answer's map what it must not carry over HTTP/3: the connection-specific
/// fields, and every header the gateway writes itself, so that the gateway's value replaces
/// the map's (as on the other listeners) and no name is sent twice.
fn strip_head(headers: &mut HeaderMap, gateway: &GatewayHeaders) {
    for name in CONNECTION_SPECIFIC {
        headers.remove(name);
    }
    let replaced: Vec<HeaderName> = (headers.keys())
        .filter(|name| gateway.overrides(name))
        .cloned()
        .collect();
    for name in replaced {
        headers.remove(name);
    }
}

/// The request body, read from the stream's DATA frames as the handler asks for it.
struct RequestBody {
    stream: RecvHalf,
    ended: bool,
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match ready!(self.stream.poll_recv_data(cx)) {
            Ok(Some(mut data)) => {
                Poll::Ready(Some(Ok(Frame::data(data.copy_to_bytes(data.remaining())))))
            }
            Ok(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Err(error) => {
                self.ended = true;
                Poll::Ready(Some(Err(error)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

impl Drop for RequestBody {
    /// A handler that stops reading early (413, auth failure) tells the client to stop
    /// sending; H3_NO_ERROR says the response is still coming (RFC 9114 4.1.1).
    fn drop(&mut self) {
        if !self.ended {
            self.stream.stop_sending(Code::H3_NO_ERROR);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::ratelimit::RateLimitHeaders;
    use crate::server::scope::ServedBy;

    #[test]
    fn the_head_keeps_no_header_the_gateway_writes_nor_a_connection_specific_one() {
        let gateway = GatewayHeaders {
            served: Some(ServedBy {
                provider: Arc::from("primary"),
                attempts: 1,
            }),
            limits: Some(RateLimitHeaders {
                limit: 10,
                remaining: 0,
                reset_secs: 1,
                token_limit: None,
                token_remaining: None,
            }),
            request_id: Some(Arc::from("req-1")),
            ..GatewayHeaders::default()
        };
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("content-type", "application/json"),
            ("x-ratelimit-limit", "10"), // a 429's own, written by the gateway too
            ("x-ratelimit-remaining", "0"),
            ("retry-after", "1"),
            ("x-request-id", "req-0"),
            ("x-request-id", "req-00"),
            ("x-ratelimit-limit-tokens", "5"), // the gateway writes no token figures here
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        strip_head(&mut headers, &gateway);
        let mut kept: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        kept.sort_unstable();
        assert_eq!(
            kept,
            ["content-type", "retry-after", "x-ratelimit-limit-tokens"]
        );
        let mut written = Vec::new();
        gateway.for_each_field(|name, _| written.push(String::from_utf8_lossy(name).into_owned()));
        assert_eq!(written.len(), 6, "{written:?}");
        assert!(written.iter().all(|name| !kept.contains(&name.as_str())));
    }
}
