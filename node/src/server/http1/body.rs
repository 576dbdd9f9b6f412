//! A request body that has not all arrived with its head: read from the socket as the handler
//! polls it, so the handler's own size limit and read timeout apply (413 and 408 with the
//! request's id, as for every answer), and nothing is buffered past what it asks for.
//!
//! The body borrows the connection's read side and buffer for the request's life and hands
//! them back when dropped; the connection goes on only if the body was read to its end.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::oneshot;

use crate::wire::http1::{BodyDecoder, Decoded, Framing};

/// Read size for a body that did not come with its head.
const READ_BYTES: usize = 16 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The connection's read side and buffer, back from a [`SocketBody`].
pub struct ReadSide {
    pub reader: OwnedReadHalf,
    pub buf: BytesMut,
    /// The body was read to its end: the next request starts at the buffer's front.
    pub complete: bool,
}

pub struct SocketBody {
    side: Option<ReadSide>,
    decoder: BodyDecoder,
    /// Bytes of `100 Continue` still to write before the first read.
    continue_left: usize,
    back: Option<oneshot::Sender<ReadSide>>,
}

impl SocketBody {
    /// The body framed by `framing`; `expect_continue` sends `100 Continue` when the handler
    /// first asks for the body (never if it answers without reading it).
    pub fn new(
        side: ReadSide,
        framing: Framing,
        expect_continue: bool,
    ) -> (Self, oneshot::Receiver<ReadSide>) {
        let (back, returned) = oneshot::channel();
        let body = Self {
            side: Some(side),
            decoder: BodyDecoder::new(framing),
            continue_left: if expect_continue { CONTINUE.len() } else { 0 },
            back: Some(back),
        };
        (body, returned)
    }

    fn poll_continue(
        side: &ReadSide,
        left: &mut usize,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        let stream = side.reader.as_ref();
        while *left > 0 {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write(&CONTINUE[CONTINUE.len() - *left..]) {
                Ok(n) => *left -= n,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl http_body::Body for SocketBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        let Some(side) = this.side.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match this.decoder.decode(&mut side.buf) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::End) => {
                    side.complete = true;
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(error) => return Poll::Ready(Some(Err(invalid(error)))),
            }
            ready!(Self::poll_continue(side, &mut this.continue_left, cx))?;
            let stream = side.reader.as_ref();
            ready!(stream.poll_read_ready(cx))?;
            side.buf.reserve(READ_BYTES);
            match stream.try_read_buf(&mut side.buf) {
                Ok(0) => {
                    let error = this.decoder.at_eof().err().unwrap_or_default();
                    return Poll::Ready(Some(Err(invalid(error))));
                }
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Some(Err(error))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }
}

fn invalid(error: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, error)
}

impl Drop for SocketBody {
    fn drop(&mut self) {
        if let (Some(mut side), Some(back)) = (self.side.take(), self.back.take()) {
            side.complete |= self.decoder.is_done();
            let _ = back.send(side);
        }
    }
}
