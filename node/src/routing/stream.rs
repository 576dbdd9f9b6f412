//! A stream that has passed the point of no return: its first chunk is in hand, so no
//! failover is possible any more. It enforces the stall timeout between chunks and settles
//! the provider's breaker, health and metrics when it ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};

use super::breaker::BreakerPermit;
use super::entry::ProviderEntry;
use crate::metrics::Metrics;
use crate::providers::{ChunkStream, ProviderError, StreamItem};

pub struct CommittedStream {
    inner: Pin<Box<dyn Stream<Item = Result<StreamItem, ProviderError>> + Send>>,
}

struct State {
    entry: Arc<ProviderEntry>,
    permit: Option<BreakerPermit>,
    first: Option<StreamItem>,
    rest: ChunkStream,
    stall: Duration,
    metrics: Arc<Metrics>,
    done: bool,
}

impl State {
    fn settle(&mut self, error: Option<&ProviderError>) {
        self.done = true;
        if let Some(permit) = self.permit.take() {
            match error {
                None => permit.success(),
                Some(error) => self.entry.record_failure(permit, error, &self.metrics),
            }
        }
    }
}

impl CommittedStream {
    pub fn new(
        entry: Arc<ProviderEntry>,
        permit: BreakerPermit,
        first: StreamItem,
        rest: ChunkStream,
        stall: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let state = State {
            entry,
            permit: Some(permit),
            first: Some(first),
            rest,
            stall,
            metrics,
            done: false,
        };
        let inner = futures_util::stream::unfold(state, |mut state| async move {
            if state.done {
                return None;
            }
            if let Some(first) = state.first.take() {
                state.note_usage(&first);
                return Some((Ok(first), state));
            }
            match tokio::time::timeout(state.stall, state.rest.next()).await {
                Ok(Some(Ok(item))) => {
                    state.note_usage(&item);
                    Some((Ok(item), state))
                }
                Ok(Some(Err(error))) => {
                    state.settle(Some(&error));
                    Some((Err(error), state))
                }
                Ok(None) => {
                    state.settle(None);
                    None
                }
                Err(_) => {
                    let error = ProviderError::StreamBroken(format!(
                        "no chunk from the provider for {:?}",
                        state.stall
                    ));
                    state.settle(Some(&error));
                    Some((Err(error), state))
                }
            }
        });
        Self {
            inner: Box::pin(inner),
        }
    }
}

impl State {
    fn note_usage(&self, item: &StreamItem) {
        if let Some(usage) = &item.usage {
            self.entry.record_usage(usage);
        }
    }
}

impl Stream for CommittedStream {
    type Item = Result<StreamItem, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}
