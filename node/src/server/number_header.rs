//! Header values from numbers in one allocation (`HeaderValue::from(u64)` takes two: a
//! `BytesMut` and the `Bytes` it is frozen into) and none for single digits.

use axum::http::HeaderValue;

const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// `n` in decimal, as a header value.
pub fn number_header(n: u64) -> HeaderValue {
    if let Some(digit) = DIGITS.get(n as usize) {
        return HeaderValue::from_static(digit);
    }
    let mut buf = [0u8; 20];
    let mut start = buf.len();
    let mut rest = n;
    while rest > 0 {
        start -= 1;
        buf[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    // ASCII digits are always a valid header value.
    HeaderValue::from_bytes(&buf[start..]).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_like_the_standard_conversion() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            4096,
            59_999,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            assert_eq!(number_header(n), HeaderValue::from(n), "{n}");
        }
    }
}
