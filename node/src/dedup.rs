//! Request deduplication (singleflight): identical concurrent requests share one upstream
//! call; every caller gets the full answer or the same error.
//!
//! The first caller (the leader) drives the call in its own task, so a request that shares
//! nothing pays no task of its own, no wake-up across tasks and no copy of its answer. If the
//! leader goes away (its client hung up) while others wait, the call is handed to a task of
//! its own and finishes for them; with nobody waiting it is cancelled, like an unshared one.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use prometheus::IntCounter;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::server::scope;

/// What makes two requests the same: who calls, at which endpoint, with which body (the
/// bytes as sent, or the decoded request encoded again).
///
/// Compared whole, not by a digest: equal keys are equal requests, with no hash to trust,
/// and the map's keyed hash (SipHash) over a body costs a fraction of a SHA-256 of it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DedupKey {
    caller: Arc<str>,
    endpoint: &'static str,
    body: Bytes,
}

impl DedupKey {
    pub fn new(caller: &Arc<str>, endpoint: &'static str, body: Bytes) -> Self {
        Self {
            caller: Arc::clone(caller),
            endpoint,
            body,
        }
    }
}

type Outcome<T> = Result<T, Arc<ApiError>>;
type Slot<T> = watch::Receiver<Option<Outcome<T>>>;
type Inflight<T> = Arc<Mutex<HashMap<DedupKey, Slot<T>>>>;
type Work<T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send>>;

pub struct Deduplicator<T> {
    inflight: Inflight<T>,
    saved: IntCounter,
}

impl<T: Clone + Send + Sync + 'static> Deduplicator<T> {
    pub fn new(saved: IntCounter) -> Self {
        Self {
            inflight: Arc::new(Mutex::new(HashMap::new())),
            saved,
        }
    }

    /// Runs `work` once per key among concurrent callers; the returned future gives the
    /// outcome and whether this caller shared another's call.
    ///
    /// Not an `async fn`: `work` is boxed for the leader (it may have to move to a task of
    /// its own) or dropped for a follower at the call, so the caller's future holds a pointer,
    /// not `work` itself (a request's whole upstream call, copied along with every future
    /// that awaits this one).
    pub fn run<F>(
        &self,
        key: DedupKey,
        work: F,
    ) -> impl Future<Output = (Outcome<T>, bool)> + use<T, F>
    where
        F: Future<Output = Result<T, ApiError>> + Send + 'static,
    {
        let role = match self.inflight.lock().entry(key) {
            Entry::Occupied(slot) => Role::Follower(slot.get().clone()),
            Entry::Vacant(place) => {
                let key = place.key().clone();
                let (tx, rx) = watch::channel(None);
                place.insert(rx);
                Role::Leader(Leader {
                    inflight: Arc::clone(&self.inflight),
                    key,
                    tx,
                    work: Some(Box::pin(work)),
                })
            }
        };
        if matches!(role, Role::Follower(_)) {
            self.saved.inc();
        }
        async move {
            match role {
                Role::Leader(mut leader) => (leader.drive().await, false),
                Role::Follower(slot) => (wait_for(slot).await, true),
            }
        }
    }
}

enum Role<T: Send + Sync + 'static> {
    Leader(Leader<T>),
    Follower(Slot<T>),
}

/// The outcome a follower is sent, or an error if the call ended without one (it panicked).
async fn wait_for<T: Clone>(mut slot: Slot<T>) -> Outcome<T> {
    let outcome = match slot.wait_for(Option::is_some).await {
        Ok(value) => value.clone(),
        Err(_) => None,
    };
    outcome.unwrap_or_else(|| {
        Err(Arc::new(ApiError::Internal(
            "the shared upstream call was abandoned".into(),
        )))
    })
}

/// The first caller's hold on a shared call: its place in the in-flight map, the sender its
/// followers wait on, and the call until it finishes.
struct Leader<T: Send + Sync + 'static> {
    inflight: Inflight<T>,
    key: DedupKey,
    tx: watch::Sender<Option<Outcome<T>>>,
    work: Option<Work<T>>,
}

impl<T: Clone + Send + Sync + 'static> Leader<T> {
    /// Runs the call to its end and hands its outcome to whoever joined meanwhile.
    async fn drive(&mut self) -> Outcome<T> {
        let outcome = match self.work.as_mut() {
            Some(work) => work.await.map_err(Arc::new),
            None => Err(Arc::new(ApiError::Internal(
                "the shared upstream call was polled after its end".into(),
            ))),
        };
        self.work = None;
        self.publish(&outcome);
        outcome
    }

    /// Frees the key (a later identical request makes a call of its own), then sends the
    /// outcome to the followers, if there are any: the map's receiver is gone by then, so
    /// any receiver left is a follower's.
    fn publish(&self, outcome: &Outcome<T>) {
        self.inflight.lock().remove(&self.key);
        if self.tx.receiver_count() > 0 {
            self.tx.send_replace(Some(outcome.clone()));
        }
    }
}

impl<T: Send + Sync + 'static> Drop for Leader<T> {
    fn drop(&mut self) {
        let Some(work) = self.work.take() else {
            return; // finished and published
        };
        let mut map = self.inflight.lock();
        // The map holds one receiver; any other is a follower's. A panic in the call frees
        // the key and leaves the followers an error instead of polling the call again.
        let waiting = self.tx.receiver_count() > 1;
        if !waiting || std::thread::panicking() {
            map.remove(&self.key);
            return; // the call is cancelled with its future; followers see the sender go
        }
        drop(map);
        // The follow-up's log lines carry the leader's request id.
        let context = scope::current();
        let handed = HandedOff {
            inflight: Arc::clone(&self.inflight),
            key: self.key.clone(),
        };
        let tx = self.tx.clone();
        tokio::spawn(scope::run_if(context, async move {
            let outcome = work.await.map_err(Arc::new);
            drop(handed); // the key first, as the leader does
            tx.send_replace(Some(outcome));
        }));
    }
}

/// The key of a shared call whose leader went away while others waited on it: freed however
/// the call then ends, a panic included (a key left behind would answer every later
/// identical request "abandoned").
struct HandedOff<T> {
    inflight: Inflight<T>,
    key: DedupKey,
}

impl<T> Drop for HandedOff<T> {
    fn drop(&mut self) {
        self.inflight.lock().remove(&self.key);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn same_key() -> DedupKey {
        DedupKey::new(
            &Arc::from("client"),
            "/v1/chat/completions",
            Bytes::from_static(b"same"),
        )
    }

    #[test]
    fn keys_are_equal_only_for_the_same_caller_endpoint_and_body() {
        let key = |caller: &str, endpoint, body: &'static [u8]| {
            DedupKey::new(&Arc::from(caller), endpoint, Bytes::from_static(body))
        };
        assert!(same_key() == key("client", "/v1/chat/completions", b"same"));
        assert!(same_key() != key("other", "/v1/chat/completions", b"same"));
        assert!(same_key() != key("client", "/v1/completions", b"same"));
        assert!(same_key() != key("client", "/v1/chat/completions", b"same "));
        // The parts are not run together: moving a byte from one to the next is another key.
        assert!(key("ab", "/x", b"c") != key("a", "/x", b"bc"));
    }

    #[tokio::test]
    async fn concurrent_identical_calls_share_one_execution() {
        let dedup = Arc::new(Deduplicator::<u32>::new(IntCounter::new("d", "d").unwrap()));
        let runs = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (dedup, runs) = (Arc::clone(&dedup), Arc::clone(&runs));
            tasks.push(tokio::spawn(async move {
                dedup
                    .run(same_key(), async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        Ok(7)
                    })
                    .await
            }));
        }
        let mut shared = 0;
        for t in tasks {
            let (value, was_shared) = t.await.unwrap();
            assert_eq!(value.unwrap(), 7);
            shared += u32::from(was_shared);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(shared, 9);
        assert_eq!(dedup.saved.get(), 9);
    }

    #[tokio::test]
    async fn a_leader_that_panics_frees_its_key_and_its_followers_get_an_error() {
        let dedup = Arc::new(Deduplicator::<u32>::new(IntCounter::new("d", "d").unwrap()));
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let leader = tokio::spawn({
            let dedup = Arc::clone(&dedup);
            async move {
                dedup
                    .run(same_key(), async move {
                        if wait.await.is_ok() {
                            panic!("a bug in the upstream call");
                        }
                        Ok(1)
                    })
                    .await
            }
        });
        tokio::task::yield_now().await; // the leader holds the key
        let follower = tokio::spawn({
            let dedup = Arc::clone(&dedup);
            async move { dedup.run(same_key(), async { Ok(3) }).await }
        });
        tokio::task::yield_now().await;
        go.send(()).unwrap();
        assert!(leader.await.unwrap_err().is_panic());
        let (followed, shared) = follower.await.unwrap();
        assert!(shared);
        assert!(followed.is_err_and(|e| e.to_string().contains("abandoned")));
        let (second, shared) = dedup.run(same_key(), async { Ok(2) }).await;
        assert_eq!(second.unwrap(), 2, "the key was freed, so the call ran");
        assert!(!shared);
    }

    /// Sets its flag when dropped: tells whether a call's future was cancelled.
    struct DropFlag(Arc<std::sync::atomic::AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_leader_gone_while_others_wait_hands_the_call_on_and_they_get_its_answer() {
        let dedup = Arc::new(Deduplicator::<u32>::new(IntCounter::new("d", "d").unwrap()));
        let runs = Arc::new(AtomicU32::new(0));
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let leader = tokio::spawn({
            let (dedup, runs) = (Arc::clone(&dedup), Arc::clone(&runs));
            async move {
                dedup
                    .run(same_key(), async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        let _ = wait.await;
                        Ok(7)
                    })
                    .await
            }
        });
        tokio::task::yield_now().await;
        let follower = tokio::spawn({
            let dedup = Arc::clone(&dedup);
            async move { dedup.run(same_key(), async { Ok(0) }).await }
        });
        tokio::task::yield_now().await;
        leader.abort(); // the leader's client hung up
        assert!(leader.await.unwrap_err().is_cancelled());
        // The handed-on call still holds the key: a new identical request joins it.
        let late = tokio::spawn({
            let dedup = Arc::clone(&dedup);
            async move { dedup.run(same_key(), async { Ok(0) }).await }
        });
        tokio::task::yield_now().await;
        go.send(()).unwrap();
        for waiter in [follower, late] {
            let (value, shared) = waiter.await.unwrap();
            assert_eq!(value.unwrap(), 7);
            assert!(shared);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let (next, shared) = dedup.run(same_key(), async { Ok(8) }).await;
        assert_eq!(
            (next.unwrap(), shared),
            (8, false),
            "the key was freed after"
        );
    }

    #[tokio::test]
    async fn a_leader_gone_with_nobody_waiting_cancels_the_call_and_frees_the_key() {
        let dedup = Deduplicator::<u32>::new(IntCounter::new("d", "d").unwrap());
        let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = DropFlag(Arc::clone(&cancelled));
        let call = dedup.run(same_key(), async move {
            let _flag = flag;
            std::future::pending::<()>().await;
            Ok(1)
        });
        let mut call = Box::pin(call);
        assert!(futures_poll_once(&mut call).await.is_none());
        drop(call);
        assert!(cancelled.load(Ordering::SeqCst));
        let (next, shared) = dedup.run(same_key(), async { Ok(2) }).await;
        assert_eq!((next.unwrap(), shared), (2, false));
    }

    /// Polls `future` once: its output if it was ready.
    async fn futures_poll_once<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut *future).poll(cx) {
                std::task::Poll::Ready(output) => Some(output),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
