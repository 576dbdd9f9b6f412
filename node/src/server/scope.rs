//! What a request's task knows about itself, in a task-local: its [`RequestContext`] (id,
//! endpoint, method, protocol: read by error bodies and by the log formatters, so every log
//! line of the request carries them) and its [`Outcome`] (who served it, which key called,
//! whether it streams: read by the observing layer for the request's log line and metrics).
//!
//! A task-local rather than a tracing span and response extensions: a span is allocated in
//! the subscriber's registry, its fields formatted, and it is entered and exited on every poll
//! of the request; each response extension is a boxed value in a map allocated per response.
//! The task-local costs a pointer swap per poll and nothing per field: it holds a box, because
//! tokio swaps the value itself into the thread's slot and back around each poll (the scope by
//! value, 224 bytes, cost ~450 instructions a request in those copies).

use std::cell::RefCell;
use std::pin::pin;
use std::sync::Arc;

use axum::http::Method;

use super::gateway_headers::GatewayHeaders;

tokio::task_local! {
    static SCOPE: Box<RequestScope>;
}

struct RequestScope {
    context: RequestContext,
    outcome: RefCell<Outcome>,
}

impl RequestScope {
    fn new(context: RequestContext) -> Box<Self> {
        Box::new(Self {
            context,
            outcome: RefCell::default(),
        })
    }
}

/// What every log line of a request says about it.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub id: Arc<str>,
    pub endpoint: &'static str,
    pub method: Method,
    pub protocol: &'static str,
}

/// Who served a response: set by handlers for the answer's headers and the log line.
#[derive(Clone, Debug)]
pub struct ServedBy {
    pub provider: Arc<str>,
    pub attempts: u32,
}

/// What the handlers learned about a request, for its log line and metrics.
#[derive(Default, Debug)]
pub struct Outcome {
    /// What the answer's headers say: who served it (read by the log line too), the
    /// rate-limit figures, the cache's verdict. The request id is the observing layer's.
    pub answer: GatewayHeaders,
    /// The caller's key name (set by authentication).
    pub client: Option<Arc<str>>,
    /// The response is a stream: its figures are taken when the body ends.
    pub streamed: bool,
}

/// Runs a request's `future` as `context`; returns its output and what it recorded.
pub async fn run<F: Future>(context: RequestContext, future: F) -> (F::Output, Outcome) {
    let mut scoped = pin!(SCOPE.scope(RequestScope::new(context), future));
    let output = scoped.as_mut().await;
    let outcome = scoped
        .as_mut()
        .take_value()
        .map(|scope| scope.outcome.into_inner())
        .unwrap_or_default();
    (output, outcome)
}

/// Runs `future` (work spawned on behalf of a request) as `context`, when there is one.
pub async fn run_if<F: Future>(context: Option<RequestContext>, future: F) -> F::Output {
    match context {
        Some(context) => SCOPE.scope(RequestScope::new(context), future).await,
        None => future.await,
    }
}

/// Runs `f` as the request `context` (its last log line, written after the handler).
pub fn run_sync<R>(context: RequestContext, f: impl FnOnce() -> R) -> R {
    SCOPE.sync_scope(RequestScope::new(context), f)
}

/// The context of the request being handled, if any.
pub fn current() -> Option<RequestContext> {
    SCOPE.try_with(|scope| scope.context.clone()).ok()
}

/// `f` of the current request's context, without cloning it; `None` outside of a request.
pub fn with_context<R>(f: impl FnOnce(&RequestContext) -> R) -> Option<R> {
    SCOPE.try_with(|scope| f(&scope.context)).ok()
}

/// The id of the request being handled, or `-` outside of one.
pub fn current_request_id() -> Arc<str> {
    SCOPE
        .try_with(|scope| Arc::clone(&scope.context.id))
        .unwrap_or_else(|_| Arc::from("-"))
}

/// Records into the current request's outcome (nothing outside of a request).
pub fn record(f: impl FnOnce(&mut Outcome)) {
    let _ = SCOPE.try_with(|scope| {
        if let Ok(mut outcome) = scope.outcome.try_borrow_mut() {
            f(&mut outcome);
        }
    });
}

/// Whether the current request's response streams.
pub fn is_streamed() -> bool {
    SCOPE
        .try_with(|scope| scope.outcome.try_borrow().is_ok_and(|o| o.streamed))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(id: &str) -> RequestContext {
        RequestContext {
            id: Arc::from(id),
            endpoint: "/v1/chat/completions",
            method: Method::POST,
            protocol: "h1",
        }
    }

    #[tokio::test]
    async fn outcome_recorded_inside_comes_back_and_nothing_leaks_outside() {
        let (id, outcome) = run(context("req-1"), async {
            record(|o| o.client = Some(Arc::from("alice")));
            tokio::task::yield_now().await;
            record(|o| o.streamed = true);
            assert!(is_streamed());
            current_request_id()
        })
        .await;
        assert_eq!(&*id, "req-1");
        assert_eq!(outcome.client.as_deref(), Some("alice"));
        assert!(outcome.streamed);
        assert_eq!(&*current_request_id(), "-", "outside of a request");
        record(|o| o.streamed = true);
        assert!(!is_streamed());
    }

    #[tokio::test]
    async fn spawned_work_keeps_the_context() {
        let context = run(context("req-2"), async { current() }).await.0;
        let id = tokio::spawn(run_if(context, async { current_request_id() }))
            .await
            .ok();
        assert_eq!(id.as_deref(), Some("req-2"));
    }
}
