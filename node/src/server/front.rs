//! The listeners of one node, bound from `server`: TCP (plain, or TLS when `server.tls` is
//! set) and, when `server.http3.enabled`, HTTP/3 on a UDP port — all serving one router and
//! stopping together.

use std::net::SocketAddr;
use std::sync::Arc;

use super::observe::ObservedRouter;
use anyhow::Context;
use axum::http::HeaderValue;
use futures_util::FutureExt;
use hapax_config::Config;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::h3::{self, Http3Settings};
use super::overload::ConnectionLimit;
use super::{ListenerSettings, TcpOptions, tls};

/// How long clients may remember that HTTP/3 is offered (`Alt-Svc: ...; ma=`), in seconds.
const ALT_SVC_MAX_AGE: u32 = 86_400;

/// Bound listeners, ready to serve.
pub struct Front {
    tcp: TcpListener,
    settings: ListenerSettings,
    tcp_tls: Option<TlsAcceptor>,
    http3: Option<(quinn::Endpoint, Http3Settings)>,
    connections: Option<Arc<ConnectionLimit>>,
}

impl Front {
    /// Reads the certificates (failing with the config key, the file and the problem), then
    /// binds the TCP listener and, if enabled, the QUIC endpoint.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let server = &config.server;
        let material = tls::load(config).map_err(|problem| anyhow::anyhow!("{problem}"))?;
        let tcp_tls = material
            .tcp
            .map(|files| files.tcp_config())
            .transpose()?
            .map(|config| TlsAcceptor::from(Arc::new(config)));
        let address = format!("{}:{}", server.host, server.port);
        let tcp = TcpListener::bind(&address)
            .await
            .with_context(|| format!("binding the HTTP listener on {address}"))?;
        let http3 = match (server.http3.as_ref().filter(|h| h.enabled), material.http3) {
            (Some(http3), Some(files)) => {
                let settings = Http3Settings::from_config(server, http3);
                let ip = tcp.local_addr()?.ip();
                let address = SocketAddr::new(ip, http3.port.unwrap_or(0));
                let endpoint = h3::bind(address, files.quic_config(http3.enable_0rtt)?, &settings)?;
                Some((endpoint, settings))
            }
            _ => None,
        };
        let settings = ListenerSettings {
            header_read_timeout: server.read_timeout.get(),
            max_header_bytes: server.max_header_bytes,
            shutdown_timeout: server.shutdown_timeout.get(),
            busy_poll: server.busy_poll.get(),
        };
        Ok(Self {
            tcp,
            settings,
            tcp_tls,
            http3,
            connections: None,
        })
    }

    /// Caps the open TCP connections: past `limit`, new ones are accepted and closed at once.
    pub fn limit_connections(mut self, limit: Arc<ConnectionLimit>) -> Self {
        self.connections = Some(limit);
        self
    }

    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The UDP address of HTTP/3, when it is on.
    pub fn h3_addr(&self) -> Option<SocketAddr> {
        self.http3
            .as_ref()
            .and_then(|(endpoint, _)| endpoint.local_addr().ok())
    }

    pub fn is_tls(&self) -> bool {
        self.tcp_tls.is_some()
    }

    /// `hapax listening http=ADDR[ h3=ADDR]`: the one line tests and scripts wait for.
    pub fn ready_line(&self) -> std::io::Result<String> {
        let mut line = format!("hapax listening http={}", self.http_addr()?);
        if let Some(h3) = self.h3_addr() {
            line.push_str(&format!(" h3={h3}"));
        }
        Ok(line)
    }

    /// Serves `router` on every listener until `shutdown` resolves, then drains them all
    /// (each for at most `shutdown_timeout`, concurrently).
    pub async fn serve(
        self,
        router: ObservedRouter,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let shutdown = shutdown.shared();
        let alt_svc = self.h3_addr().and_then(|h3| {
            let value = format!("h3=\":{}\"; ma={ALT_SVC_MAX_AGE}", h3.port());
            HeaderValue::from_str(&value).ok()
        });
        let options = TcpOptions {
            tls: self.tcp_tls,
            alt_svc,
            connections: self.connections,
        };
        let tcp = super::serve_tcp(
            self.tcp,
            router.clone(),
            self.settings,
            options,
            shutdown.clone(),
        );
        let http3 = async {
            if let Some((endpoint, settings)) = self.http3 {
                h3::serve(endpoint, router, settings, shutdown).await;
            }
        };
        let (tcp, ()) = tokio::join!(tcp, http3);
        tcp
    }
}
