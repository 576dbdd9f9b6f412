//! Keep-alive HTTP/1.1 connections to one plain-HTTP upstream origin, reused newest first.
//!
//! Self-hosted inference servers (vLLM, llama.cpp, Ollama, the mock) are reached over plain
//! HTTP on a private network, where the gateway's own microseconds show. This pool belongs to
//! one endpoint, so a checkout is a pop under an uncontended lock, and a connection goes back
//! as soon as its answer's last byte has been read. TLS upstreams keep hyper-util's client
//! (ALPN, HTTP/2).
//!
//! The exchange itself is [`super::h1`]: the request is written (one write, unless the socket
//! takes less) while the answer's head is read and parsed where it landed, and the body is taken
//! out of the read buffer by the request that reads it. A connection has no task of its own and
//! no channel between it and the request: the request's task runs the socket. hyper's client
//! connection, used before, cost ~13k instructions an exchange in its dispatcher, request
//! encoder, header map and body channel.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Uri};
use prometheus::IntCounter;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use super::h1::{self, AnswerHead, PlainRequest};
use super::http::{CONNECT_TIMEOUT, POOL_MAX_IDLE_PER_HOST};
use super::resend::{Failed, is_closed_by_peer};
use crate::busy_poll::AnswerTime;

mod body;
pub use body::PooledBody;

/// A connection's read buffer: an answer's head and a short body fit in one read.
const READ_BUFFER: usize = 8 * 1024;
/// Below this much free room, the read buffer grows before the next read.
const MIN_READ_ROOM: usize = 1024;
/// Largest request buffer a connection keeps for its next request, from the moment its
/// request is written for as long as it lives: typical chat requests reuse it, and a thousand
/// connections (busy, streaming or idle) hold 16 MiB of them at most, beside their read buffers.
const KEPT_WRITE_BUFFER: usize = 16 * 1024;
/// How often (at most; a shorter `pool_idle_timeout` sets it) idle connections past their
/// limit, or closed by the upstream, are closed while no request comes to take them: often
/// enough that a connection an upstream closes after 5 s
/// idle does not linger half-closed for long.
const REAP_EVERY: Duration = Duration::from_secs(5);

/// The idle connections of one `http://` origin, and how to reach it.
pub struct OriginPool {
    /// `host:port`, to connect to.
    address: String,
    host: HeaderValue,
    /// The base URL's path (`/v1`), joined before every request path.
    base_path: String,
    /// The target of [`CHAT_PATH`], built once: it is every completion's.
    chat_target: Option<Uri>,
    idle: Mutex<VecDeque<Idle>>,
    reaper_started: AtomicBool,
    /// Counts the requests [`Self::send`] sends again on a new connection.
    resent: Option<IntCounter>,
    /// How long an idle connection is reused at most (the provider's `pool_idle_timeout`).
    idle_timeout: Duration,
    /// How fast answers on kept connections have lately come, for busy polling.
    answer_time: AnswerTime,
}

impl std::fmt::Debug for OriginPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginPool")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// One connection, and what has been read from it and not yet taken.
struct Conn {
    stream: TcpStream,
    read: BytesMut,
    /// The last request's buffer, empty, kept for the next one (up to [`KEPT_WRITE_BUFFER`]).
    write: Vec<u8>,
    /// How long the connection may sit idle and still be reused: the pool's idle timeout, or
    /// less when the upstream's last answer said it closes idle connections sooner.
    idle_limit: Duration,
}

impl Conn {
    /// Reused only while idle for less than the upstream keeps it: a second under its
    /// `timeout` (half of it when that is two seconds or less), so that the request does not
    /// meet the upstream's close on the way.
    fn expect_idle_timeout(&mut self, upstream: Option<Duration>, pool: Duration) {
        self.idle_limit = upstream.map_or(pool, |timeout| {
            timeout
                .saturating_sub(Duration::from_secs(1))
                .max(timeout / 2)
                .min(pool)
        });
    }

    fn keep_write_buffer(&mut self, mut buffer: Vec<u8>) {
        if buffer.capacity() <= KEPT_WRITE_BUFFER {
            buffer.clear();
            self.write = buffer;
        }
    }

    /// Reads more into the buffer; `Ok(0)` when the upstream closed the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < MIN_READ_ROOM {
            self.read.reserve(READ_BUFFER);
        }
        std::pin::pin!(self.stream.read_buf(&mut self.read)).poll(cx)
    }

    /// Whether an idle connection can carry a request: nothing to read on it, neither the
    /// upstream's close nor bytes nobody asked for. Costs no system call while the socket has
    /// had no event since its last read.
    fn is_quiet(&mut self) -> bool {
        self.read.is_empty()
            && self
                .poll_fill(&mut Context::from_waker(Waker::noop()))
                .is_pending()
    }

    /// Writes `request` and reads the answer's head. Both run at once: an upstream may answer
    /// (a 413, say) before it has read a large body, and then stop reading. Returns the head
    /// and whether the whole request went out.
    async fn exchange(&mut self, request: &[u8]) -> Result<(AnswerHead, bool), Failed> {
        let mut written = 0;
        std::future::poll_fn(|cx| {
            loop {
                if written < request.len() {
                    match Pin::new(&mut self.stream).poll_write(cx, &request[written..]) {
                        Poll::Ready(Ok(n)) if n > 0 => {
                            written += n;
                            continue;
                        }
                        Poll::Ready(Ok(_)) => {
                            let error = "the upstream stopped taking the request".to_owned();
                            return Poll::Ready(Err(Failed::new(error, written)));
                        }
                        Poll::Ready(Err(error)) => {
                            let closed = self.read.is_empty() && is_closed_by_peer(&error);
                            let error = format!("sending the request: {error}");
                            let failed = Failed::new(error, written);
                            return Poll::Ready(Err(failed.closed_unanswered(closed)));
                        }
                        Poll::Pending => {}
                    }
                }
                if !self.read.is_empty() {
                    match h1::parse_head(&mut self.read) {
                        Ok(Some(head)) => return Poll::Ready(Ok((head, written == request.len()))),
                        Ok(None) => {}
                        Err(error) => return Poll::Ready(Err(Failed::new(error, written))),
                    }
                }
                let (error, closed) = match ready!(self.poll_fill(cx)) {
                    Ok(0) => (
                        "the upstream closed the connection before answering".to_owned(),
                        true,
                    ),
                    Ok(_) => continue,
                    Err(error) => (
                        format!("reading the upstream's answer: {error}"),
                        is_closed_by_peer(&error),
                    ),
                };
                let unanswered = closed && self.read.is_empty();
                let failed = Failed::new(error, written);
                return Poll::Ready(Err(failed.closed_unanswered(unanswered)));
            }
        })
        .await
    }
}

/// An answer read up to its body.
pub struct PooledAnswer {
    pub head: AnswerHead,
    pub body: PooledBody,
}

impl OriginPool {
    /// A pool for `base_url` when it is plain `http://` with a host; `None` otherwise.
    pub fn for_base_url(
        base_url: &str,
        resent: Option<IntCounter>,
        idle_timeout: Duration,
    ) -> Option<Arc<Self>> {
        let uri: Uri = base_url.parse().ok()?;
        if uri.scheme_str() != Some("http") || uri.query().is_some() {
            return None;
        }
        let authority: &Authority = uri.authority()?;
        let port = authority.port_u16().unwrap_or(80);
        // `user:password@` (if the URL has one) is not part of the Host header.
        let host_and_port = authority.as_str().rsplit('@').next()?;
        let host = HeaderValue::from_str(host_and_port).ok()?;
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Some(Arc::new(Self {
            address: format!("{}:{port}", authority.host()),
            host,
            chat_target: join_target(&base_path, CHAT_PATH).ok(),
            base_path,
            idle: Mutex::new(VecDeque::new()),
            reaper_started: AtomicBool::new(false),
            resent,
            idle_timeout,
            answer_time: AnswerTime::default(),
        }))
    }

    /// The origin-form target (`/v1/chat/completions`) of `path` under this base URL.
    pub fn target(&self, path: &str) -> Result<Uri, String> {
        match &self.chat_target {
            Some(target) if path == CHAT_PATH => Ok(target.clone()),
            _ => join_target(&self.base_path, path),
        }
    }

    /// Sends `request` on an idle connection, or a new one, and reads the answer's head. A
    /// request that an idle connection could not take goes once more on a new one: the
    /// upstream had dropped the connection while idle, or dropped it, without a byte of an
    /// answer, as the request arrived (within [`super::resend::RACE_WINDOW`]: its keep-alive timeout or a
    /// graceful restart racing the request; uvicorn, under vLLM, closes idle connections after
    /// 5 s). Such a drop is not
    /// the upstream failing, so it must not reach the circuit breaker. A completion is sent
    /// again as the gateway's failover would send it. The request is encoded into the
    /// connection's kept buffer.
    pub async fn send(
        self: &Arc<Self>,
        request: &PlainRequest<'_>,
    ) -> Result<PooledAnswer, String> {
        let mut idle = self.check_out();
        let mut bytes = idle
            .as_mut()
            .map(|(conn, _)| std::mem::take(&mut conn.write))
            .unwrap_or_default();
        h1::encode_request(&mut bytes, request, self.host.as_bytes());
        let (mut conn, head, sent_whole) = match idle {
            Some((mut conn, taken)) => {
                match self.exchange_on_kept(&mut conn, &bytes, taken).await {
                    Ok((head, sent_whole)) => (conn, head, sent_whole),
                    // An idle connection the upstream had closed: the request goes once more.
                    Err(failed) if failed.may_resend(taken) => {
                        tracing::debug!(
                            upstream = %self.address,
                            error = %failed.error,
                            "a kept connection could not carry the request: sending it on a new one"
                        );
                        if let Some(resent) = &self.resent {
                            resent.inc();
                        }
                        self.exchange_on_new(&bytes).await?
                    }
                    Err(failed) => return Err(self.naming_upstream(failed.error)),
                }
            }
            None => self.exchange_on_new(&bytes).await?,
        };
        // Answered before it read the whole request: the rest would be read as a request.
        let reusable = head.reusable && sent_whole;
        if reusable {
            conn.keep_write_buffer(bytes);
            conn.expect_idle_timeout(head.idle_timeout, self.idle_timeout);
        }
        let body = PooledBody::new(conn, head.framing, reusable, Arc::clone(self));
        Ok(PooledAnswer { head, body })
    }

    /// The exchange on a kept connection, spun through when the upstream answers fast
    /// ([`crate::busy_poll`]). A new connection's is not timed: its connect would be counted.
    async fn exchange_on_kept(
        &self,
        conn: &mut Conn,
        bytes: &[u8],
        taken: Instant,
    ) -> Result<(AnswerHead, bool), Failed> {
        let waiting = self.answer_time.wait(taken);
        let exchanged = conn.exchange(bytes).await;
        if let (Some(waiting), Ok(_)) = (waiting, &exchanged) {
            waiting.answered();
        }
        exchanged
    }

    async fn exchange_on_new(
        self: &Arc<Self>,
        bytes: &[u8],
    ) -> Result<(Box<Conn>, AnswerHead, bool), String> {
        let mut conn = self.connect().await?;
        let (head, sent_whole) = conn
            .exchange(bytes)
            .await
            .map_err(|failed| self.naming_upstream(failed.error))?;
        Ok((conn, head, sent_whole))
    }

    /// An exchange's error with the upstream's address, as connect errors have it.
    fn naming_upstream(&self, error: String) -> String {
        format!("{error} (upstream {})", self.address)
    }

    /// The most recently used connection that can carry a request, and when it was taken.
    fn check_out(&self) -> Option<(Box<Conn>, Instant)> {
        loop {
            let Idle { mut conn, since } = self.lock().pop_back()?;
            let now = Instant::now();
            if now.duration_since(since) < conn.idle_limit && conn.is_quiet() {
                return Some((conn, now));
            }
        }
    }

    fn check_in(&self, conn: Box<Conn>) {
        if conn.idle_limit.is_zero() {
            return; // the upstream keeps no idle connection (`Keep-Alive: timeout=0`)
        }
        let now = Instant::now();
        let mut idle = self.lock();
        if idle
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.since) >= oldest.conn.idle_limit)
        {
            idle.pop_front();
        }
        if idle.len() < POOL_MAX_IDLE_PER_HOST {
            idle.push_back(Idle { conn, since: now });
        }
    }

    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        // The list stays consistent whatever a panicking holder did: take it back.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn connect(self: &Arc<Self>) -> Result<Box<Conn>, String> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.address))
            .await
            .map_err(|_| format!("connecting to {} timed out", self.address))?
            .map_err(|e| format!("connecting to {}: {e}", self.address))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("connecting to {}: {e}", self.address))?;
        if !self.reaper_started.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap_idle(Arc::downgrade(self)));
        }
        Ok(Box::new(Conn {
            stream,
            read: BytesMut::with_capacity(READ_BUFFER),
            write: Vec::new(),
            idle_limit: self.idle_timeout,
        }))
    }
}

/// Closes connections idle for longer than their limit, or closed by the upstream,
/// while no request comes to take them; ends with the pool.
async fn reap_idle(pool: Weak<OriginPool>) {
    let every = pool
        .upgrade()
        .map_or(REAP_EVERY, |pool| REAP_EVERY.min(pool.idle_timeout))
        .max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        pool.lock().retain_mut(|idle| {
            idle.conn.is_quiet() && now.duration_since(idle.since) < idle.conn.idle_limit
        });
    }
}

#[cfg(test)]
pub(crate) mod tests;

/// The path of chat completions under an OpenAI-compatible base URL.
pub const CHAT_PATH: &str = "/chat/completions";

/// `base_path` and `path` joined into an origin-form target.
fn join_target(base_path: &str, path: &str) -> Result<Uri, String> {
    let mut target = String::with_capacity(base_path.len() + path.len());
    target.push_str(base_path);
    target.push_str(path);
    PathAndQuery::from_maybe_shared(Bytes::from(target))
        .map(Uri::from)
        .map_err(|e| format!("invalid upstream URL: {e}"))
}
