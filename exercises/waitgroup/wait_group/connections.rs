//! The drain's last resort: closing a connection whose call the cut cannot reach.
//!
//! The cut ends a streaming call at its body's next poll, and hyper polls a body for its
//! next frame only once the frame before has been sent. A client that stops reading sends
//! no more window, so its stream's body is never polled again: no cut reaches it. HTTP/2
//! could reset that one stream, but hyper gives a server's code no handle on it. What the
//! server does own is the connection: [`WaitGroup::connections`] wraps each one, and a
//! connection that still carries a call [`CUT_GRACE`](super::CUT_GRACE) after the cut fails
//! its next read and write. hyper drops it, and every stream on it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::Connected;

use super::WaitGroup;

impl WaitGroup {
    /// How many connections the drain closed because a call on them outlived the cut.
    pub fn connections_closed(&self) -> usize {
        self.closed_count.load(Ordering::SeqCst)
    }

    /// Wraps the server's incoming connections, so that the drain can close one whose call
    /// the cut cannot reach:
    /// `serve_with_incoming_shutdown(group.connections(incoming), stop)`.
    pub fn connections<I, IO, E>(
        &self,
        incoming: I,
    ) -> impl Stream<Item = Result<Closable<IO>, E>> + use<I, IO, E>
    where
        I: Stream<Item = Result<IO, E>>,
    {
        let group = self.clone();
        incoming.map(move |accepted| {
            accepted.map(|io| Closable {
                io,
                connection: Connection::default(),
                close: group.close.clone(),
                closing: Box::pin(group.close.clone().cancelled_owned()),
                closed_count: group.closed_count.clone(),
                closed: false,
            })
        })
    }
}

/// What the server knows of one connection: how many of its calls are in flight. Tonic
/// puts it into each request's extensions (it is the connection's `ConnectInfo`).
#[derive(Clone, Debug, Default)]
pub struct Connection {
    pub(super) calls: Arc<AtomicUsize>,
}

/// A server connection the drain can close: when the group's `close` fires and a call on
/// it is still in flight, reading and writing fail, hyper drops the connection, and every
/// stream on it ends (its body is dropped, and its token with it).
pub struct Closable<IO> {
    io: IO,
    connection: Connection,
    close: CancellationToken,
    closing: Pin<Box<WaitForCancellationFutureOwned>>,
    closed_count: Arc<AtomicUsize>,
    closed: bool,
}

impl<IO> Closable<IO> {
    /// Whether to fail this connection now. Polling `closing` registers the waker: hyper
    /// always has a read pending on a live connection, so `close` wakes it here.
    fn closed(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.closed && !self.close.is_cancelled() {
            let _ = self.closing.as_mut().poll(cx);
        }
        if !self.closed
            && self.close.is_cancelled()
            && self.connection.calls.load(Ordering::SeqCst) > 0
        {
            self.closed = true;
            self.closed_count.fetch_add(1, Ordering::SeqCst);
        }
        self.closed
    }
}

fn closed_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "closed by the drain: a call on it outlived the cut",
    )
}

impl<IO> Connected for Closable<IO> {
    type ConnectInfo = Connection;

    fn connect_info(&self) -> Connection {
        self.connection.clone()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Closable<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.closed(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Closable<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.closed(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.closed(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The layer in a real server, with a client that stops reading a stream.
#[cfg(test)]
mod tests {
    use super::super::CUT_GRACE;
    use super::*;
    use microkit::proto::greeter::greeter_client::GreeterClient;
    use microkit::proto::greeter::greeter_server::{Greeter, GreeterServer};
    use microkit::proto::greeter::{GreetingsRequest, HelloReply};
    use microkit::server::RunningServer;
    use std::time::Duration;
    use tokio::sync::watch;
    use tonic::Status;
    use tonic::{Request, Response};

    /// Each reply is bigger than the client's whole window, so with nobody reading, the
    /// second reply is taken from the stream and then waits for window for ever.
    const REPLY: usize = 256 * 1024;
    const CLIENT_WINDOW: u32 = 64 * 1024;

    /// A Greeter whose stream sends big replies without end, and says how many it made.
    #[derive(Clone)]
    struct Flood {
        made: Arc<watch::Sender<u32>>,
    }

    type Replies = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

    #[tonic::async_trait]
    impl Greeter for Flood {
        async fn greetings(
            &self,
            _: Request<GreetingsRequest>,
        ) -> Result<Response<Replies>, Status> {
            let made = self.made.clone();
            let replies = futures::stream::repeat_with(move || {
                made.send_modify(|made| *made += 1);
                Ok(HelloReply { message: "x".repeat(REPLY), ..Default::default() })
            });
            Ok(Response::new(Box::pin(replies)))
        }
    }

    #[tokio::test]
    async fn a_stream_whose_client_stopped_reading_ends_soon_after_the_cut() {
        let group = WaitGroup::new();
        let made = Arc::new(watch::Sender::new(0));
        let (layer, flood) = (group.clone(), Flood { made: made.clone() });
        let server = RunningServer::start_with(move |incoming, stop| {
            let connections = layer.connections(incoming);
            tonic::transport::Server::builder()
                .layer(layer)
                .add_service(GreeterServer::new(flood))
                .serve_with_incoming_shutdown(connections, stop)
        })
        .await
        .unwrap();
        let channel = tonic::transport::Endpoint::from_shared(server.url())
            .unwrap()
            .initial_stream_window_size(CLIENT_WINDOW)
            .connect()
            .await
            .unwrap();
        let request = GreetingsRequest { name: "slow reader".into(), count: 0, interval_ms: 0 };
        // Never read: the window fills with the first reply.
        let mut stream = GreeterClient::new(channel).greetings(request).await.unwrap().into_inner();
        // The second reply made means hyper sent what the window took of the first and now
        // holds the second, waiting for window that never comes: the body is not polled.
        let mut made = made.subscribe();
        tokio::time::timeout(microkit::PATIENCE, made.wait_for(|made| *made >= 2))
            .await
            .expect("the stream begins")
            .unwrap();

        let deadline = Duration::from_millis(200);
        let started = tokio::time::Instant::now();
        let drained = group.drain(deadline).await;
        let took = started.elapsed();
        assert_eq!(drained.unwrap(), 1, "the stuck stream is counted as cut");
        assert_eq!(group.connections_closed(), 1, "its connection was closed");
        assert!(took < deadline + CUT_GRACE + Duration::from_secs(2), "drain took {took:?}");
        assert_eq!(*made.borrow(), 2, "hyper never asked for a third reply");
        let ended = tokio::time::timeout(microkit::PATIENCE, stream.message()).await;
        assert!(ended.expect("the client hears of it").is_err(), "a broken connection");
        tokio::time::timeout(microkit::PATIENCE, server.shutdown())
            .await
            .expect("nothing holds the server open")
            .unwrap();
    }
}
