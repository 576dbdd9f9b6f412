use super::*;
use std::sync::atomic::{AtomicU32, Ordering};

fn same_key<T: Clone + Send + Sync + 'static>(dedup: &Deduplicator<T>) -> DedupKey {
    let body = KeyBody::AsSent(Bytes::from_static(b"same"));
    dedup.key(&Arc::from("client"), "/v1/chat/completions", body)
}

#[test]
fn keys_are_equal_only_for_the_same_caller_endpoint_and_body() {
    let dedup = Deduplicator::<u32>::new(IntCounter::new("d", "d").unwrap());
    let key =
        |caller: &str, endpoint, body: KeyBody<'_>| dedup.key(&Arc::from(caller), endpoint, body);
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
    assert!(key("c", chat, encoded(Some("a"), b"x")) == key("c", chat, encoded(Some("a"), b"x")));
    assert!(key("c", chat, encoded(Some("a"), b"x")) != key("c", chat, encoded(Some("b"), b"x")));
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

/// A leader whose call panics once `go` is sent; the count of polls after the panic.
#[allow(clippy::type_complexity)]
fn leader_that_panics(
    dedup: &Arc<Deduplicator<u32>>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    Arc<AtomicU32>,
    tokio::task::JoinHandle<(Outcome<u32>, bool)>,
) {
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let polls_after = Arc::new(AtomicU32::new(0));
    let call = PanicsOnce {
        go: wait,
        polls_after: Arc::clone(&polls_after),
        panicked: false,
    };
    let dedup = Arc::clone(dedup);
    let leader = tokio::spawn(async move { dedup.run(same_key(&dedup), call).await });
    (go, polls_after, leader)
}

#[tokio::test]
async fn a_call_that_panics_fails_its_callers_alike_and_frees_its_key() {
    let dedup = Arc::new(Deduplicator::<u32>::new(IntCounter::new("d", "d").unwrap()));
    let (go, polls_after, leader) = leader_that_panics(&dedup);
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

#[tokio::test]
async fn a_handed_on_call_that_panics_fails_its_followers_and_frees_its_key() {
    let dedup = Arc::new(Deduplicator::<u32>::new(IntCounter::new("d", "d").unwrap()));
    let (go, polls_after, leader) = leader_that_panics(&dedup);
    tokio::task::yield_now().await;
    let follower = tokio::spawn({
        let dedup = Arc::clone(&dedup);
        async move { dedup.run(same_key(&dedup), async { Ok(3) }).await }
    });
    tokio::task::yield_now().await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    go.send(()).unwrap();
    let (outcome, shared) = follower.await.unwrap();
    assert!(shared);
    assert!(outcome.is_err_and(|e| e.to_string().contains("abandoned")));
    assert_eq!(polls_after.load(Ordering::SeqCst), 0, "never polled again");
    let (next, shared) = dedup.run(same_key(&dedup), async { Ok(2) }).await;
    assert_eq!((next.unwrap(), shared), (2, false), "the key was freed");
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
