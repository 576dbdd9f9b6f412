//! HTTP/1.1 written and read byte by byte on a raw `TcpStream`: for the tests of framing,
//! malformed heads and connection handling that a client library would not send.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Gateway;

/// Upper bound for one exchange: only there so a broken gateway fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A response read off a raw connection.
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

pub async fn connect(gateway: &Gateway) -> TcpStream {
    TcpStream::connect(&gateway.process.addr).await.unwrap()
}

/// Reads one HTTP/1.1 response (head, then a `Content-Length` body); `None` when the
/// connection closed first.
pub async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> Option<RawResponse> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match tokio::time::timeout(PATIENCE, stream.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => return None,
            Ok(Ok(n)) => buffer.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no response within {PATIENCE:?}"),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head}"));
    let mut response = RawResponse {
        status,
        head,
        body: String::new(),
    };
    let length: usize = response
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        match tokio::time::timeout(PATIENCE, stream.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => break,
            Ok(Ok(n)) => body.extend_from_slice(&chunk[..n]),
        }
    }
    response.body = String::from_utf8_lossy(&body).into_owned();
    Some(response)
}

/// Writes `request` on a new connection and reads the response.
pub async fn raw_exchange(gateway: &Gateway, request: &[u8]) -> RawResponse {
    let mut stream = connect(gateway).await;
    stream.write_all(request).await.unwrap();
    read_response(&mut stream).await.unwrap_or_else(|| {
        panic!(
            "connection closed without a response to {:?}",
            String::from_utf8_lossy(request)
        )
    })
}

/// Waits until the server closes `stream` (EOF or reset), discarding what it sends; returns
/// what arrived.
pub async fn until_closed(stream: &mut TcpStream, patience: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = Instant::now() + patience;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => return received,
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
            Err(_) => panic!(
                "the server kept the connection open for {patience:?}; received {:?}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
}
