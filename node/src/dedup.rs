//! Request deduplication (singleflight): identical concurrent requests share one upstream
//! call; every caller gets the full answer or the same error. The shared call runs in its
//! own task, so one caller hanging up does not fail the others.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::IntCounter;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::error::ApiError;
use crate::server::scope;

pub type DedupKey = [u8; 32];

type Slot<T> = watch::Receiver<Option<Result<T, Arc<ApiError>>>>;

pub struct Deduplicator<T> {
    inflight: Arc<Mutex<HashMap<DedupKey, Slot<T>>>>,
    saved: IntCounter,
}

/// Hashes the parts that make two requests the same (scope, endpoint, whole body).
pub fn dedup_key(parts: &[&[u8]]) -> DedupKey {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
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
    /// Not an `async fn`: `work` is handed to its task (or dropped) at the call, so the
    /// caller's future holds only the wait for the outcome, not `work` itself (a request's
    /// whole upstream call, ~1 KB, copied along with every future that awaits this one).
    pub fn run<F>(
        &self,
        key: DedupKey,
        work: F,
    ) -> impl Future<Output = (Result<T, Arc<ApiError>>, bool)> + use<T, F>
    where
        F: Future<Output = Result<T, ApiError>> + Send + 'static,
    {
        let (mut slot, shared) = {
            let mut map = self.inflight.lock();
            match map.get(&key) {
                Some(slot) => (slot.clone(), true),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key, rx.clone());
                    let inflight = Arc::clone(&self.inflight);
                    // The shared call's log lines carry the first caller's request id.
                    let context = scope::current();
                    tokio::spawn(scope::run_if(context, async move {
                        // Removed however the call ends, a panic included: a key left behind
                        // would answer every later identical request "abandoned".
                        let entry = InflightEntry { inflight, key };
                        let outcome = work.await.map_err(Arc::new);
                        drop(entry);
                        let _ = tx.send(Some(outcome));
                    }));
                    (rx, false)
                }
            }
        };
        if shared {
            self.saved.inc();
        }
        async move {
            let outcome = match slot.wait_for(Option::is_some).await {
                Ok(value) => value.clone(),
                Err(_) => None,
            };
            (
                outcome.unwrap_or_else(|| {
                    Err(Arc::new(ApiError::Internal(
                        "the shared upstream call was abandoned".into(),
                    )))
                }),
                shared,
            )
        }
    }
}

/// A shared call's place in the in-flight map, given up when the call ends.
struct InflightEntry<T> {
    inflight: Arc<Mutex<HashMap<DedupKey, Slot<T>>>>,
    key: DedupKey,
}

impl<T> Drop for InflightEntry<T> {
    fn drop(&mut self) {
        self.inflight.lock().remove(&self.key);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn concurrent_identical_calls_share_one_execution() {
        let dedup = Arc::new(Deduplicator::<u32>::new(IntCounter::new("d", "d").unwrap()));
        let runs = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (dedup, runs) = (Arc::clone(&dedup), Arc::clone(&runs));
            tasks.push(tokio::spawn(async move {
                dedup
                    .run(dedup_key(&[b"same"]), async move {
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
    async fn a_shared_call_that_panics_frees_its_key_for_the_next_request() {
        let dedup = Deduplicator::<u32>::new(IntCounter::new("d", "d").unwrap());
        let key = dedup_key(&[b"same"]);
        let (first, _) = dedup
            .run(key, async move {
                if key.len() == 32 {
                    panic!("a bug in the upstream call");
                }
                Ok(1)
            })
            .await;
        assert!(first.is_err_and(|e| e.to_string().contains("abandoned")));
        let (second, shared) = dedup.run(key, async { Ok(2) }).await;
        assert_eq!(second.unwrap(), 2, "the key was freed, so the call ran");
        assert!(!shared);
    }
}
