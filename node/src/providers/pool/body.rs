//! The body of an answer on a pooled connection, and the rest of a dropped one read on so
//! that its connection can still go back.

use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;

use super::super::h1::{self, BodyDecoder, Decoded};
use super::{Conn, OriginPool};

/// How much of a body dropped before its end is still read to keep its connection (a stream's
/// translator stops at `[DONE]`, before the chunked terminator; an error body is read up to a
/// cap), and for how long.
const DRAIN_LIMIT: usize = 64 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// The body of an answer on a pooled connection, read by the request that holds it; the
/// connection goes back to its pool once the body's end has been read. Dropped before its
/// end, the rest is read in the background (bounded) so that the connection can still go back.
pub struct PooledBody {
    /// `None` once the body has ended or broken.
    conn: Option<Box<Conn>>,
    decoder: BodyDecoder,
    reusable: bool,
    pool: Arc<OriginPool>,
    /// Set on the copy that reads a dropped body's rest, which is not drained again.
    draining: bool,
}

impl PooledBody {
    /// The body after `conn`'s answer head; an empty one gives the connection back at once.
    pub(super) fn new(
        conn: Box<Conn>,
        framing: h1::Framing,
        reusable: bool,
        pool: Arc<OriginPool>,
    ) -> Self {
        let mut body = Self {
            decoder: BodyDecoder::new(framing),
            reusable,
            conn: Some(conn),
            pool,
            draining: false,
        };
        if body.decoder.is_done() {
            body.finish();
        }
        body
    }

    /// The body's next piece; reads the connection when its buffer holds none.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, String>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.decoder.decode(&mut conn.read) {
                Ok(Decoded::Data(data)) => {
                    if self.decoder.is_done() {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Ok(Decoded::End) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(error) => {
                    let error = self.pool.naming_upstream(error);
                    return Poll::Ready(Some(Err(self.broken(error))));
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => {
                    self.reusable = false;
                    if let Err(error) = self.decoder.at_eof() {
                        let error = self.pool.naming_upstream(error);
                        return Poll::Ready(Some(Err(self.broken(error))));
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    let error = format!("reading the upstream's answer: {error}");
                    let error = self.pool.naming_upstream(error);
                    return Poll::Ready(Some(Err(self.broken(error))));
                }
            }
        }
    }

    /// The body's next piece (see [`PooledBody::poll_frame`]).
    pub async fn next_frame(&mut self) -> Option<Result<Bytes, String>> {
        std::future::poll_fn(|cx| self.poll_frame(cx)).await
    }

    /// The body has been read to its end: the connection goes back if it can carry another
    /// exchange (its answer allowed it and nothing was sent past the body's end).
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.reusable
            && conn.read.is_empty()
        {
            self.pool.check_in(conn);
        }
    }

    fn broken(&mut self, error: String) -> String {
        self.conn = None;
        error
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if self.draining || !self.reusable {
            return;
        }
        let Some(conn) = self.conn.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let rest = PooledBody {
            conn: Some(conn),
            decoder: std::mem::replace(&mut self.decoder, BodyDecoder::new(h1::Framing::Empty)),
            reusable: true,
            pool: Arc::clone(&self.pool),
            draining: true,
        };
        runtime.spawn(drain(rest));
    }
}

/// Reads the rest of a dropped body, at most [`DRAIN_LIMIT`] bytes within [`DRAIN_TIME`];
/// the connection goes back to its pool if the end comes.
async fn drain(mut rest: PooledBody) {
    let mut read = 0;
    let to_the_end = async {
        while let Some(piece) = rest.next_frame().await {
            let Ok(piece) = piece else { return };
            read += piece.len();
            if read > DRAIN_LIMIT {
                return;
            }
        }
    };
    // Whatever stops the loop early leaves the connection in `rest`, dropped with it.
    let _ = tokio::time::timeout(DRAIN_TIME, to_the_end).await;
}
