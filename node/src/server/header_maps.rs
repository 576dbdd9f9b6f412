//! Header maps kept for reuse on the thread that served them. A map with room for a request's
//! or an answer's headers (~12) is ~1.3 KB: past glibc's per-thread cache, so allocating and
//! freeing one goes through the allocator's slow path. A request routed with a map needs two
//! (its own and its answer's; a chat completion on the plain HTTP/1.1 listener only the
//! answer's); in steady state they come from here and go back here.

use std::cell::RefCell;

use axum::http::HeaderMap;

/// Room a taken map has: a request's usual headers, or an answer's with the gateway's own
/// on the listeners that take them in the map (content type, request id, provider,
/// attempts, three to five rate-limit headers, cache, Alt-Svc).
pub const ROOM: usize = 12;

/// Maps kept per thread: a connection holds none between requests, so a few cover a
/// thread's requests in flight at once; past that, maps are allocated and freed as usual.
const KEPT: usize = 16;

thread_local! {
    static KEPT_MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for [`ROOM`] headers.
pub fn take() -> HeaderMap {
    KEPT_MAPS
        .try_with(|kept| kept.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| HeaderMap::with_capacity(ROOM))
}

/// Gives `map` back for reuse; emptied here. Only a map with room for exactly [`ROOM`]
/// headers and at most that many values is kept (not one that grew, nor one holding many
/// values of a few names, whose extra values' storage `clear` would keep), so kept maps stay
/// small.
pub fn give(mut map: HeaderMap) {
    // `with_capacity(ROOM)` has room for exactly `ROOM` (the test checks it).
    if map.capacity() != ROOM || map.len() > ROOM {
        return;
    }
    map.clear();
    let _ = KEPT_MAPS.try_with(|kept| {
        let mut kept = kept.borrow_mut();
        if kept.len() < KEPT {
            kept.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_map_given_back_is_taken_again_empty_with_its_room() {
        let mut map = take();
        let room = map.capacity();
        assert_eq!(room, ROOM);
        map.insert("x-a", HeaderValue::from_static("1"));
        give(map);
        let again = take();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room);
        // Too small or grown: not kept.
        give(HeaderMap::new());
        let mut grown = HeaderMap::with_capacity(ROOM);
        for i in 0..40 {
            if let Ok(name) = axum::http::HeaderName::try_from(format!("x-{i}")) {
                grown.insert(name, HeaderValue::from_static("v"));
            }
        }
        assert!(grown.capacity() > ROOM);
        give(grown);
        let mut many_values = HeaderMap::with_capacity(ROOM);
        for _ in 0..40 {
            many_values.append("cookie", HeaderValue::from_static("a=1"));
        }
        give(many_values);
        assert_eq!(KEPT_MAPS.with(|kept| kept.borrow().len()), 0);
    }
}
