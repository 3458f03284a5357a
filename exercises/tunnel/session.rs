//! One session of a link: a byte stream, read and written like a TCP connection.
//!
//! Reading takes the payloads the link's reader queued for this session, in order; writing
//! queues `Data` frames for the link's writer (waiting for room there is the back-pressure a
//! fast writer feels); shutting down sends `Close`, a half-close like TCP's FIN.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use crate::frame::{Frame, MAX_PAYLOAD};
use crate::link::Shared;

/// One session: a bidirectional byte stream over the link, like its own TCP connection.
pub struct Session {
    id: u32,
    link: Arc<Shared>,
    incoming: mpsc::Receiver<Bytes>,
    /// The part of the last payload the caller has not read yet.
    unread: Bytes,
    peer_closed: Arc<AtomicBool>,
    outgoing: PollSender<Frame>,
    /// We sent `Close`: no more writes.
    closed: bool,
}

impl Session {
    pub fn new(
        id: u32,
        link: Arc<Shared>,
        incoming: mpsc::Receiver<Bytes>,
        peer_closed: Arc<AtomicBool>,
        outgoing: mpsc::Sender<Frame>,
    ) -> Self {
        let outgoing = PollSender::new(outgoing);
        Session { id, link, incoming, unread: Bytes::new(), peer_closed, outgoing, closed: false }
    }
}

fn link_lost() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "tunnel link lost")
}

impl AsyncRead for Session {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.unread.is_empty() {
            match ready!(this.incoming.poll_recv(cx)) {
                Some(bytes) => this.unread = bytes,
                // The other node closed its side: a clean end of stream.
                None if this.peer_closed.load(Ordering::Acquire) => return Poll::Ready(Ok(())),
                // The link went away under us: an error, so nobody mistakes it for the end.
                None => return Poll::Ready(Err(link_lost())),
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Session {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // Waiting for room in the writer's queue is the back-pressure a fast writer feels.
        ready!(this.outgoing.poll_reserve(cx)).map_err(|_| link_lost())?;
        let n = buf.len().min(MAX_PAYLOAD);
        let frame = Frame::Data { session: this.id, bytes: Bytes::copy_from_slice(&buf[..n]) };
        this.outgoing.send_item(frame).map_err(|_| link_lost())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(())) // frames are queued for the writer task as they are written
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closed {
            ready!(this.outgoing.poll_reserve(cx)).map_err(|_| link_lost())?;
            this.outgoing.send_item(Frame::Close { session: this.id }).map_err(|_| link_lost())?;
            this.closed = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.link.forget(self.id, self.closed);
    }
}

/// Lets tonic's server accept sessions as if they were TCP connections.
impl tonic::transport::server::Connected for Session {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}
