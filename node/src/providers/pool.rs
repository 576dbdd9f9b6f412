//! Keep-alive HTTP/1.1 connections to one plain-HTTP upstream origin, reused newest first.
//!
//! Self-hosted inference servers (vLLM, llama.cpp, Ollama, the mock) are reached over plain
//! HTTP on a private network, where the gateway's own microseconds show. hyper-util's pooled
//! client hashes its pool key with SipHash at checkout and at return, boxes the checkout and
//! spawns a task per request to put the connection back. This pool belongs to one endpoint,
//! so a checkout is a pop under an uncontended lock, and the connection goes back as soon as
//! its answer has been read. TLS upstreams keep hyper-util's client (ALPN, HTTP/2).
//!
//! A connection has no task of its own: the request that holds it runs its reads and writes
//! while it waits for the answer and reads the body ([`Lease::poll_frame`]). A spawned connection
//! task costs two task hand-offs per exchange (the request to the connection's task, the
//! answer back), each a wake-up and a scheduler pass on the hot path. An idle connection is
//! polled once at check-out, which is when a close by the upstream is noticed.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::http::{CONNECT_TIMEOUT, POOL_IDLE_TIMEOUT, POOL_MAX_IDLE_PER_HOST, describe};

type Sender = SendRequest<Full<Bytes>>;
type Conn = Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// How long a checkout waits for an idle connection to finish its previous exchange.
const READY_WAIT: Duration = Duration::from_millis(10);

/// The idle connections of one `http://` origin, and how to reach it.
pub struct OriginPool {
    /// `host:port`, to connect to.
    address: String,
    host: HeaderValue,
    /// The base URL's path (`/v1`), joined before every request path.
    base_path: String,
    idle: Mutex<VecDeque<Idle>>,
    reaper_started: AtomicBool,
}

impl std::fmt::Debug for OriginPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginPool")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

struct Idle {
    link: Link,
    since: Instant,
}

/// One connection: the handle requests are sent on, and the connection itself, which only
/// reads and writes while someone polls it.
struct Link {
    sender: Sender,
    /// `None` once the connection has ended. Boxed: its buffers and state are ~1 KB, and a
    /// link moves from the pool to a request, its answer and back.
    conn: Option<Box<Conn>>,
}

impl Link {
    /// Runs the connection's pending reads and writes; wakes `cx` when there is more to do.
    fn drive(&mut self, cx: &mut Context<'_>) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if let Poll::Ready(result) = Pin::new(&mut **conn).poll(cx) {
            if let Err(error) = result {
                tracing::debug!(error = %error, "upstream connection ended");
            }
            self.conn = None;
        }
    }

    /// Runs the connection until `answer`, a request sent on it, is answered. Only the
    /// connection answers it, and only while driven here, so `answer` is polled without a
    /// waker (with one, its completion would wake this task again for nothing).
    async fn answer<T>(&mut self, answer: impl Future<Output = T>) -> T {
        let mut answer = std::pin::pin!(answer);
        std::future::poll_fn(|cx| {
            self.drive(cx);
            answer
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
        })
        .await
    }

    /// Polled once without a waker: notices an answer's end or a close by the upstream.
    fn drive_now(&mut self) {
        self.drive(&mut Context::from_waker(Waker::noop()));
    }

    fn is_usable(&self) -> bool {
        self.conn.is_some() && !self.sender.is_closed()
    }
}

/// A connection lent to one request; goes back to its pool once the answer has been read.
/// Its body is read through [`Lease::poll_frame`], which runs the connection.
pub struct Lease {
    link: Link,
    pool: Arc<OriginPool>,
}

impl Lease {
    /// The body's next frame. The connection's reads and writes run here, on the caller's
    /// task (it has no task of its own); the caller is woken when it can make progress.
    ///
    /// Only this connection fills the body, and only while it is driven here, so the body is
    /// polled without a waker: waking on the body too would only wake this task again for a
    /// frame it has just been given.
    pub fn poll_frame(
        &mut self,
        body: &mut Incoming,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut no_waker = Context::from_waker(Waker::noop());
        if let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(&mut no_waker) {
            return Poll::Ready(frame);
        }
        self.link.drive(cx);
        Pin::new(body).poll_frame(&mut no_waker)
    }

    /// The body's next frame (see [`Lease::poll_frame`]).
    pub async fn next_frame(
        &mut self,
        body: &mut Incoming,
    ) -> Option<Result<Frame<Bytes>, hyper::Error>> {
        std::future::poll_fn(|cx| self.poll_frame(body, cx)).await
    }

    /// Back to the pool; the connection moves to its next exchange when it is next driven,
    /// at check-out.
    pub fn give_back(self) {
        self.pool.check_in(self.link);
    }
}

impl OriginPool {
    /// A pool for `base_url` when it is plain `http://` with a host; `None` otherwise.
    pub fn for_base_url(base_url: &str) -> Option<Arc<Self>> {
        let uri: Uri = base_url.parse().ok()?;
        if uri.scheme_str() != Some("http") || uri.query().is_some() {
            return None;
        }
        let authority: &Authority = uri.authority()?;
        let port = authority.port_u16().unwrap_or(80);
        // `user:password@` (if the URL has one) is not part of the Host header.
        let host_and_port = authority.as_str().rsplit('@').next()?;
        let host = HeaderValue::from_str(host_and_port).ok()?;
        Some(Arc::new(Self {
            address: format!("{}:{port}", authority.host()),
            host,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            idle: Mutex::new(VecDeque::new()),
            reaper_started: AtomicBool::new(false),
        }))
    }

    /// The origin-form target (`/v1/chat/completions`) of `path` under this base URL.
    pub fn target(&self, path: &str) -> Result<Uri, String> {
        let mut target = String::with_capacity(self.base_path.len() + path.len());
        target.push_str(&self.base_path);
        target.push_str(path);
        PathAndQuery::from_maybe_shared(Bytes::from(target))
            .map(Uri::from)
            .map_err(|e| format!("invalid upstream URL: {e}"))
    }

    /// Sends `request` on an idle connection, or a new one. A request that an idle connection
    /// closed before writing (the upstream dropped it while idle) goes once more on a new one.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease), String> {
        request.headers_mut().insert(HOST, self.host.clone());
        let (mut link, reused) = match self.check_out().await {
            Some(link) => (link, true),
            None => (self.connect().await?, false),
        };
        let answer = link.sender.try_send_request(request);
        match link.answer(answer).await {
            Ok(response) => Ok((response, self.lease(link))),
            Err(mut failed) => match failed.take_message() {
                Some(request) if reused => {
                    let mut link = self.connect().await?;
                    let answer = link.sender.send_request(request);
                    let response = link.answer(answer).await.map_err(|e| describe(&e))?;
                    Ok((response, self.lease(link)))
                }
                _ => Err(describe(&failed.into_error())),
            },
        }
    }

    fn lease(self: &Arc<Self>, link: Link) -> Lease {
        Lease {
            link,
            pool: Arc::clone(self),
        }
    }

    /// The most recently used live connection. One given back a moment ago may still be
    /// finishing its last exchange: it gets [`READY_WAIT`], then the next one is tried.
    async fn check_out(&self) -> Option<Link> {
        loop {
            let Idle { mut link, since } = self.lock().pop_back()?;
            if since.elapsed() >= POOL_IDLE_TIMEOUT {
                continue;
            }
            link.drive_now();
            if !link.is_usable() {
                continue;
            }
            if link.sender.is_ready() {
                return Some(link);
            }
            let ready = std::future::poll_fn(|cx| {
                link.drive(cx);
                if link.conn.is_none() {
                    return Poll::Ready(false);
                }
                link.sender.poll_ready(cx).map(|ready| ready.is_ok())
            });
            if let Ok(true) = tokio::time::timeout(READY_WAIT, ready).await {
                return Some(link);
            }
        }
    }

    fn check_in(&self, link: Link) {
        if !link.is_usable() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock();
        if idle
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.since) >= POOL_IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        if idle.len() < POOL_MAX_IDLE_PER_HOST {
            idle.push_back(Idle { link, since: now });
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

    async fn connect(self: &Arc<Self>) -> Result<Link, String> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.address))
            .await
            .map_err(|_| format!("connecting to {} timed out", self.address))?
            .map_err(|e| format!("connecting to {}: {e}", self.address))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("connecting to {}: {e}", self.address))?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| describe(&e))?;
        if !self.reaper_started.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap_idle(Arc::downgrade(self)));
        }
        Ok(Link {
            sender,
            conn: Some(Box::new(conn)),
        })
    }
}

/// Closes connections idle for longer than [`POOL_IDLE_TIMEOUT`], or closed by the upstream,
/// while no request comes to take them; ends with the pool.
async fn reap_idle(pool: Weak<OriginPool>) {
    let mut tick = tokio::time::interval(POOL_IDLE_TIMEOUT / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        pool.lock().retain_mut(|idle| {
            idle.link.drive_now();
            idle.link.is_usable() && now.duration_since(idle.since) < POOL_IDLE_TIMEOUT
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn only_plain_http_base_urls_get_a_pool() {
        let pool = OriginPool::for_base_url("http://127.0.0.1:8000/v1/");
        let pool = pool.as_deref();
        assert_eq!(pool.map(|p| p.address.as_str()), Some("127.0.0.1:8000"));
        assert_eq!(
            pool.map(|p| p.host.as_bytes()),
            Some(&b"127.0.0.1:8000"[..])
        );
        let with_user = OriginPool::for_base_url("http://user:secret@10.0.0.1:8000/v1");
        assert_eq!(
            with_user.as_deref().map(|p| p.host.as_bytes()),
            Some(&b"10.0.0.1:8000"[..])
        );
        let target = pool.and_then(|p| p.target("/chat/completions").ok());
        assert_eq!(
            target.map(|t| t.to_string()).as_deref(),
            Some("/v1/chat/completions")
        );
        let bare = OriginPool::for_base_url("http://ollama");
        assert_eq!(
            bare.as_deref().map(|p| p.address.as_str()),
            Some("ollama:80")
        );
        assert_eq!(
            bare.and_then(|p| p.target("/api/chat").ok())
                .map(|t| t.to_string())
                .as_deref(),
            Some("/api/chat")
        );
        assert!(OriginPool::for_base_url("https://api.openai.com/v1").is_none());
        assert!(OriginPool::for_base_url("not a url").is_none());
    }

    /// A server that answers each request with `parts` (50 ms apart) on a kept-alive
    /// connection, closing each connection after `per_connection` answers without saying
    /// so; counts connections.
    pub(crate) async fn scripted_upstream(
        per_connection: usize,
        parts: &'static [&'static [u8]],
    ) -> Option<(String, Arc<AtomicUsize>)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
        let address = listener.local_addr().ok()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = vec![0; 4096];
                    for _ in 0..per_connection {
                        let mut seen = Vec::new();
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match socket.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buffer[..n]),
                            }
                        }
                        for (i, part) in parts.iter().enumerate() {
                            if i > 0 {
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            }
                            if socket.write_all(part).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Some((format!("http://{address}"), accepted))
    }

    const OK: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"];

    /// A pool on a [`scripted_upstream`], and the upstream's connection count.
    async fn pool_on_scripted_upstream(
        per_connection: usize,
        parts: &'static [&'static [u8]],
    ) -> (Arc<OriginPool>, Arc<AtomicUsize>) {
        let Some((base, accepted)) = scripted_upstream(per_connection, parts).await else {
            panic!("the test upstream binds");
        };
        let Some(pool) = OriginPool::for_base_url(&base) else {
            panic!("a plain-HTTP base URL gets a pool");
        };
        (pool, accepted)
    }

    async fn get(pool: &Arc<OriginPool>) -> Result<Vec<u8>, String> {
        let request = Request::get(pool.target("/")?)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let (response, mut lease) = pool.send(request).await?;
        let mut body = response.into_body();
        let mut read = Vec::new();
        while let Some(frame) = lease.next_frame(&mut body).await {
            let frame = frame.map_err(|e| e.to_string())?;
            read.extend_from_slice(frame.data_ref().map_or(&[][..], |data| &data[..]));
        }
        lease.give_back();
        Ok(read)
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_is_read() {
        let (pool, accepted) = pool_on_scripted_upstream(usize::MAX, OK).await;
        for _ in 0..5 {
            assert_eq!(get(&pool).await.as_deref(), Ok(&b"ok"[..]));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.lock().len(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_dropped_while_idle_is_replaced() {
        let (pool, accepted) = pool_on_scripted_upstream(1, OK).await;
        for _ in 0..3 {
            assert_eq!(get(&pool).await.as_deref(), Ok(&b"ok"[..]));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_answer_that_closes_its_connection_is_read_whole_and_not_reused() {
        const CLOSING: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhel",
            b"lo",
        ];
        // The upstream would keep the connection: only its `connection: close` says not to.
        let (pool, accepted) = pool_on_scripted_upstream(usize::MAX, CLOSING).await;
        for _ in 0..2 {
            assert_eq!(get(&pool).await.as_deref(), Ok(&b"hello"[..]));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_count(), 0);
    }

    /// Requests on tasks of their own, each driving its connection: every one is answered and
    /// the connections they opened are all kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_each_drive_their_own_connection() {
        let (pool, accepted) = pool_on_scripted_upstream(usize::MAX, OK).await;
        for _ in 0..3 {
            let requests: Vec<_> = (0..16)
                .map(|_| {
                    let pool = Arc::clone(&pool);
                    tokio::spawn(async move { get(&pool).await })
                })
                .collect();
            for request in requests {
                let answer = request.await.map_err(|e| e.to_string());
                assert_eq!(answer.and_then(|a| a).as_deref(), Ok(&b"ok"[..]));
            }
        }
        let opened = accepted.load(Ordering::SeqCst);
        assert!((1..=48).contains(&opened), "{opened}");
        assert_eq!(pool.idle_count(), opened);
    }

    #[tokio::test]
    async fn an_upstream_that_is_down_is_a_connect_error() {
        let Some(pool) = OriginPool::for_base_url("http://127.0.0.1:9") else {
            panic!("a plain-HTTP base URL gets a pool");
        };
        let error = get(&pool).await.err().unwrap_or_default();
        assert!(error.starts_with("connecting to 127.0.0.1:9: "), "{error}");
    }
}
