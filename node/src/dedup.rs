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
use futures_util::FutureExt;
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
        // Made before the lock, so that only the map's own work runs under it (a follower
        // drops it unused: the rarer case).
        let (tx, rx) = watch::channel(None);
        let joined = match self.inflight.lock().entry(key) {
            Entry::Occupied(slot) => Err(slot.get().clone()),
            Entry::Vacant(place) => {
                let key = place.key().clone();
                place.insert(rx);
                Ok(key)
            }
        };
        let call = match joined {
            Ok(key) => SharedCall::Leader(Leader {
                inflight: Arc::clone(&self.inflight),
                key,
                tx,
                work: Some(Box::pin(work)),
            }),
            Err(slot) => SharedCall::Follower(Box::pin(wait_for(slot))),
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

/// Logs a panic of the shared call (with its message) and gives the error its callers get.
fn panicked(payload: &(dyn std::any::Any + Send)) -> Arc<ApiError> {
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)");
    tracing::error!(panic = message, "the shared upstream call panicked");
    abandoned()
}

fn abandoned() -> Arc<ApiError> {
    Arc::new(ApiError::Internal(
        "the upstream call this request shared with identical ones was abandoned after an \
         internal error (the gateway's log has it)"
            .into(),
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
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx)));
        let outcome = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(outcome)) => {
                self.work = None;
                outcome.map_err(Arc::new)
            }
            Err(panic) => {
                self.work = None; // before the payload is dropped, which may panic too
                Err(panicked(&*panic))
            }
        };
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
        // The map holds one receiver; any other is a follower's. With none, or no runtime to
        // finish the call on, it is cancelled with its future (followers see the sender go).
        let waiting = self.tx.receiver_count() > 1;
        let runtime = waiting.then(tokio::runtime::Handle::try_current);
        let Some(Ok(runtime)) = runtime else {
            map.remove(&self.key);
            return;
        };
        drop(map);
        // The follow-up's log lines carry the leader's request id.
        let context = scope::current();
        let handed = HandedOff {
            inflight: Arc::clone(&self.inflight),
            key: self.key.clone(),
        };
        let tx = self.tx.clone();
        runtime.spawn(scope::run_if(context, async move {
            let outcome = match AssertUnwindSafe(work).catch_unwind().await {
                Ok(outcome) => outcome.map_err(Arc::new),
                Err(panic) => Err(panicked(&*panic)),
            };
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
#[path = "dedup_tests.rs"]
mod tests;
