use super::*;

/// A stream's reader stops before the chunked terminator arrives (as the translators
/// do at `[DONE]`): the connection is still given back and reused.
#[tokio::test]
async fn a_body_dropped_before_its_end_keeps_its_connection() {
    use std::sync::atomic::Ordering;

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
    let endpoint = Endpoint::new(base_url, None, None);
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

/// A TLS upstream on loopback that answers `answered` requests on each connection, then reads
/// the next one and drops the connection without a byte of an answer (a TLS close and FIN, or
/// a reset when `reset`): its keep-alive timeout firing as the request arrived. Gives its base
/// URL, its connection count, and a client that trusts its certificate.
async fn dropping_tls_upstream(
    answered: usize,
    reset: bool,
) -> (String, Arc<std::sync::atomic::AtomicUsize>, HttpClient) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;

    let Ok(mut params) = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]) else {
        panic!("certificate parameters");
    };
    params.distinguished_name = rcgen::DistinguishedName::new();
    let (Ok(key), provider) = (
        rcgen::KeyPair::generate(),
        Arc::new(rustls::crypto::ring::default_provider()),
    ) else {
        panic!("a key pair");
    };
    let Ok(cert) = params.self_signed(&key) else {
        panic!("a self-signed certificate");
    };
    let key = rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
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
    let (Ok(server), Ok(client)) = (server, client) else {
        panic!("the TLS configurations build");
    };
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
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
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
            });
        }
    });
    let base = format!("https://{address}");
    (base, accepted, HttpClient::with_tls(client))
}

/// Reads a request's head; `false` when the client closed first.
async fn read_head(socket: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
    use tokio::io::AsyncReadExt;
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

/// The keep-alive race on a TLS upstream: a request that went out on a kept connection as
/// the upstream dropped it goes once more, on a new connection, instead of failing (and
/// counting against the provider's breaker). Counted as a resend. Dropped again, it fails.
#[tokio::test]
async fn a_tls_connection_dropped_as_the_request_arrives_is_resent() {
    for reset in [false, true] {
        let (base, accepted, client) = dropping_tls_upstream(1, reset).await;
        let Ok(resent) = IntCounter::new("resent", "requests sent again") else {
            panic!("a valid metric name");
        };
        let endpoint = Endpoint::new(base, None, Some(resent.clone()));
        for round in 1..=2 {
            let answer = match send(client.get(&endpoint, "/"), None).await {
                Ok(response) => read_body(response).await.map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            assert_eq!(
                answer.as_deref(),
                Ok(&b"ok"[..]),
                "reset {reset}, round {round}"
            );
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "reset {reset}"
        );
        assert_eq!(
            resent.get(),
            1,
            "reset {reset}: the second request went twice"
        );

        let (base, accepted, client) = dropping_tls_upstream(0, reset).await;
        let Ok(resent) = IntCounter::new("resent", "requests sent again") else {
            panic!("a valid metric name");
        };
        let endpoint = Endpoint::new(base, None, Some(resent.clone()));
        let failed = send(client.get(&endpoint, "/"), None).await;
        assert!(
            matches!(failed, Err(ProviderError::Connect(_))),
            "reset {reset}: dropped twice, it fails"
        );
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "reset {reset}"
        );
        assert_eq!(resent.get(), 1, "reset {reset}: sent again once, not more");
    }
}
