//! A small HTTP/3 client for tests (h3 over h3-quinn, ring only): one QUIC connection, many
//! concurrent requests on it, each response kept frame by frame so tests can see that a
//! stream arrived in pieces. `hapax gen-cert` writes the certificates it trusts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::{HeaderMap, Method, Request, StatusCode};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::hapax_bin;

/// Runs `hapax gen-cert --out DIR` and returns `(cert.pem, key.pem)`.
pub fn gen_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let output = std::process::Command::new(hapax_bin())
        .args(["gen-cert", "--out"])
        .arg(dir)
        .output()
        .expect("run hapax gen-cert");
    assert!(
        output.status.success(),
        "gen-cert failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// A rustls client configuration that trusts exactly `ca_pem` (ring provider).
pub fn tls_client_config(ca_pem: &Path, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).expect("read CA") {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A QUIC client endpoint that trusts `ca_pem`; reuse it to resume sessions (0-RTT).
pub fn endpoint(ca_pem: &Path) -> quinn::Endpoint {
    let mut tls = tls_client_config(ca_pem, &[b"h3"]);
    tls.enable_early_data = true;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("bind");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// One HTTP/3 connection.
pub struct H3Client {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    connection: quinn::Connection,
    driver: tokio::task::JoinHandle<()>,
    /// Whether the connection was opened with 0-RTT (requests sent before the handshake).
    pub zero_rtt: bool,
}

/// A response with its body as the DATA frames received, each with its arrival time.
#[derive(Debug)]
pub struct H3Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub frames: Vec<(Instant, Bytes)>,
}

impl H3Response {
    pub fn text(&self) -> String {
        let bytes: Vec<u8> = self.frames.iter().flat_map(|(_, f)| f.to_vec()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text()).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl H3Client {
    /// Connects to `addr` as `localhost` (the name `hapax gen-cert` certifies).
    pub async fn connect(ca_pem: &Path, addr: SocketAddr) -> Self {
        Self::connect_with(&endpoint(ca_pem), addr, false).await
    }

    /// Connects through `endpoint`; with `zero_rtt`, uses 0-RTT when the endpoint holds a
    /// session ticket for the server (falls back to a full handshake otherwise).
    pub async fn connect_with(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        zero_rtt: bool,
    ) -> Self {
        let connecting = endpoint.connect(addr, "localhost").expect("connect");
        let (connection, zero_rtt) = match zero_rtt {
            true => match connecting.into_0rtt() {
                Ok((connection, _accepted)) => (connection, true),
                Err(connecting) => (connecting.await.expect("handshake"), false),
            },
            false => (connecting.await.expect("handshake"), false),
        };
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(connection.clone()))
            .await
            .expect("h3 connection");
        let driver = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Self {
            send,
            connection,
            driver,
            zero_rtt,
        }
    }

    /// Sends one request (with `body` as one DATA frame, if any) and reads the whole response.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> H3Response {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(()).expect("request");
        let mut send = self.send.clone();
        let mut stream = send.send_request(request).await.expect("send request");
        if let Some(body) = body {
            // The server may answer (413, 401) and stop reading before the body is sent.
            let _ = stream.send_data(body).await;
        }
        let _ = stream.finish().await;
        let response = stream.recv_response().await.expect("response head");
        let mut frames = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.expect("response body") {
            frames.push((Instant::now(), chunk.copy_to_bytes(chunk.remaining())));
        }
        H3Response {
            status: response.status(),
            headers: response.headers().clone(),
            frames,
        }
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> H3Response {
        self.request(Method::GET, path, headers, None).await
    }

    pub async fn post_json(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> H3Response {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        let bytes = Bytes::from(serde_json::to_vec(body).expect("json"));
        self.request(Method::POST, path, &all, Some(bytes)).await
    }

    /// Closes the connection cleanly and waits (briefly) for the close to be sent.
    pub async fn close(self) {
        self.connection.close(0x100u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.driver).await;
    }
}
