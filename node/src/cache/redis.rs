//! The cache shared by every node that points at the same Redis. Every operation is bounded
//! by `redis.timeout`; a failure pauses Redis use briefly (one request then probes it), so an
//! outage costs requests nothing but the cache. The connection manager is created without
//! connecting and reconnects on its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use hapax_config::RedisCacheConfig;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{CacheError, CacheKey, CachedAnswer, CachedStream, ResponseCache};
use crate::api::exec::ChatServed;
use crate::server::scope::ServedBy;
use crate::wire::answer::ChatAnswer;

/// Every key this cache writes starts with this (the version is also in the key's hash).
const KEY_PREFIX: &str = "hapax:cache:";
/// How long Redis is left alone after a failure before one request probes it again.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(500);
/// Bound on one background connection attempt (requests never wait for it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub struct RedisCache {
    /// `host:port` (never the URL: it may hold a password).
    endpoint: String,
    manager: ConnectionManager,
    timeout: Duration,
    outage: Outage,
}

impl RedisCache {
    /// Builds the client and a lazy connection manager: nothing connects until first use, so
    /// a Redis that is down never delays start-up. Needs a Tokio runtime.
    pub fn new(config: &RedisCacheConfig) -> Result<Self, redis::RedisError> {
        let info = connection_info(config)?;
        let endpoint = info.addr().to_string();
        let client = redis::Client::open(info)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(config.timeout.get()))
            .set_number_of_retries(3)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client, manager_config)?;
        // Connect in the background so the first requests find a ready connection; start-up
        // does not wait, and a Redis that is down is simply not there yet.
        let mut warm_up = manager.clone();
        tokio::spawn(async move {
            let _ = redis::cmd("PING").query_async::<()>(&mut warm_up).await;
        });
        Ok(Self {
            endpoint,
            manager,
            timeout: config.timeout.get(),
            outage: Outage::new(),
        })
    }

    /// `host:port` of the server, for logs.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Runs one command within the timeout, recording the outcome for the outage pause.
    async fn run<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> Result<T, CacheError> {
        if !self.outage.may_try() {
            return Err(CacheError::Paused);
        }
        let mut connection = self.manager.clone();
        let outcome =
            tokio::time::timeout(self.timeout, command.query_async::<T>(&mut connection)).await;
        match outcome {
            Ok(Ok(value)) => {
                self.outage.ended();
                Ok(value)
            }
            Ok(Err(error)) => {
                self.outage.began();
                Err(CacheError::Backend(error.to_string()))
            }
            Err(_) => {
                self.outage.began();
                Err(CacheError::Timeout(self.timeout))
            }
        }
    }
}

impl ResponseCache for RedisCache {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn get<'a>(
        &'a self,
        key: &'a CacheKey,
    ) -> BoxFuture<'a, Result<Option<CachedAnswer>, CacheError>> {
        Box::pin(async move {
            let mut command = redis::cmd("GET");
            command.arg(redis_key(key));
            let stored: Option<Vec<u8>> = self.run(command).await?;
            stored.map(|bytes| decode(&bytes)).transpose()
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        answer: CachedAnswer,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            let value = encode(&answer)?;
            let mut command = redis::cmd("SET");
            command
                .arg(redis_key(key))
                .arg(value)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64);
            self.run::<()>(command).await
        })
    }
}

fn redis_key(key: &CacheKey) -> String {
    format!("{KEY_PREFIX}{}", key.hex())
}

/// `host:port` or a `redis://` / `rediss://` URL, then `tls`, `username`, `password` and a
/// non-zero `db` from the config on top.
fn connection_info(config: &RedisCacheConfig) -> Result<ConnectionInfo, redis::RedisError> {
    let address = config.address.trim();
    let url = if address.contains("://") {
        address.to_owned()
    } else {
        format!("redis://{address}")
    };
    let mut info = url.as_str().into_connection_info()?;
    if config.tls
        && let ConnectionAddr::Tcp(host, port) = info.addr().clone()
    {
        info = info.set_addr(ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        });
    }
    let mut settings = info.redis_settings().clone();
    if let Some(username) = config.username.as_deref().filter(|u| !u.is_empty()) {
        settings = settings.set_username(username);
    }
    if let Some(password) = config.password.as_ref().filter(|p| !p.expose().is_empty()) {
        settings = settings.set_password(password.expose());
    }
    if config.db != 0 {
        settings = settings.set_db(config.db);
    }
    Ok(info.set_redis_settings(settings))
}

// === stored format ===

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum StoredRef<'a> {
    Complete {
        provider: &'a str,
        /// The completion's own JSON, embedded as is.
        response: &'a RawValue,
    },
    Stream {
        provider: &'a str,
        events: Vec<&'a str>,
    },
}

/// The stored entry as read back: a plain struct rather than a tagged enum, because a tagged
/// enum buffers its fields and a raw (verbatim) JSON value cannot be read from that buffer.
#[derive(Deserialize)]
struct Stored {
    kind: StoredKind,
    provider: String,
    #[serde(default)]
    response: Option<Box<RawValue>>,
    #[serde(default)]
    events: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredKind {
    Complete,
    Stream,
}

fn encode(answer: &CachedAnswer) -> Result<Vec<u8>, CacheError> {
    let codec = |e: serde_json::Error| CacheError::Codec(e.to_string());
    match answer {
        CachedAnswer::Complete(served) => {
            let json = std::str::from_utf8(&served.answer.json)
                .map_err(|e| CacheError::Codec(e.to_string()))?;
            let response: &RawValue = serde_json::from_str(json).map_err(codec)?;
            serde_json::to_vec(&StoredRef::Complete {
                provider: &served.served.provider,
                response,
            })
            .map_err(codec)
        }
        CachedAnswer::Stream(stream) => {
            let events = stream
                .events
                .iter()
                .map(|e| std::str::from_utf8(e))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| CacheError::Codec(e.to_string()))?;
            serde_json::to_vec(&StoredRef::Stream {
                provider: &stream.provider,
                events,
            })
            .map_err(codec)
        }
    }
}

fn decode(bytes: &[u8]) -> Result<CachedAnswer, CacheError> {
    let stored: Stored =
        serde_json::from_slice(bytes).map_err(|e| CacheError::Codec(e.to_string()))?;
    let provider: Arc<str> = stored.provider.into();
    Ok(match (stored.kind, stored.response) {
        (StoredKind::Complete, Some(response)) => CachedAnswer::Complete(ChatServed {
            answer: ChatAnswer::passthrough(String::from(Box::<str>::from(response)).into_bytes())
                .map_err(|e| CacheError::Codec(e.to_string()))?,
            served: ServedBy {
                provider,
                attempts: 0,
            },
        }),
        (StoredKind::Complete, None) => {
            return Err(CacheError::Codec(
                "a complete answer without its response".into(),
            ));
        }
        (StoredKind::Stream, _) => CachedAnswer::Stream(Arc::new(CachedStream {
            provider,
            events: stored.events.into_iter().map(Bytes::from).collect(),
        })),
    })
}

// === impl Outage ===

/// Whether Redis failed recently. While it is down, requests skip it; once the pause is
/// over, exactly one request probes it, and a success ends the outage.
struct Outage {
    down: AtomicBool,
    /// Milliseconds since `epoch` at which the next probe may go.
    probe_at: AtomicU64,
    epoch: Instant,
}

impl Outage {
    fn new() -> Self {
        Self {
            down: AtomicBool::new(false),
            probe_at: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn may_try(&self) -> bool {
        if !self.down.load(Ordering::Acquire) {
            return true;
        }
        let now = self.now();
        let at = self.probe_at.load(Ordering::Acquire);
        now >= at
            && self
                .probe_at
                .compare_exchange(
                    at,
                    now + PAUSE_AFTER_FAILURE.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    fn began(&self) {
        let was_down = self.down.swap(true, Ordering::AcqRel);
        self.probe_at.store(
            self.now() + PAUSE_AFTER_FAILURE.as_millis() as u64,
            Ordering::Release,
        );
        if !was_down {
            tracing::warn!(
                pause_ms = PAUSE_AFTER_FAILURE.as_millis() as u64,
                "redis cache unavailable: requests bypass the cache until it answers again"
            );
        }
    }

    fn ended(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::info!("redis cache available again");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::wire::openai::{ChatResponse, Usage};

    #[test]
    fn answers_survive_the_stored_format() {
        let response = ChatResponse::assistant(
            "chatcmpl-1".to_owned(),
            "mock-1".to_owned(),
            "hello".to_owned(),
            "stop",
            Usage::new(3, 1),
        );
        let complete = CachedAnswer::Complete(ChatServed {
            answer: ChatAnswer::encode(&response).unwrap(),
            served: ServedBy {
                provider: Arc::from("primary"),
                attempts: 2,
            },
        });
        let CachedAnswer::Complete(back) = decode(&encode(&complete).unwrap()).unwrap() else {
            panic!("kind changed");
        };
        assert_eq!(back.answer.decode().unwrap().first_text(), "hello");
        assert_eq!(back.answer.usage, Some(Usage::new(3, 1)));
        assert_eq!(&*back.served.provider, "primary");
        assert_eq!(back.served.attempts, 0, "a cached answer took no attempts");

        let stream = CachedAnswer::Stream(Arc::new(CachedStream {
            provider: Arc::from("primary"),
            events: vec![Bytes::from_static(b"{\"a\":1}"), Bytes::from_static(b"{}")],
        }));
        let CachedAnswer::Stream(back) = decode(&encode(&stream).unwrap()).unwrap() else {
            panic!("kind changed");
        };
        assert_eq!(back.events.len(), 2);
        assert_eq!(&back.events[0][..], b"{\"a\":1}");
        assert!(decode(b"not json").is_err());
    }

    #[test]
    fn addresses_become_connection_info() {
        let config = |address: &str, tls: bool| RedisCacheConfig {
            address: address.to_owned(),
            tls,
            db: 3,
            password: Some(hapax_config::Secret("pw".to_owned())),
            ..Default::default()
        };
        let info = connection_info(&config("localhost:6380", false)).unwrap();
        assert!(matches!(info.addr(), ConnectionAddr::Tcp(h, 6380) if h == "localhost"));
        assert_eq!(info.redis_settings().db(), 3);
        assert_eq!(info.redis_settings().password(), Some("pw"));
        let info = connection_info(&config("localhost:6380", true)).unwrap();
        assert!(matches!(
            info.addr(),
            ConnectionAddr::TcpTls { port: 6380, .. }
        ));
        let info = connection_info(&config("rediss://cache.example.com", false)).unwrap();
        assert!(matches!(
            info.addr(),
            ConnectionAddr::TcpTls { port: 6379, .. }
        ));
    }

    #[test]
    fn an_outage_lets_one_probe_through_after_the_pause() {
        let outage = Outage::new();
        assert!(outage.may_try());
        outage.began();
        assert!(!outage.may_try(), "paused");
        outage
            .probe_at
            .store(outage.now().saturating_sub(1), Ordering::Release);
        assert!(outage.may_try(), "the probe");
        assert!(!outage.may_try(), "only one probe");
        outage.ended();
        assert!(outage.may_try());
    }
}
