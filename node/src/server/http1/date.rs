//! The `Date` header (RFC 9110 §6.6.1), formatted once a second per thread rather than per
//! answer.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// `Sun, 06 Nov 1994 08:49:37 GMT` is 29 bytes.
const DATE_BYTES: usize = 29;

thread_local! {
    static CACHED: RefCell<(u64, [u8; DATE_BYTES])> = const { RefCell::new((u64::MAX, [0; DATE_BYTES])) };
}

/// Calls `write` with the current date as an HTTP date.
pub fn with_now<R>(write: impl FnOnce(&[u8]) -> R) -> R {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let formatted = httpdate::fmt_http_date(now);
            let bytes = formatted.as_bytes();
            if bytes.len() != DATE_BYTES {
                return write(bytes);
            }
            cached.1.copy_from_slice(bytes);
            cached.0 = second;
        }
        write(&cached.1)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn the_date_is_an_http_date_of_now() {
        let text = super::with_now(|date| String::from_utf8(date.to_vec()).unwrap());
        let parsed = httpdate::parse_http_date(&text).unwrap();
        let skew = std::time::SystemTime::now()
            .duration_since(parsed)
            .unwrap_or_default();
        assert!(skew.as_secs() <= 1, "{text}");
        assert!(text.ends_with(" GMT"), "{text}");
    }
}
