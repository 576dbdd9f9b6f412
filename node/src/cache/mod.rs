//! The response cache: exact-match answers for requests that would be answered the same way
//! again (`temperature: 0`, or opted in with `X-Hapax-Cache: on`), kept in memory (one node)
//! or in Redis (shared by the cluster).
//!
//! The cache is consulted after auth, validation and rate-limit admission and before
//! deduplication. A cache that fails or is slow never fails a request: it is bypassed.

mod key;
mod memory;
mod redis;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use hapax_config::{CacheConfig, CacheKind, CacheScope};
use prometheus::{Histogram, IntCounter};

pub use key::{CacheKey, Directives, HEADER, KeyScope, cache_key, is_cacheable};
pub use memory::MemoryCache;
pub use redis::RedisCache;

use crate::api::exec::ChatServed;
use crate::auth::Caller;
use crate::metrics::Metrics;
use crate::server::scope::ServedBy;
use crate::wire::headers::RequestHeaders;
use crate::wire::openai::ChatRequest;

/// Entries larger than this are not stored (a runaway stream must not fill the cache).
const MAX_ENTRY_BYTES: usize = 4 * 1024 * 1024;

/// One stored answer. Cheap to clone: both forms are shared.
#[derive(Clone)]
pub enum CachedAnswer {
    /// A non-streamed answer and the provider that produced it.
    Complete(ChatServed),
    /// A stream that ended cleanly.
    Stream(Arc<CachedStream>),
}

/// The SSE payloads of a completed stream as the client received them (without the
/// `data: ` framing and the final `[DONE]`), and the provider that produced them.
pub struct CachedStream {
    pub provider: Arc<str>,
    pub events: Vec<Bytes>,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Backend(String),
    #[error("entry could not be encoded or decoded: {0}")]
    Codec(String),
    /// Not tried: the backend failed moments ago and is left alone for a short pause.
    #[error("skipped while the backend is down")]
    Paused,
}

/// Where answers are kept. Implementations bound their own operations in time.
pub trait ResponseCache: Send + Sync {
    /// `memory` or `redis`, for logs.
    fn backend(&self) -> &'static str;

    fn get<'a>(
        &'a self,
        key: &'a CacheKey,
    ) -> BoxFuture<'a, Result<Option<CachedAnswer>, CacheError>>;

    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        answer: CachedAnswer,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), CacheError>>;
}

/// What the cache did for one request; sent back as `X-Hapax-Cache`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    /// Not cacheable, cache off, opted out, or the cache failing.
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheBuildError {
    #[error("redis cache: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("the redis cache needs a Tokio runtime")]
    NoRuntime,
}

/// The node's response cache: off, or a backend with its TTL, scope and metrics.
pub struct Cache {
    backend: Option<Arc<Backend>>,
}

struct Backend {
    store: Arc<dyn ResponseCache>,
    ttl: Duration,
    scope: CacheScope,
    results: Results,
    get: Operation,
    put: Operation,
}

/// `hapax_cache_requests_total` by result.
struct Results {
    hit: IntCounter,
    miss: IntCounter,
    bypass: IntCounter,
}

/// Duration and error count of one kind of operation.
#[derive(Clone)]
struct Operation {
    duration: Histogram,
    errors: IntCounter,
}

impl Operation {
    fn new(metrics: &Metrics, op: &str) -> Self {
        Self {
            duration: metrics.cache_duration.with_label_values(&[op]),
            errors: metrics.cache_errors.with_label_values(&[op]),
        }
    }

    fn record<T>(&self, started: Instant, outcome: &Result<T, CacheError>, backend: &str) {
        if let Err(error) = outcome {
            if matches!(error, CacheError::Paused) {
                return;
            }
            self.errors.inc();
            tracing::debug!(backend, error = %error, "cache operation failed");
        }
        self.duration.observe(started.elapsed().as_secs_f64());
    }
}

impl Cache {
    /// No cache: every request is a bypass.
    pub fn off() -> Self {
        Self { backend: None }
    }

    /// The configured cache (`Config::response_cache`), or none.
    pub fn build(config: Option<&CacheConfig>, metrics: &Metrics) -> Result<Self, CacheBuildError> {
        let Some(config) = config else {
            return Ok(Self::off());
        };
        let store: Arc<dyn ResponseCache> = match (config.kind(), &config.redis) {
            (CacheKind::Redis, Some(redis)) => {
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(CacheBuildError::NoRuntime);
                }
                let store = RedisCache::new(redis)?;
                tracing::info!(backend = "redis", address = store.endpoint(), db = redis.db, tls = redis.tls, timeout_ms = redis.timeout.get().as_millis() as u64, ttl = %config.ttl, scope = ?config.scope, "response cache on");
                Arc::new(store)
            }
            _ => {
                tracing::info!(backend = "memory", max_entries = config.max_size, ttl = %config.ttl, scope = ?config.scope, "response cache on");
                Arc::new(MemoryCache::new(
                    usize::try_from(config.max_size).unwrap_or(usize::MAX),
                ))
            }
        };
        Ok(Self::with_store(
            store,
            config.ttl.get(),
            config.scope,
            metrics,
        ))
    }

    pub fn with_store(
        store: Arc<dyn ResponseCache>,
        ttl: Duration,
        scope: CacheScope,
        metrics: &Metrics,
    ) -> Self {
        let result = |r: &str| metrics.cache_requests.with_label_values(&[r]);
        let backend = Backend {
            store,
            ttl,
            scope,
            results: Results {
                hit: result("hit"),
                miss: result("miss"),
                bypass: result("bypass"),
            },
            get: Operation::new(metrics, "get"),
            put: Operation::new(metrics, "put"),
        };
        Self {
            backend: Some(Arc::new(backend)),
        }
    }

    /// `memory` or `redis`, or `None` when off.
    pub fn backend(&self) -> Option<&'static str> {
        self.backend.as_ref().map(|b| b.store.backend())
    }

    /// Decides, from the request and its headers, whether the cache is read and written.
    pub fn plan(
        &self,
        caller: &Caller,
        endpoint: &'static str,
        request: &ChatRequest,
        headers: &impl RequestHeaders,
    ) -> CachePlan {
        let bypass = CachePlan {
            status: CacheStatus::Bypass,
            target: None,
            counted: self.backend.is_none(),
            backend: self.backend.clone(),
        };
        let Some(backend) = &self.backend else {
            return bypass;
        };
        let directives = Directives::from_headers(headers);
        if !is_cacheable(request, directives) || (directives.no_cache && directives.no_store) {
            return bypass;
        }
        let scope = match backend.scope {
            CacheScope::Key => KeyScope::Caller(&caller.name),
            CacheScope::Shared => KeyScope::Shared,
        };
        let Ok(key) = cache_key(scope, endpoint, caller.providers.as_deref(), request) else {
            return bypass;
        };
        CachePlan {
            status: CacheStatus::Miss,
            target: Some(Target {
                key,
                read: !directives.no_cache,
                write: !directives.no_store,
                stream: request.is_stream(),
            }),
            counted: false,
            backend: Some(Arc::clone(backend)),
        }
    }
}

/// The cache's part in one request: look up first, store the answer after.
pub struct CachePlan {
    status: CacheStatus,
    target: Option<Target>,
    /// Whether the result was counted (once per request).
    counted: bool,
    backend: Option<Arc<Backend>>,
}

struct Target {
    key: CacheKey,
    read: bool,
    write: bool,
    stream: bool,
}

impl CachePlan {
    pub fn status(&self) -> CacheStatus {
        self.status
    }

    /// The stored answer, if there is one of the kind this request wants. A failing cache
    /// turns the request into a bypass (and nothing is written back to it).
    pub async fn lookup(&mut self) -> Option<CachedAnswer> {
        let found = self.read().await;
        self.count();
        found
    }

    async fn read(&mut self) -> Option<CachedAnswer> {
        let (Some(target), Some(backend)) = (&mut self.target, &self.backend) else {
            return None;
        };
        if !target.read {
            return None;
        }
        let started = Instant::now();
        let outcome = backend.store.get(&target.key).await;
        backend
            .get
            .record(started, &outcome, backend.store.backend());
        match outcome {
            Ok(Some(answer)) if kind_matches(&answer, target.stream) => {
                self.status = CacheStatus::Hit;
                Some(answer)
            }
            Ok(_) => None,
            // An entry that cannot be read is a miss; the fresh answer replaces it.
            Err(CacheError::Codec(_)) => None,
            Err(_) => {
                self.status = CacheStatus::Bypass;
                target.write = false;
                None
            }
        }
    }

    fn count(&mut self) {
        if self.counted {
            return;
        }
        self.counted = true;
        if let Some(backend) = &self.backend {
            let results = &backend.results;
            match self.status {
                CacheStatus::Hit => results.hit.inc(),
                CacheStatus::Miss => results.miss.inc(),
                CacheStatus::Bypass => results.bypass.inc(),
            }
        }
    }

    fn writable(&self) -> Option<(&Arc<Backend>, CacheKey)> {
        let target = self.target.as_ref().filter(|t| t.write)?;
        if self.status == CacheStatus::Hit {
            return None;
        }
        Some((self.backend.as_ref()?, target.key))
    }

    /// Stores a non-streamed answer; bounded by the backend's timeout.
    pub async fn store(&self, served: &ChatServed) {
        if let Some((backend, key)) = self.writable() {
            let stored = ChatServed {
                answer: served.answer.clone(),
                served: ServedBy {
                    provider: Arc::clone(&served.served.provider),
                    attempts: 0,
                },
            };
            backend.write(key, CachedAnswer::Complete(stored)).await;
        }
    }

    /// A recorder for a stream from `provider`, when its answer is to be stored.
    pub fn recorder(&self, provider: &Arc<str>) -> Option<StreamRecorder> {
        let (backend, key) = self.writable()?;
        Some(StreamRecorder {
            backend: Arc::clone(backend),
            key,
            provider: Arc::clone(provider),
            events: Vec::new(),
            bytes: 0,
        })
    }

    /// Counts the verdict and records it for the answer's `X-Hapax-Cache` header.
    pub fn mark(&mut self) {
        self.count();
        let status = self.status.as_str();
        crate::server::scope::record(|outcome| outcome.answer.cache = Some(status));
    }
}

fn kind_matches(answer: &CachedAnswer, stream: bool) -> bool {
    matches!(
        (answer, stream),
        (CachedAnswer::Stream(_), true) | (CachedAnswer::Complete(_), false)
    )
}

impl Backend {
    async fn write(&self, key: CacheKey, answer: CachedAnswer) {
        let started = Instant::now();
        let outcome = self.store.put(&key, answer, self.ttl).await;
        self.put.record(started, &outcome, self.store.backend());
    }
}

/// Collects a stream's payloads as they are sent; stored only when the stream ends cleanly.
pub struct StreamRecorder {
    backend: Arc<Backend>,
    key: CacheKey,
    provider: Arc<str>,
    events: Vec<Bytes>,
    bytes: usize,
}

impl StreamRecorder {
    /// Records one payload; returns `false` (and should be dropped) once the stream is too
    /// large to store.
    pub fn push(&mut self, payload: &Bytes) -> bool {
        self.bytes += payload.len();
        self.events.push(payload.clone());
        self.bytes <= MAX_ENTRY_BYTES
    }

    /// The stream ended cleanly: store it (bounded by the backend's timeout).
    pub async fn finish(self) {
        let answer = CachedAnswer::Stream(Arc::new(CachedStream {
            provider: self.provider,
            events: self.events,
        }));
        self.backend.write(self.key, answer).await;
    }
}
