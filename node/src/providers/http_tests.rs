use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::IntCounter;
use tokio::io::AsyncWriteExt;

use super::super::pool::tests::IDLE;
use super::super::pool::tests::read_head;
use super::*;

/// A stream's reader stops before the chunked terminator arrives (as the translators
/// do at `[DONE]`): the connection is still given back and reused.
#[tokio::test]
async fn a_body_dropped_before_its_end_keeps_its_connection() {
    const CHUNKED: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n",
        b"0\r\n\r\n",
    ];
    let upstream = super::super::pool::tests::scripted_upstream(usize::MAX, CHUNKED).await;
    let Some((base_url, accepted)) = upstream else {
        panic!("the test upstream binds");
    };
    let Ok(client) = HttpClient::new() else {
        panic!("the client builds");
    };
    let endpoint = Endpoint::new(base_url, None, None, IDLE);
    for _ in 0..3 {
        let response = send(client.get(&endpoint, "/stream"), None).await;
        let Ok(response) = response else {
            panic!("the upstream answers");
        };
        let mut frames = response.bytes_stream();
        let first = frames.next().await;
        assert_eq!(first.and_then(Result::ok).as_deref(), Some(&b"first"[..]));
        drop(frames);
        let pool = endpoint.plain_pool.as_deref();
        for _ in 0..100 {
            if pool.is_some_and(|p| p.idle_count() == 1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(pool.map(|p| p.idle_count()), Some(1));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// A TLS upstream on loopback, offering `alpn`: serves each connection it accepts with
/// `serve`. Gives its base URL, its connection count, and a client that trusts it.
async fn tls_upstream<F, Served>(alpn: &[u8], serve: F) -> (String, Arc<AtomicUsize>, HttpClient)
where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Served + Send + 'static,
    Served: Future<Output = ()> + Send + 'static,
{
    let Ok(params) = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]) else {
        panic!("certificate parameters");
    };
    let Ok(key) = rcgen::KeyPair::generate() else {
        panic!("a key pair");
    };
    let Ok(cert) = params.self_signed(&key) else {
        panic!("a self-signed certificate");
    };
    let key = rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_no_client_auth()
                .with_single_cert(vec![cert.der().clone()], key.into())
        });
    let mut roots = rustls::RootCertStore::empty();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            roots.add(cert.der().clone())?;
            Ok(b.with_root_certificates(roots).with_no_client_auth())
        });
    let (Ok(mut server), Ok(client)) = (server, client) else {
        panic!("the TLS configurations build");
    };
    server.alpn_protocols = vec![alpn.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
        panic!("the test upstream binds");
    };
    let Ok(address) = listener.local_addr() else {
        panic!("the test upstream has an address");
    };
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            if let Ok(tls) = acceptor.accept(socket).await {
                tokio::spawn(serve(tls));
            }
        }
    });
    (
        format!("https://{address}"),
        accepted,
        HttpClient::with_tls(client),
    )
}

/// An HTTP/1.1 TLS upstream that answers `answered` requests on each connection, then reads
/// the next one and drops the connection without a byte of an answer (a TLS close and FIN, or
/// a reset when `reset`): its keep-alive timeout firing as the request arrived.
async fn dropping_tls_upstream(
    answered: usize,
    reset: bool,
) -> (String, Arc<AtomicUsize>, HttpClient) {
    tls_upstream(b"http/1.1", move |mut tls| async move {
        for _ in 0..answered {
            if !read_head(&mut tls).await
                || tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .is_err()
                || tls.flush().await.is_err()
            {
                return;
            }
        }
        if read_head(&mut tls).await {
            if reset {
                let _ = tls.get_ref().0.set_zero_linger();
            } else {
                let _ = tls.shutdown().await;
            }
        }
    })
    .await
}

/// `GET /` through `client`, its body read.
async fn get_body(client: &HttpClient, endpoint: &Endpoint) -> Result<Vec<u8>, String> {
    match send(client.get(endpoint, "/"), None).await {
        Ok(response) => read_body(response).await.map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    }
}

fn counted_endpoint(base: String) -> (Endpoint, IntCounter) {
    let Ok(resent) = IntCounter::new("resent", "requests sent again") else {
        panic!("a valid metric name");
    };
    (
        Endpoint::new(base, None, Some(resent.clone()), IDLE),
        resent,
    )
}

/// The keep-alive race on a TLS upstream: a request that went out on a kept connection as
/// the upstream dropped it goes once more, on a new connection, instead of failing (and
/// counting against the provider's breaker). Counted as a resend. Dropped again, it fails.
#[tokio::test]
async fn a_tls_connection_dropped_as_the_request_arrives_is_resent() {
    for reset in [false, true] {
        let (base, accepted, client) = dropping_tls_upstream(1, reset).await;
        let (endpoint, resent) = counted_endpoint(base);
        for round in 1..=2 {
            let answer = get_body(&client, &endpoint).await;
            assert_eq!(
                answer.as_deref(),
                Ok(&b"ok"[..]),
                "reset {reset}, round {round}"
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "reset {reset}");
        assert_eq!(
            resent.get(),
            1,
            "reset {reset}: the second request went twice"
        );

        let (base, accepted, client) = dropping_tls_upstream(0, reset).await;
        let (endpoint, resent) = counted_endpoint(base);
        let failed = send(client.get(&endpoint, "/"), None).await;
        assert!(
            matches!(failed, Err(ProviderError::Connect(_))),
            "reset {reset}: dropped twice, it fails"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "reset {reset}");
        assert_eq!(resent.get(), 1, "reset {reset}: sent again once, not more");
    }
}

/// Over HTTP/2, a stream the upstream refuses (`REFUSED_STREAM`: never processed) goes once
/// more; a connection lost under a stream does not, since the upstream may have been at work
/// on it.
#[tokio::test]
async fn an_http2_stream_is_resent_only_when_the_upstream_refused_it() {
    for refuse in [true, false] {
        let (base, accepted, client) = tls_upstream(b"h2", move |tls| async move {
            let Ok(mut connection) = h2::server::handshake(tls).await else {
                return;
            };
            let mut streams = 0;
            while let Some(Ok((_request, mut respond))) = connection.accept().await {
                streams += 1;
                if streams == 1 && !refuse {
                    return; // the connection lost, without a GOAWAY
                }
                if streams == 1 {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    continue;
                }
                let head = http::Response::new(());
                if let Ok(mut body) = respond.send_response(head, false) {
                    let _ = body.send_data(Bytes::from_static(b"ok"), true);
                }
            }
        })
        .await;
        let (endpoint, resent) = counted_endpoint(base);
        let answer = get_body(&client, &endpoint).await;
        if refuse {
            assert_eq!(answer.as_deref(), Ok(&b"ok"[..]));
            assert_eq!(resent.get(), 1, "the refused stream went again");
        } else {
            assert!(
                answer.is_err(),
                "a lost connection is a failure: {answer:?}"
            );
            assert_eq!(resent.get(), 0, "and its stream is not sent again");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "refuse {refuse}");
    }
}

/// Over HTTP/2, a GOAWAY that names a last stream below the request's says the upstream
/// never processed it (the request crossed the GOAWAY of a front end closing the connection):
/// it goes once more, on a new connection. A GOAWAY that names the request's stream as processed, followed by the
/// connection's close, is a failure: the upstream may have been at work on it.
#[tokio::test]
async fn an_http2_stream_shut_out_by_a_goaway_is_resent() {
    for last_processed in [0, 1] {
        let connections = Arc::new(AtomicUsize::new(0));
        let (base, accepted, client) = tls_upstream(b"h2", move |tls| {
            let first = connections.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    go_away_after_first_request(tls, last_processed).await;
                } else {
                    answer_ok_over_h2(tls).await;
                }
            }
        })
        .await;
        let (endpoint, resent) = counted_endpoint(base);
        let answer = get_body(&client, &endpoint).await;
        if last_processed == 0 {
            assert_eq!(answer.as_deref(), Ok(&b"ok"[..]));
            assert_eq!(resent.get(), 1, "the shut-out stream went again");
            assert_eq!(accepted.load(Ordering::SeqCst), 2, "on a new connection");
        } else {
            assert!(answer.is_err(), "a processed stream lost: {answer:?}");
            assert_eq!(resent.get(), 0, "a processed stream is not sent again");
            assert_eq!(accepted.load(Ordering::SeqCst), 1);
        }
    }
}

/// Raw HTTP/2 frames (h2's server always names every stream it has read as processed): the
/// settings exchange, then, at the first request's HEADERS, a GOAWAY naming
/// `last_processed` (`NO_ERROR`, as a graceful shutdown) and the connection closed.
async fn go_away_after_first_request(
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    last_processed: u32,
) {
    use tokio::io::AsyncReadExt;
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const ACK: u8 = 0x1;
    let frame = |kind: u8, flags: u8, payload: &[u8]| {
        let length = u32::try_from(payload.len())
            .unwrap_or_default()
            .to_be_bytes();
        let mut frame = length[1..].to_vec();
        frame.extend_from_slice(&[kind, flags, 0, 0, 0, 0]);
        frame.extend_from_slice(payload);
        frame
    };
    let mut preface = [0u8; 24];
    if tls.read_exact(&mut preface).await.is_err()
        || tls.write_all(&frame(SETTINGS, 0, &[])).await.is_err()
    {
        return;
    }
    loop {
        let mut head = [0u8; 9];
        if tls.read_exact(&mut head).await.is_err() {
            return;
        }
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; length];
        if tls.read_exact(&mut payload).await.is_err() {
            return;
        }
        let written = match head[3] {
            HEADERS => {
                let mut go_away = last_processed.to_be_bytes().to_vec();
                go_away.extend_from_slice(&u32::from(h2::Reason::NO_ERROR).to_be_bytes());
                let _ = tls.write_all(&frame(GOAWAY, 0, &go_away)).await;
                let _ = tls.shutdown().await;
                return;
            }
            SETTINGS if head[4] & ACK == 0 => tls.write_all(&frame(SETTINGS, ACK, &[])).await,
            _ => Ok(()),
        };
        if written.is_err() {
            return;
        }
    }
}

/// Answers every request on the connection with `ok`.
async fn answer_ok_over_h2(tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>) {
    let Ok(mut connection) = h2::server::handshake(tls).await else {
        return;
    };
    while let Some(Ok((_request, mut respond))) = connection.accept().await {
        if let Ok(mut body) = respond.send_response(http::Response::new(()), false) {
            let _ = body.send_data(Bytes::from_static(b"ok"), true);
        }
    }
}

/// A provider's `pool_idle_timeout` gives its TLS client a pool with that limit, one per
/// value, shared by the providers that ask for it: past the limit, an idle connection the
/// upstream still keeps is not reused.
#[tokio::test]
async fn a_tls_clients_idle_connections_are_reused_within_its_idle_timeout() {
    for (idle, connections) in [(Duration::from_secs(1), 2), (IDLE, 1)] {
        let (base, accepted, client) = dropping_tls_upstream(usize::MAX, false).await;
        let shared = client.with_pool_idle_timeout(idle);
        let client = client.with_pool_idle_timeout(idle);
        let built = client.siblings.lock().map(|s| s.len()).unwrap_or_default();
        assert_eq!(built, usize::from(idle != IDLE), "one client per value");
        let (endpoint, _) = counted_endpoint(base);
        for client in [&shared, &client] {
            assert_eq!(get_body(client, &endpoint).await.as_deref(), Ok(&b"ok"[..]));
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one pool, reused while fresh"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            get_body(&client, &endpoint).await.as_deref(),
            Ok(&b"ok"[..])
        );
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            connections,
            "idle {idle:?}"
        );
    }
}
