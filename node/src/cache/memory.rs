//! The in-process cache of one node: bounded by entry count, entries expire after their TTL,
//! the least recently used entry goes first when it is full.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;

use super::{CacheError, CacheKey, CachedAnswer, ResponseCache};

pub struct MemoryCache {
    capacity: usize,
    state: Mutex<Lru>,
}

/// Entries plus their recency order: `order` maps a use stamp to its key, oldest first.
#[derive(Default)]
struct Lru {
    entries: HashMap<CacheKey, Entry>,
    order: BTreeMap<u64, CacheKey>,
    clock: u64,
}

struct Entry {
    answer: CachedAnswer,
    expires: Instant,
    stamp: u64,
}

impl Lru {
    fn touch(&mut self, key: CacheKey) -> u64 {
        self.clock += 1;
        self.order.insert(self.clock, key);
        self.clock
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(entry) = self.entries.remove(key) {
            self.order.remove(&entry.stamp);
        }
    }

    fn get(&mut self, key: &CacheKey, now: Instant) -> Option<CachedAnswer> {
        let entry = self.entries.get(key)?;
        if entry.expires <= now {
            self.remove(key);
            return None;
        }
        let old = entry.stamp;
        let answer = entry.answer.clone();
        self.order.remove(&old);
        let stamp = self.touch(*key);
        if let Some(entry) = self.entries.get_mut(key) {
            entry.stamp = stamp;
        }
        Some(answer)
    }

    fn put(&mut self, key: CacheKey, answer: CachedAnswer, expires: Instant, capacity: usize) {
        self.remove(&key);
        while self.entries.len() >= capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        let stamp = self.touch(key);
        self.entries.insert(
            key,
            Entry {
                answer,
                expires,
                stamp,
            },
        );
    }
}

impl MemoryCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Mutex::new(Lru::default()),
        }
    }

    pub fn len(&self) -> usize {
        self.state.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ResponseCache for MemoryCache {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn get<'a>(
        &'a self,
        key: &'a CacheKey,
    ) -> BoxFuture<'a, Result<Option<CachedAnswer>, CacheError>> {
        let found = self.state.lock().get(key, Instant::now());
        Box::pin(std::future::ready(Ok(found)))
    }

    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        answer: CachedAnswer,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        let expires = Instant::now() + ttl;
        self.state.lock().put(*key, answer, expires, self.capacity);
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cache::CachedStream;
    use crate::cache::key::{KeyScope, cache_key};
    use crate::wire::openai::{ChatMessage, ChatRequest, Role};

    fn key(text: &str) -> CacheKey {
        let request = ChatRequest {
            messages: vec![ChatMessage::new(Role::User, text)],
            ..Default::default()
        };
        cache_key(KeyScope::Shared, "/v1/chat/completions", None, &request).unwrap()
    }

    fn answer(text: &str) -> CachedAnswer {
        CachedAnswer::Stream(Arc::new(CachedStream {
            provider: Arc::from("p"),
            events: vec![bytes::Bytes::from(text.to_owned())],
        }))
    }

    fn text(answer: Option<CachedAnswer>) -> Option<String> {
        match answer? {
            CachedAnswer::Stream(s) => Some(String::from_utf8(s.events[0].to_vec()).unwrap()),
            CachedAnswer::Complete(_) => None,
        }
    }

    #[test]
    fn entries_expire_and_the_least_recently_used_goes_first() {
        let mut lru = Lru::default();
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        lru.put(key("a"), answer("a"), later, 2);
        lru.put(key("b"), answer("b"), later, 2);
        assert_eq!(text(lru.get(&key("a"), now)).as_deref(), Some("a"));
        lru.put(key("c"), answer("c"), later, 2);
        assert!(
            lru.get(&key("b"), now).is_none(),
            "b was least recently used"
        );
        assert!(lru.get(&key("a"), now).is_some());
        assert!(lru.get(&key("c"), now).is_some());
        assert!(lru.get(&key("c"), later).is_none(), "expired");
        assert_eq!(lru.entries.len(), 1);
        assert_eq!(lru.order.len(), 1);
        lru.put(key("a"), answer("a2"), later, 2);
        assert_eq!(text(lru.get(&key("a"), now)).as_deref(), Some("a2"));
        assert_eq!((lru.entries.len(), lru.order.len()), (1, 1));
    }
}
