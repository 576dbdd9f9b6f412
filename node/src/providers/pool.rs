//! Keep-alive HTTP/1.1 connections to one plain-HTTP upstream origin, reused newest first.
//!
//! Self-hosted inference servers (vLLM, llama.cpp, Ollama, the mock) are reached over plain
//! HTTP on a private network, where the gateway's own microseconds show. hyper-util's pooled
//! client hashes its pool key with SipHash at checkout and at return, boxes the checkout and
//! spawns a task per request to put the connection back. This pool belongs to one endpoint,
//! so a checkout is a pop under an uncontended lock, and the connection goes back as soon as
//! its answer has been read. TLS upstreams keep hyper-util's client (ALPN, HTTP/2).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::http::{CONNECT_TIMEOUT, POOL_IDLE_TIMEOUT, POOL_MAX_IDLE_PER_HOST, describe};

type Sender = SendRequest<Full<Bytes>>;

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
    sender: Sender,
    since: Instant,
}

/// A connection lent to one request; goes back to its pool once the answer has been read.
pub struct Lease {
    sender: Sender,
    pool: Arc<OriginPool>,
}

impl Lease {
    pub fn give_back(self) {
        self.pool.check_in(self.sender);
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
        let (mut sender, reused) = match self.check_out().await {
            Some(sender) => (sender, true),
            None => (self.connect().await?, false),
        };
        match sender.try_send_request(request).await {
            Ok(response) => Ok((response, self.lease(sender))),
            Err(mut failed) => match failed.take_message() {
                Some(request) if reused => {
                    let mut sender = self.connect().await?;
                    let response = sender
                        .send_request(request)
                        .await
                        .map_err(|e| describe(&e))?;
                    Ok((response, self.lease(sender)))
                }
                _ => Err(describe(&failed.into_error())),
            },
        }
    }

    fn lease(self: &Arc<Self>, sender: Sender) -> Lease {
        Lease {
            sender,
            pool: Arc::clone(self),
        }
    }

    /// The most recently used live connection. One given back a moment ago may still be
    /// finishing its last exchange: it gets [`READY_WAIT`], then the next one is tried.
    async fn check_out(&self) -> Option<Sender> {
        loop {
            let mut idle = self.lock().pop_back()?;
            if idle.sender.is_closed() || idle.since.elapsed() >= POOL_IDLE_TIMEOUT {
                continue;
            }
            if idle.sender.is_ready() {
                return Some(idle.sender);
            }
            let ready = tokio::time::timeout(READY_WAIT, idle.sender.ready()).await;
            if matches!(ready, Ok(Ok(()))) {
                return Some(idle.sender);
            }
        }
    }

    fn check_in(&self, sender: Sender) {
        if sender.is_closed() {
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
            idle.push_back(Idle { sender, since: now });
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

    async fn connect(self: &Arc<Self>) -> Result<Sender, String> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.address))
            .await
            .map_err(|_| format!("connecting to {} timed out", self.address))?
            .map_err(|e| format!("connecting to {}: {e}", self.address))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("connecting to {}: {e}", self.address))?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| describe(&e))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "upstream connection ended");
            }
        });
        if !self.reaper_started.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap_idle(Arc::downgrade(self)));
        }
        Ok(sender)
    }
}

/// Closes connections idle for longer than [`POOL_IDLE_TIMEOUT`] while no request comes to
/// take them; ends with the pool.
async fn reap_idle(pool: Weak<OriginPool>) {
    let mut tick = tokio::time::interval(POOL_IDLE_TIMEOUT / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        pool.lock().retain(|idle| {
            !idle.sender.is_closed() && now.duration_since(idle.since) < POOL_IDLE_TIMEOUT
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

    async fn get(pool: &Arc<OriginPool>) -> Result<Vec<u8>, String> {
        let request = Request::get(pool.target("/")?)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let (response, lease) = pool.send(request).await?;
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map_err(|e| e.to_string())?;
        lease.give_back();
        Ok(body.to_bytes().to_vec())
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_is_read() {
        let Some((base, accepted)) = scripted_upstream(usize::MAX, OK).await else {
            panic!("the test upstream binds");
        };
        let Some(pool) = OriginPool::for_base_url(&base) else {
            panic!("a plain-HTTP base URL gets a pool");
        };
        for _ in 0..5 {
            assert_eq!(get(&pool).await.as_deref(), Ok(&b"ok"[..]));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.lock().len(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_dropped_while_idle_is_replaced() {
        let Some((base, accepted)) = scripted_upstream(1, OK).await else {
            panic!("the test upstream binds");
        };
        let Some(pool) = OriginPool::for_base_url(&base) else {
            panic!("a plain-HTTP base URL gets a pool");
        };
        for _ in 0..3 {
            assert_eq!(get(&pool).await.as_deref(), Ok(&b"ok"[..]));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
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
