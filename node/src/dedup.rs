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
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use parking_lot::Mutex;
use prometheus::IntCounter;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::server::scope;

/// What makes two requests the same: who calls, at which endpoint, with which body.
///
/// Compared whole, not by a digest: equal keys are equal requests, with no hash to trust.
/// The hash is the deduplicator's keyed one (SipHash, random keys), taken once, outside the
/// map's lock, by [`Deduplicator::key`].
#[derive(Clone)]
pub struct DedupKey {
    hash: u64,
    caller: Arc<str>,
    endpoint: &'static str,
    body: Bytes,
    /// `None` for a body as sent (its model is in it); the model for a re-encoded one (the
    /// encoding leaves it out), so the two kinds never match each other.
    encoded_for: Option<Option<Arc<str>>>,
}

/// The body a request is known by.
pub enum KeyBody<'a> {
    /// The bytes the client sent (identical retries are identical bytes).
    AsSent(Bytes),
    /// The decoded request encoded again (it was changed, or built from another endpoint's),
    /// with the model it asks for.
    Encoded {
        model: Option<&'a str>,
        body: Vec<u8>,
    },
}

impl PartialEq for DedupKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && self.caller == other.caller
            && self.endpoint == other.endpoint
            && self.encoded_for == other.encoded_for
            && self.body == other.body
    }
}

impl Eq for DedupKey {}

impl Hash for DedupKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

type Outcome<T> = Result<T, Arc<ApiError>>;
type Slot<T> = watch::Receiver<Option<Outcome<T>>>;
type Inflight<T> = Arc<Mutex<HashMap<DedupKey, Slot<T>>>>;
type Work<T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send>>;

pub struct Deduplicator<T> {
    inflight: Inflight<T>,
    hasher: RandomState,
    saved: IntCounter,
}

impl<T: Clone + Send + Sync + 'static> Deduplicator<T> {
    pub fn new(saved: IntCounter) -> Self {
        Self {
            inflight: Arc::new(Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
            saved,
        }
    }

    /// The key of a request to `endpoint` by `caller`.
    pub fn key(&self, caller: &Arc<str>, endpoint: &'static str, body: KeyBody<'_>) -> DedupKey {
        let (body, encoded_for) = match body {
            KeyBody::AsSent(bytes) => (bytes, None),
            KeyBody::Encoded { model, body } => (Bytes::from(body), Some(model.map(Arc::from))),
        };
        let mut hasher = self.hasher.build_hasher();
        caller.hash(&mut hasher);
        endpoint.hash(&mut hasher);
        encoded_for.hash(&mut hasher);
        body.hash(&mut hasher);
        DedupKey {
            hash: hasher.finish(),
            caller: Arc::clone(caller),
            endpoint,
            body,
            encoded_for,
        }
    }

    /// Runs `work` once per key among concurrent callers; the returned future gives the
    /// outcome and whether this caller shared another's call.
    ///
    /// `work` is boxed for the leader (it may have to move to a task of its own) or dropped
    /// for a follower at the call, so the caller's future holds a pointer, not `work` itself
    /// (a request's whole upstream call, copied along with every future that awaits this one).
    ///
    /// The leader's call runs only while its future is polled: await it at once (followers
    /// wait on it from the moment this returns).
    pub fn run<F>(&self, key: DedupKey, work: F) -> SharedCall<T>
    where
        F: Future<Output = Result<T, ApiError>> + Send + 'static,
    {
        let call = match self.inflight.lock().entry(key) {
            Entry::Occupied(slot) => SharedCall::Follower(Box::pin(wait_for(slot.get().clone()))),
            Entry::Vacant(place) => {
                let key = place.key().clone();
                let (tx, rx) = watch::channel(None);
                place.insert(rx);
                SharedCall::Leader(Leader {
                    inflight: Arc::clone(&self.inflight),
                    key,
                    tx,
                    work: Some(Box::pin(work)),
                })
            }
        };
        if matches!(call, SharedCall::Follower(_)) {
            self.saved.inc();
        }
        call
    }
}

/// A caller's part in a shared call: the outcome, and whether another caller made the call.
///
/// Written by hand rather than as an `async` block: a block would hold its captured role
/// and the future it awaits side by side, twice the bytes in every future that awaits it.
pub enum SharedCall<T: Send + Sync + 'static> {
    Leader(Leader<T>),
    /// Boxed: only a request that found an identical one in flight waits this way.
    Follower(Pin<Box<dyn Future<Output = Outcome<T>> + Send>>),
}

impl<T: Clone + Send + Sync + 'static> Future for SharedCall<T> {
    type Output = (Outcome<T>, bool);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            SharedCall::Leader(leader) => leader.poll_drive(cx).map(|outcome| (outcome, false)),
            SharedCall::Follower(wait) => wait.as_mut().poll(cx).map(|outcome| (outcome, true)),
        }
    }
}

/// The outcome a follower is sent, or an error if the call ended without one (it panicked).
async fn wait_for<T: Clone>(mut slot: Slot<T>) -> Outcome<T> {
    let outcome = match slot.wait_for(Option::is_some).await {
        Ok(value) => value.clone(),
        Err(_) => None,
    };
    outcome.unwrap_or_else(|| Err(abandoned()))
}

fn abandoned() -> Arc<ApiError> {
    Arc::new(ApiError::Internal(
        "the shared upstream call was abandoned".into(),
    ))
}

/// The first caller's hold on a shared call: its place in the in-flight map, the sender its
/// followers wait on, and the call until it finishes.
pub struct Leader<T: Send + Sync + 'static> {
    inflight: Inflight<T>,
    key: DedupKey,
    tx: watch::Sender<Option<Outcome<T>>>,
    work: Option<Work<T>>,
}

impl<T: Clone + Send + Sync + 'static> Leader<T> {
    /// Runs the call to its end and hands its outcome to whoever joined meanwhile.
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<Outcome<T>> {
        let Some(work) = self.work.as_mut() else {
            return Poll::Ready(Err(Arc::new(ApiError::Internal(
                "the shared upstream call was polled after its end".into(),
            ))));
        };
        // A panic in the call is this request's error and its followers' alike, as when the
        // call ran in a task of its own; the poisoned call is dropped, never polled again.
        let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(outcome)) => outcome.map_err(Arc::new),
            Err(_) => {
                tracing::error!("the shared upstream call panicked");
                Err(abandoned())
            }
        };
        self.work = None;
        self.publish(&outcome);
        Poll::Ready(outcome)
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
        // The map holds one receiver; any other is a follower's.
        if self.tx.receiver_count() == 1 {
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

    fn same_key<T: Clone + Send + Sync + 'static>(dedup: &Deduplicator<T>) -> DedupKey {
        let body = KeyBody::AsSent(Bytes::from_static(b"same"));
        dedup.key(&Arc::from("client"), "/v1/chat/completions", body)
    }

    #[test]
    fn keys_are_equal_only_for_the_same_caller_endpoint_and_body() {
        let dedup = Deduplicator::<u32>::new(IntCounter::new("d", "d").unwrap());
        let key = |caller: &str, endpoint, body: KeyBody<'_>| {
            dedup.key(&Arc::from(caller), endpoint, body)
        };
        let sent = |body: &'static [u8]| KeyBody::AsSent(Bytes::from_static(body));
        let encoded = |model, body: &[u8]| KeyBody::Encoded {
            model,
            body: body.to_vec(),
        };
        let chat = "/v1/chat/completions";
        assert!(same_key(&dedup) == key("client", chat, sent(b"same")));
        assert!(same_key(&dedup) != key("other", chat, sent(b"same")));
        assert!(same_key(&dedup) != key("client", "/v1/completions", sent(b"same")));
        assert!(same_key(&dedup) != key("client", chat, sent(b"same ")));
        // The parts are not run together: moving a byte from one to the next is another key.
        assert!(key("ab", "/x", sent(b"c")) != key("a", "/x", sent(b"bc")));
        // A re-encoded body leaves the model out: the model tells two of them apart, and
        // neither is taken for a body as sent.
        assert!(
            key("c", chat, encoded(Some("a"), b"x")) == key("c", chat, encoded(Some("a"), b"x"))
        );
        assert!(
            key("c", chat, encoded(Some("a"), b"x")) != key("c", chat, encoded(Some("b"), b"x"))
        );
        assert!(key("c", chat, encoded(None, b"x")) != key("c", chat, encoded(Some("a"), b"x")));
        assert!(key("c", chat, encoded(None, b"x")) != key("c", chat, sent(b"x")));
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
                    .run(same_key(&dedup), async move {
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

    /// Panics on its first poll once `go` is sent, and counts its polls after that.
    struct PanicsOnce {
        go: tokio::sync::oneshot::Receiver<()>,
        polls_after: Arc<AtomicU32>,
        panicked: bool,
    }

    impl Future for PanicsOnce {
        type Output = Result<u32, ApiError>;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            if self.panicked {
                self.polls_after.fetch_add(1, Ordering::SeqCst);
                return Poll::Pending;
            }
            if Pin::new(&mut self.go).poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.panicked = true;
            panic!("a bug in the upstream call");
        }
    }

    #[tokio::test]
    async fn a_call_that_panics_fails_its_callers_alike_and_frees_its_key() {
        let dedup = Arc::new(Deduplicator::<u32>::new(IntCounter::new("d", "d").unwrap()));
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let polls_after = Arc::new(AtomicU32::new(0));
        let call = PanicsOnce {
            go: wait,
            polls_after: Arc::clone(&polls_after),
            panicked: false,
        };
        let leader = tokio::spawn({
            let dedup = Arc::clone(&dedup);
            async move { dedup.run(same_key(&dedup), call).await }
        });
        tokio::task::yield_now().await; // the leader holds the key
        let follower = tokio::spawn({
            let dedup = Arc::clone(&dedup);
            async move { dedup.run(same_key(&dedup), async { Ok(3) }).await }
        });
        tokio::task::yield_now().await;
        go.send(()).unwrap();
        for (caller, was_shared) in [(leader, false), (follower, true)] {
            let (outcome, shared) = caller.await.unwrap();
            assert_eq!(shared, was_shared);
            assert!(outcome.is_err_and(|e| e.to_string().contains("abandoned")));
        }
        assert_eq!(polls_after.load(Ordering::SeqCst), 0, "never polled again");
        let (second, shared) = dedup.run(same_key(&dedup), async { Ok(2) }).await;
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
                    .run(same_key(&dedup), async move {
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
            async move { dedup.run(same_key(&dedup), async { Ok(0) }).await }
        });
        tokio::task::yield_now().await;
        leader.abort(); // the leader's client hung up
        assert!(leader.await.unwrap_err().is_cancelled());
        // The handed-on call still holds the key: a new identical request joins it.
        let late = tokio::spawn({
            let dedup = Arc::clone(&dedup);
            async move { dedup.run(same_key(&dedup), async { Ok(0) }).await }
        });
        tokio::task::yield_now().await;
        go.send(()).unwrap();
        for waiter in [follower, late] {
            let (value, shared) = waiter.await.unwrap();
            assert_eq!(value.unwrap(), 7);
            assert!(shared);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let (next, shared) = dedup.run(same_key(&dedup), async { Ok(8) }).await;
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
        let call = dedup.run(same_key(&dedup), async move {
            let _flag = flag;
            std::future::pending::<()>().await;
            Ok(1)
        });
        let mut call = Box::pin(call);
        assert!(futures_poll_once(&mut call).await.is_none());
        drop(call);
        assert!(cancelled.load(Ordering::SeqCst));
        let (next, shared) = dedup.run(same_key(&dedup), async { Ok(2) }).await;
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
