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
    /// cluster breaker is half-open, which is rare): the breaker generation it was granted
    /// at, `None` when it was not.
    fn claim_probe<'a>(&'a self, provider: &'a str) -> BoxFuture<'a, Option<u64>>;

    /// The probe this node claimed succeeded (close everywhere) or failed (open again).
    fn probe_finished(&self, provider: &str, success: bool, reason: &str);

    /// The probe this node claimed at `generation` ended without a verdict (the request's
    /// own error, its deadline, its client gone): the permit goes back for another request to
    /// probe with, unless the breaker has moved on since (then it is no longer counted).
    fn probe_released(&self, provider: &str, generation: u64);

    /// Admin override through the log: force open (until closed) or closed, everywhere.
    fn force<'a>(&'a self, provider: &'a str, open: bool) -> BoxFuture<'a, Result<(), String>>;
}

/// Set once when the node joins a cluster; read lock-free afterwards.
pub type SharedBreakersSlot = Arc<OnceLock<Arc<dyn SharedBreakers>>>;

/// A cluster-wide probe permit this node holds for one request. It is settled with a verdict,
/// or given back when dropped without one (on every other way out of the attempt, a
/// cancelled request included), so no permit is left claimed.
pub struct ProbeClaim {
    provider: String,
    /// The breaker generation the permit was granted at.
    generation: u64,
    shared: Arc<dyn SharedBreakers>,
    settled: bool,
}

impl ProbeClaim {
    pub fn new(provider: String, generation: u64, shared: Arc<dyn SharedBreakers>) -> Self {
        Self {
            provider,
            generation,
            shared,
            settled: false,
        }
    }

    /// The probe's verdict: the provider answered (close everywhere) or failed (open again).
    pub fn settle(mut self, success: bool, reason: &str) {
        self.settled = true;
        self.shared.probe_finished(&self.provider, success, reason);
    }
}

impl Drop for ProbeClaim {
    fn drop(&mut self) {
        if !self.settled {
            self.shared.probe_released(&self.provider, self.generation);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use futures_util::FutureExt;

    use super::*;

    /// Records what a claim reports.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl SharedBreakers for Recorder {
        fn propose_trip(&self, _: &str, _: &str) {}
        fn claim_probe<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Option<u64>> {
            async { Some(1) }.boxed()
        }
        fn probe_finished(&self, provider: &str, success: bool, _: &str) {
            let verdict = if success { "closed" } else { "tripped" };
            self.0.lock().unwrap().push(format!("{provider} {verdict}"));
        }
        fn probe_released(&self, provider: &str, generation: u64) {
            let line = format!("{provider}@{generation} released");
            self.0.lock().unwrap().push(line);
        }
        fn force<'a>(&'a self, _: &'a str, _: bool) -> BoxFuture<'a, Result<(), String>> {
            async { Ok(()) }.boxed()
        }
    }

    #[test]
    fn a_claim_reports_its_verdict_or_gives_the_permit_back_exactly_once() {
        let recorder = Arc::new(Recorder::default());
        let shared: Arc<dyn SharedBreakers> = recorder.clone();
        ProbeClaim::new("a".into(), 2, Arc::clone(&shared)).settle(true, "");
        ProbeClaim::new("b".into(), 2, Arc::clone(&shared)).settle(false, "timeout");
        drop(ProbeClaim::new("c".into(), 2, Arc::clone(&shared)));
        // A request cancelled while it holds the claim: its future (and the claim) dropped.
        let claim = ProbeClaim::new("d".into(), 5, Arc::clone(&shared));
        let pending = async move {
            let _held = claim;
            std::future::pending::<()>().await;
        };
        drop(pending.boxed());
        let seen = recorder.0.lock().unwrap().clone();
        // A release names the generation it was claimed at, whatever the breaker's is now.
        assert_eq!(
            seen,
            ["a closed", "b tripped", "c@2 released", "d@5 released"]
        );
    }
}
