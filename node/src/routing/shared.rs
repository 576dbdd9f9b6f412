//! The seam between routing and a cluster-wide breaker: routing calls these hooks; the
//! cluster link implements them over Raft. On a single node there is no implementation and
//! each breaker is purely local.

use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;

pub trait SharedBreakers: Send + Sync {
    /// This node's breaker for `provider` tripped: propose the trip cluster-wide. Must not
    /// block the caller (it runs on the request path).
    fn propose_trip(&self, provider: &str, reason: &str);

    /// Claims one of the cluster-wide half-open probe permits (a bounded wait, only while the
    /// cluster breaker is half-open, which is rare).
    fn claim_probe<'a>(&'a self, provider: &'a str) -> BoxFuture<'a, bool>;

    /// The probe this node claimed succeeded (close everywhere) or failed (open again).
    fn probe_finished(&self, provider: &str, success: bool, reason: &str);

    /// Admin override through the log: force open (until closed) or closed, everywhere.
    fn force<'a>(&'a self, provider: &'a str, open: bool) -> BoxFuture<'a, Result<(), String>>;
}

/// Set once when the node joins a cluster; read lock-free afterwards.
pub type SharedBreakersSlot = Arc<OnceLock<Arc<dyn SharedBreakers>>>;
