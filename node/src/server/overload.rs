//! Overload protection: load shedding, not queuing.
//!
//! - [`InflightLimit`]: a cap on client-API requests in flight on this node
//!   (`server.max_inflight_requests`, or Hapax's `queue.max_size`). Admission (`server::admit`,
//!   before the key is checked) takes a permit with `try_acquire`; when none is left the
//!   request is answered at once
//!   with 503, code `overloaded` and `Retry-After: 1`, and counted in
//!   `hapax_load_shed_total`. Nothing waits: a queue in front of slow upstreams only turns an
//!   overload into timeouts. A streamed response keeps its permit until its body ends (or the
//!   client goes away). Health, metrics and admin endpoints are not capped, so operators can
//!   still see and steer an overloaded node.
//! - [`ConnectionLimit`]: a cap on open TCP connections (`server.max_connections`). Past it
//!   the accept loop accepts a new connection and closes it at once, so the client fails fast
//!   (and can retry or go to another node) instead of waiting in the kernel's backlog; the
//!   connections already open are served as before. Counted in
//!   `hapax_tcp_connections_refused_total`; `hapax_tcp_connections` is the open count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::guarded_body::GuardedBody;
use axum::response::Response;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::scope;
use crate::app::App;
use crate::error::ApiError;

/// The cap on client-API requests in flight.
pub struct InflightLimit {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl InflightLimit {
    pub fn new(limit: usize) -> Self {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Requests holding a permit now.
    pub fn in_flight(&self) -> usize {
        self.limit - self.permits.available_permits()
    }

    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }
}

/// The 503 of a client-API request to `endpoint` (its metric label) refused because the node
/// is at its in-flight cap.
pub fn shed(app: &App, endpoint: &'static str) -> ApiError {
    app.metrics.load_shed.with_label_values(&[endpoint]).inc();
    ApiError::Overloaded {
        limit: app.inflight.limit(),
    }
}

/// Keeps the in-flight permit until a streamed body ends; a complete answer releases it now.
pub fn hold_while_streaming(response: Response, permit: OwnedSemaphorePermit) -> Response {
    if !scope::is_streamed() {
        return response;
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, GuardedBody::wrap(body, permit))
}

/// The cap on open TCP connections.
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    limit: usize,
    open: IntGauge,
    refused: IntCounter,
    /// Seconds since `epoch` when the last "at the cap" warning was logged (one a second at most).
    last_warning: AtomicU64,
    epoch: Instant,
}

/// Descriptors a node needs besides its client connections: upstream pools, cluster, logs.
const FILE_HEADROOM: u64 = 256;

/// The soft `Max open files` of this process (Linux), if readable.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// One admitted connection's place under the cap; released when dropped.
pub struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    open: IntGauge,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl ConnectionLimit {
    pub fn new(limit: usize, open: IntGauge, refused: IntCounter) -> Self {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        if let Some(files) = open_files_limit()
            && files < limit as u64 + FILE_HEADROOM
        {
            tracing::warn!(
                open_files_limit = files,
                max_connections = limit,
                "the open-files limit is below server.max_connections plus headroom: raise it (ulimit -n, LimitNOFILE) or lower max_connections, or accepts will fail first"
            );
        }
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            open,
            refused,
            last_warning: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
        }
    }

    /// A slot for a new connection, or `None` (counted, and logged at most once a second)
    /// when `limit` connections are open: the caller closes the connection.
    pub fn try_admit(&self) -> Option<ConnectionSlot> {
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => {
                self.open.inc();
                Some(ConnectionSlot {
                    _permit: permit,
                    open: self.open.clone(),
                })
            }
            Err(_) => {
                self.refused.inc();
                let now = self.epoch.elapsed().as_secs();
                if self.last_warning.swap(now, Ordering::Relaxed) != now {
                    tracing::warn!(
                        limit = self.limit,
                        "connection refused: server.max_connections reached"
                    );
                }
                None
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots_are_returned_when_dropped() {
        let open = IntGauge::new("open", "open").unwrap();
        let refused = IntCounter::new("refused", "refused").unwrap();
        let limit = ConnectionLimit::new(2, open.clone(), refused.clone());
        let a = limit.try_admit().unwrap();
        let _b = limit.try_admit().unwrap();
        assert!(limit.try_admit().is_none());
        assert_eq!((open.get(), refused.get()), (2, 1));
        drop(a);
        assert!(limit.try_admit().is_some());
        assert_eq!(open.get(), 1);
    }

    #[test]
    fn inflight_limit_counts_permits() {
        let limit = InflightLimit::new(2);
        let a = limit.try_acquire().unwrap();
        let _b = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
        assert_eq!(limit.in_flight(), 2);
        drop(a);
        assert_eq!(limit.in_flight(), 1);
    }
}
