use std::sync::atomic::AtomicUsize;

use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::providers::resend::RACE_WINDOW;

/// The default idle timeout, for pools and endpoints the tests build.
pub(crate) const IDLE: Duration = Duration::from_secs(90);

#[test]
fn only_plain_http_base_urls_get_a_pool() {
    let pool = OriginPool::for_base_url("http://127.0.0.1:8000/v1/", None, IDLE);
    let pool = pool.as_deref();
    assert_eq!(pool.map(|p| p.address.as_str()), Some("127.0.0.1:8000"));
    assert_eq!(
        pool.map(|p| p.host.as_bytes()),
        Some(&b"127.0.0.1:8000"[..])
    );
    let with_user = OriginPool::for_base_url("http://user:secret@10.0.0.1:8000/v1", None, IDLE);
    assert_eq!(
        with_user.as_deref().map(|p| p.host.as_bytes()),
        Some(&b"10.0.0.1:8000"[..])
    );
    let target = pool.and_then(|p| p.target("/chat/completions").ok());
    assert_eq!(
        target.map(|t| t.to_string()).as_deref(),
        Some("/v1/chat/completions")
    );
    let bare = OriginPool::for_base_url("http://ollama", None, IDLE);
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
    assert!(OriginPool::for_base_url("https://api.openai.com/v1", None, IDLE).is_none());
    assert!(OriginPool::for_base_url("not a url", None, IDLE).is_none());
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
    let accepted = serve_counted(listener, move |mut socket| async move {
        for _ in 0..per_connection {
            if !read_head(&mut socket).await {
                return;
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
    Some((format!("http://{address}"), accepted))
}

/// Serves each connection `listener` accepts with `serve`, on a task of its own; counts them.
fn serve_counted<F, Served>(listener: tokio::net::TcpListener, serve: F) -> Arc<AtomicUsize>
where
    F: Fn(tokio::net::TcpStream) -> Served + Send + 'static,
    Served: Future<Output = ()> + Send + 'static,
{
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(socket));
        }
    });
    accepted
}

/// Reads a request's head (and whatever came with it); `false` when the client closed first.
pub(crate) async fn read_head(socket: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
    let mut buffer = [0; 4096];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
        }
    }
    true
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
    let Some(pool) = OriginPool::for_base_url(&base, None, IDLE) else {
        panic!("a plain-HTTP base URL gets a pool");
    };
    (pool, accepted)
}

async fn get(pool: &Arc<OriginPool>) -> Result<Vec<u8>, String> {
    let target = pool.target("/")?;
    let request = PlainRequest {
        method: &Method::GET,
        target: target.path(),
        json: false,
        fields: &[],
        body: b"",
    };
    let mut answer = pool.send(&request).await?;
    let mut read = Vec::new();
    while let Some(piece) = answer.body.next_frame().await {
        read.extend_from_slice(&piece?);
    }
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

#[tokio::test(flavor = "current_thread")]
async fn answers_on_kept_connections_are_timed_where_busy_polling_runs() {
    let (pool, _) = pool_on_scripted_upstream(usize::MAX, OK).await;
    assert_eq!(get(&pool).await.as_deref(), Ok(&b"ok"[..])); // a new connection: not timed
    assert_eq!(get(&pool).await.as_deref(), Ok(&b"ok"[..])); // no spinner: not timed
    assert_eq!(pool.answer_time.expected(), None);
    crate::busy_poll::start(Duration::from_millis(1));
    assert_eq!(get(&pool).await.as_deref(), Ok(&b"ok"[..]));
    let took = pool.answer_time.expected();
    assert!(
        took.is_some_and(|took| took < Duration::from_secs(5)),
        "{took:?}"
    );
}

/// An upstream that answers each request with the request's own bytes, head and body.
async fn echo_upstream() -> Option<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
    let address = listener.local_addr().ok()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buffer = vec![0; 64 * 1024];
                loop {
                    let end = seen.windows(4).position(|w| w == b"\r\n\r\n");
                    let length = end.and_then(|end| {
                        let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                        let value = head.split("content-length: ").nth(1)?;
                        let digits = value.split("\r\n").next()?;
                        Some(end + 4 + digits.parse::<usize>().ok()?)
                    });
                    if let Some(length) = length.filter(|&length| seen.len() >= length) {
                        let request: Vec<u8> = seen.drain(..length).collect();
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n");
                        if socket.write_all(head.as_bytes()).await.is_err()
                            || socket.write_all(&request).await.is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buffer[..n]),
                    }
                }
            });
        }
    });
    Some(format!("http://{address}"))
}

/// A kept connection reuses its request buffer: each request, shorter or longer than the
/// last, arrives exactly as encoded afresh; a buffer above the kept size is let go.
#[tokio::test]
async fn a_reused_request_buffer_carries_each_request_intact() {
    let Some(base) = echo_upstream().await else {
        panic!("the test upstream binds");
    };
    let Some(pool) = OriginPool::for_base_url(&base, None, IDLE) else {
        panic!("a plain-HTTP base URL gets a pool");
    };
    let auth = [(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer k"),
    )];
    let bodies = [
        b"{\"a\":1}".to_vec(),
        vec![b'x'; 3000],
        vec![b'z'; 10 * 1024],
        vec![b'y'; KEPT_WRITE_BUFFER + 1],
        b"{\"b\":2}".to_vec(),
        b"{}".to_vec(),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let fields: &[_] = if i % 2 == 0 { &auth } else { &[] };
        let request = PlainRequest {
            method: &Method::POST,
            target: "/chat/completions",
            json: i % 2 == 0,
            fields,
            body,
        };
        let mut expected = Vec::new();
        h1::encode_request(&mut expected, &request, pool.host.as_bytes());
        let answer = pool.send(&request).await;
        let Ok(mut answer) = answer else {
            panic!("request {i} is answered");
        };
        let mut echoed = Vec::new();
        while let Some(piece) = answer.body.next_frame().await {
            echoed.extend_from_slice(&piece.unwrap_or_default());
        }
        assert!(echoed == expected, "request {i} arrived as encoded");
        let kept = pool.lock().back().map(|idle| idle.conn.write.capacity());
        let Some(kept) = kept else {
            panic!("the connection went back to the pool");
        };
        assert!(kept <= KEPT_WRITE_BUFFER, "request {i}: kept {kept} bytes");
        assert_eq!(kept > 0, expected.len() <= KEPT_WRITE_BUFFER, "request {i}");
        assert_eq!(pool.lock().len(), 1, "one connection carried them all");
    }
}

/// An upstream that says it keeps idle connections for a second (`Keep-Alive: timeout=1`)
/// is not sent a request on one idle for longer than half of that, although this one keeps
/// them open: the request would race the upstream's close. Without the field, the same idle
/// connection is reused.
#[tokio::test]
async fn an_idle_connection_is_not_reused_past_the_upstreams_keep_alive_timeout() {
    const SAYS_ONE_SECOND: &[&[u8]] =
        &[b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1, max=100\r\ncontent-length: 2\r\n\r\nok"];
    for (parts, connections) in [(SAYS_ONE_SECOND, 2), (OK, 1)] {
        let (pool, accepted) = pool_on_scripted_upstream(usize::MAX, parts).await;
        for _ in 0..2 {
            assert_eq!(get(&pool).await.as_deref(), Ok(&b"ok"[..]));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "reused while fresh");
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(get(&pool).await.as_deref(), Ok(&b"ok"[..]));
        assert_eq!(accepted.load(Ordering::SeqCst), connections);
        assert_eq!(pool.idle_count(), 1, "the stale one is closed");
    }
}

/// A pool's own idle timeout (the provider's `pool_idle_timeout`) bounds reuse too, for an
/// upstream that keeps its connections and says nothing.
#[tokio::test]
async fn an_idle_connection_is_not_reused_past_the_pools_idle_timeout() {
    let Some((base, accepted)) = scripted_upstream(usize::MAX, OK).await else {
        panic!("the test upstream binds");
    };
    let Some(pool) = OriginPool::for_base_url(&base, None, Duration::from_secs(1)) else {
        panic!("a plain-HTTP base URL gets a pool");
    };
    for _ in 0..2 {
        assert_eq!(get(&pool).await.as_deref(), Ok(&b"ok"[..]));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "reused while fresh");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(&pool).await.as_deref(), Ok(&b"ok"[..]));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_the_upstream_dropped_while_idle_is_replaced() {
    let (pool, accepted) = pool_on_scripted_upstream(1, OK).await;
    for _ in 0..3 {
        assert_eq!(get(&pool).await.as_deref(), Ok(&b"ok"[..]));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

/// An upstream that answers `answered` requests on each connection, then reads the next
/// request and, `after` that, drops the connection without a byte of an answer (closed, or
/// reset when `reset`): at once, its keep-alive timeout firing as the request arrived; later,
/// a crash while at work. Counts connections.
async fn dropping_upstream(
    answered: usize,
    reset: bool,
    after: Duration,
) -> (Arc<OriginPool>, Arc<AtomicUsize>) {
    let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
        panic!("the test upstream binds");
    };
    let Ok(address) = listener.local_addr() else {
        panic!("the test upstream has an address");
    };
    let accepted = serve_counted(listener, move |mut socket| async move {
        for _ in 0..answered {
            if !read_head(&mut socket).await || socket.write_all(OK[0]).await.is_err() {
                return;
            }
        }
        if read_head(&mut socket).await {
            tokio::time::sleep(after).await;
            if reset {
                let _ = socket.set_zero_linger();
            }
        }
    });
    let Ok(resent) = IntCounter::new("resent", "requests sent again") else {
        panic!("a valid metric name");
    };
    let Some(pool) = OriginPool::for_base_url(&format!("http://{address}"), Some(resent), IDLE)
    else {
        panic!("a plain-HTTP base URL gets a pool");
    };
    (pool, accepted)
}

fn resent(pool: &OriginPool) -> u64 {
    pool.resent.as_ref().map_or(0, IntCounter::get)
}

/// The keep-alive race: a kept connection taken for a request as the upstream drops it. The
/// request goes once more on a new connection instead of failing (a failure would count
/// against the provider's circuit breaker). A new connection dropped so is an error.
#[tokio::test]
async fn a_kept_connection_dropped_as_the_request_arrives_is_replaced() {
    for reset in [false, true] {
        let (pool, accepted) = dropping_upstream(1, reset, Duration::ZERO).await;
        for round in 1..=3 {
            assert_eq!(get(&pool).await.as_deref(), Ok(&b"ok"[..]), "reset {reset}");
            assert_eq!(accepted.load(Ordering::SeqCst), round, "reset {reset}");
            // Every request but the first found its kept connection dropped: counted.
            assert_eq!(resent(&pool), round as u64 - 1, "reset {reset}");
        }
        let (pool, accepted) = dropping_upstream(0, reset, Duration::ZERO).await;
        let error = get(&pool).await.err().unwrap_or_default();
        assert!(
            error.contains("(upstream 127.0.0.1:"),
            "reset {reset}: {error}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "reset {reset}");
        assert_eq!(
            resent(&pool),
            0,
            "reset {reset}: a new connection is not sent again"
        );
    }
}

/// A kept connection dropped without an answer longer than [`RACE_WINDOW`] after the request
/// went out is not the race: the upstream was at work on it, and the request is not repeated.
#[tokio::test]
async fn a_kept_connection_dropped_long_after_the_request_went_out_is_a_failure() {
    let (pool, accepted) =
        dropping_upstream(1, true, RACE_WINDOW + Duration::from_millis(200)).await;
    assert_eq!(get(&pool).await.as_deref(), Ok(&b"ok"[..]));
    let error = get(&pool).await.err().unwrap_or_default();
    assert!(error.contains("(upstream 127.0.0.1:"), "{error}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "not sent again");
    assert_eq!(resent(&pool), 0);
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
    let Some(pool) = OriginPool::for_base_url("http://127.0.0.1:9", None, IDLE) else {
        panic!("a plain-HTTP base URL gets a pool");
    };
    let error = get(&pool).await.err().unwrap_or_default();
    assert!(error.starts_with("connecting to 127.0.0.1:9: "), "{error}");
}

#[tokio::test]
async fn a_broken_answer_names_the_upstream() {
    const CUT_SHORT: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nhel"];
    const NOT_HTTP: &[&[u8]] = &[b"SSH-2.0-OpenSSH\r\n\r\n"];
    for parts in [CUT_SHORT, NOT_HTTP] {
        let (pool, _) = pool_on_scripted_upstream(1, parts).await;
        let error = get(&pool).await.err().unwrap_or_default();
        assert!(
            error.ends_with(&format!(" (upstream {})", pool.address)),
            "{error}"
        );
    }
}

/// An upstream that answers a large request after its head, reads nothing more and keeps the
/// connection open: its answer still comes back, and the connection is not kept.
#[tokio::test]
async fn an_answer_before_the_whole_request_was_read_comes_back() {
    const TOO_LARGE: &[u8] =
        b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 9\r\n\r\ntoo large";
    let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
        panic!("the test upstream binds");
    };
    let Ok(address) = listener.local_addr() else {
        panic!("the test upstream has an address");
    };
    let (test_done, until_test_done) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let mut buffer = vec![0; 4096];
        let mut seen = Vec::new();
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buffer[..n]),
            }
        }
        if socket.write_all(TOO_LARGE).await.is_ok() {
            // Keeps the connection, reading nothing, until the test ends.
            let _ = until_test_done.await;
        }
    });
    let Some(pool) = OriginPool::for_base_url(&format!("http://{address}"), None, IDLE) else {
        panic!("a plain-HTTP base URL gets a pool");
    };
    // Far more than the socket buffers hold, so the write cannot finish.
    let body = vec![b'a'; 64 * 1024 * 1024];
    let request = PlainRequest {
        method: &Method::POST,
        target: "/",
        json: false,
        fields: &[],
        body: &body,
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), pool.send(&request)).await;
    let Ok(Ok(mut answer)) = answer else {
        panic!("the early answer came back");
    };
    assert_eq!(answer.head.status.as_u16(), 413);
    let mut read = Vec::new();
    while let Some(piece) = answer.body.next_frame().await {
        read.extend_from_slice(&piece.unwrap_or_default());
    }
    assert_eq!(read, b"too large");
    assert_eq!(pool.idle_count(), 0);
    let _ = test_done.send(());
}
