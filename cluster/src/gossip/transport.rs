//! Gossip over UDP on a socket the node bound itself (so `:0` works and the advertised
//! address is known before chitchat starts), with an optional shared-secret HMAC on every
//! datagram and counters for the metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::{ChitchatEnvelope, ChitchatMessage};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;

/// Bytes of HMAC-SHA256 kept on each datagram.
const TAG_LEN: usize = 16;
/// chitchat's own bound on a gossip datagram.
const MAX_DATAGRAM: usize = 65_507;

/// Gossip traffic counters, read by the metrics exporter.
#[derive(Default, Debug)]
pub struct GossipStats {
    pub rounds: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub messages_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub rejected: AtomicU64,
}

pub struct AuthenticatedUdpTransport {
    socket: Mutex<Option<tokio::net::UdpSocket>>,
    secret: Option<Arc<[u8]>>,
    stats: Arc<GossipStats>,
}

impl AuthenticatedUdpTransport {
    pub fn new(
        socket: tokio::net::UdpSocket,
        secret: Option<&str>,
        stats: Arc<GossipStats>,
    ) -> Self {
        Self {
            socket: Mutex::new(Some(socket)),
            secret: secret.map(|s| Arc::from(s.as_bytes())),
            stats,
        }
    }
}

/// chitchat keeps its wire encoding private, so its own UDP socket does the (de)serialising
/// on loopback: outbound envelopes are sent to a local relay that signs and forwards them
/// from the public socket; inbound datagrams are verified there and injected into
/// chitchat's socket, with the real sender restored.
#[async_trait::async_trait]
impl Transport for AuthenticatedUdpTransport {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let public = self
            .socket
            .lock()
            .take()
            .context("the gossip socket was already opened")?;
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let codec = chitchat::transport::UdpSocket::open(loopback).await?;
        let relay = tokio::net::UdpSocket::bind(loopback)
            .await
            .context("gossip relay socket")?;
        Ok(Box::new(AuthenticatedSocket {
            codec_addr: codec.local_addr()?,
            relay_addr: relay.local_addr().context("gossip relay address")?,
            codec,
            relay,
            public,
            secret: self.secret.clone(),
            stats: Arc::clone(&self.stats),
            pending_senders: std::collections::VecDeque::new(),
            buf: vec![0u8; MAX_DATAGRAM].into_boxed_slice(),
            out: Vec::with_capacity(MAX_DATAGRAM),
        }))
    }
}

struct AuthenticatedSocket {
    /// chitchat's own socket, used as its codec.
    codec: chitchat::transport::UdpSocket,
    codec_addr: SocketAddr,
    relay: tokio::net::UdpSocket,
    relay_addr: SocketAddr,
    public: tokio::net::UdpSocket,
    secret: Option<Arc<[u8]>>,
    stats: Arc<GossipStats>,
    /// Real senders of datagrams injected into the codec socket, in order.
    pending_senders: std::collections::VecDeque<SocketAddr>,
    buf: Box<[u8]>,
    out: Vec<u8>,
}

/// chitchat's datagrams start with its magic number (little endian).
const MAGIC: [u8; 2] = 45_139_u16.to_le_bytes();

fn tag(secret: &[u8], payload: &[u8]) -> Option<[u8; TAG_LEN]> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(payload);
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&full[..TAG_LEN]);
    Some(out)
}

/// The payload of an authentic datagram, or `None`.
fn verify<'a>(secret: &[u8], datagram: &'a [u8]) -> Option<&'a [u8]> {
    if datagram.len() < TAG_LEN {
        return None;
    }
    let (received, payload) = datagram.split_at(TAG_LEN);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(payload);
    mac.verify_truncated_left(received).ok().map(|()| payload)
}

#[async_trait::async_trait]
impl Socket for AuthenticatedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.public.local_addr().context("gossip socket address")
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        if matches!(envelope.message, ChitchatMessage::Syn { .. }) {
            self.stats.rounds.fetch_add(1, Ordering::Relaxed);
        }
        self.codec.send(self.relay_addr, envelope).await?;
        let encoded = loop {
            let (len, from) = self
                .relay
                .recv_from(&mut self.buf)
                .await
                .context("gossip relay")?;
            if from == self.codec_addr {
                break len;
            }
        };
        self.out.clear();
        match &self.secret {
            Some(secret) => {
                self.out.extend_from_slice(
                    &tag(secret, &self.buf[..encoded]).context("gossip secret")?,
                );
                self.out.extend_from_slice(&self.buf[..encoded]);
            }
            None => self.out.extend_from_slice(&self.buf[..encoded]),
        }
        let sent = match self.public.send_to(&self.out, to).await {
            Ok(n) => n,
            // A peer that is gone is the failure detector's business, not a broken transport.
            Err(error) => {
                tracing::debug!(%error, peer = %to, "gossip send failed");
                0
            }
        };
        self.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_sent
            .fetch_add(sent as u64, Ordering::Relaxed);
        Ok(SendOutcome {
            num_bytes_sent: sent,
        })
    }

    /// Cancel-safe: a datagram already injected is picked up by the next call.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some(&sender) = self.pending_senders.front() {
                // An injected datagram chitchat cannot decode would otherwise block here.
                let decoded =
                    tokio::time::timeout(std::time::Duration::from_millis(200), self.codec.recv())
                        .await;
                self.pending_senders.pop_front();
                let Ok(decoded) = decoded else {
                    self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let decoded = decoded?;
                if decoded.from_addr != self.relay_addr {
                    continue;
                }
                self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
                return Ok(RecvOutcome {
                    from_addr: sender,
                    ..decoded
                });
            }
            let (len, from) = match self.public.recv_from(&mut self.buf).await {
                Ok(pair) => pair,
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue;
                }
                Err(error) => return Err(error).context("gossip receive"),
            };
            self.stats
                .bytes_received
                .fetch_add(len as u64, Ordering::Relaxed);
            let datagram = &self.buf[..len];
            let payload = match &self.secret {
                Some(secret) => verify(secret, datagram),
                None => Some(datagram),
            };
            match payload.filter(|p| p.starts_with(&MAGIC)) {
                Some(payload) => {
                    self.relay
                        .send_to(payload, self.codec_addr)
                        .await
                        .context("gossip relay")?;
                    self.pending_senders.push_back(from);
                }
                None => {
                    self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(peer = %from, "dropped a gossip datagram: no valid cluster secret or not chitchat");
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tags_verify_only_with_the_same_secret_and_payload() {
        let mac = tag(b"0123456789abcdef", b"hello").unwrap();
        let mut datagram = mac.to_vec();
        datagram.extend_from_slice(b"hello");
        assert_eq!(verify(b"0123456789abcdef", &datagram), Some(&b"hello"[..]));
        assert_eq!(verify(b"another-secret-!", &datagram), None);
        datagram[TAG_LEN] = b'j';
        assert_eq!(verify(b"0123456789abcdef", &datagram), None);
        assert_eq!(verify(b"0123456789abcdef", b"short"), None);
    }
}
