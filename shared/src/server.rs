//! A server on a free loopback port (gRPC here, axum in `microkit-http`), stopped either
//! gracefully ([`RunningServer::shutdown`]: stop accepting, let calls in flight finish within
//! the drain deadline, cut the rest) or as a killed process stops ([`RunningServer::crash`]:
//! every connection dies at once, because the server runs on a runtime of its own, on its
//! own thread, and dropping that runtime drops every connection task).
//!
//! [`RunningServer::start`] serves health and reflection too ([`crate::health`]); a server
//! built with [`RunningServer::start_with`] (layers, TLS, axum) adds them itself and names
//! its [`Health`] with [`RunningServer::with_health`]. Each faces clients it does not
//! control, so [`Incoming`], [`builder`] and the drain deadline bound what one may hold.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::health::Health;

/// The time limits every HTTP server here keeps, because each faces clients it does not
/// control: one that sends half a request and waits must not hold a connection, or a stop,
/// for as long as it likes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// From a connection's start, or the end of its last answer, to the end of the next
    /// request's headers. It is also the idle timeout of a kept-alive connection.
    pub header_timeout: Duration,
    /// How long a graceful stop lets requests in flight finish before it cuts them.
    pub drain_deadline: Duration,
}

impl Default for Limits {
    /// 10 s for headers (a browser sends them in one packet; a person does not type them),
    /// 5 s to drain (longer than any answer here takes, shorter than the shortest default
    /// grace period before SIGKILL: `docker stop`'s 10 s; Kubernetes 30 s, systemd 90 s).
    fn default() -> Self {
        Limits { header_timeout: Duration::from_secs(10), drain_deadline: Duration::from_secs(5) }
    }
}

/// The most streams (calls) one client connection may have open at once; the server refuses
/// more with `REFUSED_STREAM`, and tonic's client queues them until one ends. Without it,
/// one connection held 10,000 never-read streams and 60 MB. 100 is the least RFC 9113
/// (section 6.5.2) recommends a server allow.
const MAX_STREAMS_PER_CONNECTION: u32 = 100;

/// HTTP/2 keepalive of every gRPC server: a ping after this long without a frame from the
/// client, and the connection closed if its answer takes this long again. Any HTTP/2
/// client answers at once, busy or idle; one that has gone (a host cut off) or never read
/// (a raw socket) is closed within twice this, the header timeout.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// `Server::builder()` with the defaults every gRPC server here keeps: at most
/// `MAX_STREAMS_PER_CONNECTION` streams per connection, and `KEEPALIVE` pings.
pub fn builder() -> Server {
    Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE))
}

/// A server running in the background until shut down, crashed or dropped (a drop crashes).
#[must_use = "dropping a RunningServer stops it at once, cutting calls in flight: keep it, and end it with shutdown()"]
pub struct RunningServer {
    addr: SocketAddr,
    stop: CancellationToken,
    crash: Option<oneshot::Sender<()>>,
    finished: Option<oneshot::Receiver<anyhow::Result<()>>>,
    health: Option<Health>,
    /// Connections accepted and not yet closed.
    open: Arc<AtomicUsize>,
    drain_deadline: Duration,
}

impl RunningServer {
    /// Serves `routes`, with health (SERVING for the whole server) and reflection, built
    /// with [`builder`].
    pub async fn start(routes: Routes) -> std::io::Result<Self> {
        Self::start_describing(routes, Health::default(), crate::health::DESCRIPTORS).await
    }

    /// [`RunningServer::start`] for protos of the program's own: `health` names its services,
    /// reflection describes `descriptors` (an encoded `FileDescriptorSet`, or a panic).
    pub async fn start_describing(
        routes: Routes,
        health: Health,
        descriptors: &'static [u8],
    ) -> std::io::Result<Self> {
        let routes = health.mount_describing(routes, descriptors);
        let server = Self::start_with(move |incoming, stop| {
            builder().add_routes(routes).serve_with_incoming_shutdown(incoming, stop)
        })
        .await?;
        Ok(server.with_health(health))
    }

    /// Serves whatever `serve` builds from the listener and the stop signal, so callers can
    /// add layers, TLS or several services: `serve` is usually
    /// `|incoming, stop| microkit::server::builder()...serve_with_incoming_shutdown(incoming, stop)`.
    pub async fn start_with<F, Fut, E>(serve: F) -> std::io::Result<Self>
    where
        F: FnOnce(Incoming, WaitForCancellationFutureOwned) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        Self::start_on(loopback, Limits::default(), serve).await
    }

    /// [`RunningServer::start_with`] on `addr` (port 0: a free one) within `limits`: for a
    /// node that other hosts must reach (the partition tests run nodes on separate hosts), a
    /// role's fixed port, or a test that shortens the limits.
    pub async fn start_on<F, Fut, E>(
        addr: SocketAddr,
        limits: Limits,
        serve: F,
    ) -> std::io::Result<Self>
    where
        F: FnOnce(Incoming, WaitForCancellationFutureOwned) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("grpc-server")
            .enable_all()
            .build()?;

        let stop = CancellationToken::new();
        let (crash_tx, crash_rx) = oneshot::channel::<()>();
        let (finished_tx, finished_rx) = oneshot::channel();
        let stop_signal = stop.clone().cancelled_owned();
        let open = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&open);
        std::thread::spawn(move || {
            let result = runtime.block_on(async move {
                let listener = TcpListener::from_std(listener)?;
                let incoming = Incoming::new(listener, limits.header_timeout, counted);
                tokio::select! {
                    served = serve(incoming, stop_signal) => served.map_err(anyhow::Error::from),
                    _ = crash_rx => Ok(()),
                }
            });
            // Dropping the runtime ends every connection task it still runs.
            runtime.shutdown_background();
            let _ = finished_tx.send(result);
        });
        Ok(RunningServer {
            addr,
            stop,
            crash: Some(crash_tx),
            finished: Some(finished_rx),
            health: None,
            open,
            drain_deadline: limits.drain_deadline,
        })
    }

    /// Names the [`Health`] this server's health service reports, so a graceful stop can
    /// report NOT_SERVING first and end open `Watch` streams when it drains.
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    /// How long [`RunningServer::shutdown`] lets calls in flight finish before it cuts them
    /// (default 5 s, as [`Limits`] says why). Only the tests shorten it.
    #[cfg(test)]
    fn with_drain_deadline(mut self, deadline: Duration) -> Self {
        self.drain_deadline = deadline;
        self
    }

    pub fn health(&self) -> Option<&Health> {
        self.health.as_ref()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, what `Channel::from_shared` and the generated clients take.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets calls in flight finish within the drain deadline, cuts the
    /// connections still open then (logged as a warning), and returns.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown_counting_cuts().await.map(drop)
    }

    /// [`RunningServer::shutdown`], returning how many connections were still open at the
    /// drain deadline and were cut (0: everything finished in time).
    async fn shutdown_counting_cuts(mut self) -> anyhow::Result<usize> {
        if let Some(health) = &self.health {
            health.close();
        }
        self.stop.cancel();
        let finished = self.finished.take();
        let Some(mut finished) = finished else { return Ok(0) };
        if let Ok(result) = tokio::time::timeout(self.drain_deadline, &mut finished).await {
            return result.unwrap_or(Ok(())).map(|()| 0);
        }
        let cut = self.open.load(Ordering::SeqCst);
        tracing::warn!(
            cut,
            addr = %self.addr,
            "connections still open after the drain deadline of {:?}: cut",
            self.drain_deadline
        );
        if let Some(crash) = self.crash.take() {
            let _ = crash.send(());
        }
        finished.await.unwrap_or(Ok(()))?;
        Ok(cut)
    }

    /// Drops every connection at once, mid-call: what clients see when a server dies.
    pub async fn crash(mut self) {
        if let Some(crash) = self.crash.take() {
            let _ = crash.send(());
        }
        if let Some(finished) = self.finished.take() {
            let _ = finished.await;
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(crash) = self.crash.take() {
            let _ = crash.send(());
        }
    }
}

/// How long the listener pauses after a failed accept. Out of file descriptors, `accept`
/// fails again at once until a connection closes: without a pause the loop spins a core.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// How often, at most, a run of failed accepts is logged (a pause every 50 ms would
/// otherwise write 20 lines a second while the limit lasts).
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(5);

/// The connections of a listener, as the stream tonic's `serve_with_incoming*` takes.
///
/// Unlike tonic's `TcpIncoming` it never yields an error: a failed accept (the file limit
/// reached, a connection reset before it was taken) leaves the listener fine, so it is
/// logged, at most every 5 s, and the next is tried after a pause. Each connection gets
/// `TCP_NODELAY` (without it a small write, a TLS handshake message, waits for a delayed
/// ACK: 44 ms per new TLS connection instead of under 1 ms) and the header timeout of
/// [`Connection`].
pub struct Incoming {
    listener: TcpListener,
    header_timeout: Duration,
    open: Arc<AtomicUsize>,
    pause: Option<Pin<Box<Sleep>>>,
    failed: u64,
    last_logged: Option<Instant>,
}

impl Incoming {
    /// Accepts on `listener`; each connection must complete its first request within
    /// `header_timeout` and counts itself in `open` while it lives.
    fn new(listener: TcpListener, header_timeout: Duration, open: Arc<AtomicUsize>) -> Self {
        Incoming { listener, header_timeout, open, pause: None, failed: 0, last_logged: None }
    }
}

/// A listener bound elsewhere (a role's fixed port), with the default header timeout.
impl From<TcpListener> for Incoming {
    fn from(listener: TcpListener) -> Self {
        Incoming::new(listener, Limits::default().header_timeout, Arc::default())
    }
}

impl futures::Stream for Incoming {
    type Item = std::io::Result<Connection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(pause) = &mut this.pause {
                ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            match ready!(this.listener.poll_accept(cx)) {
                Ok((stream, _peer)) => {
                    // The time of the last warning stays: at the limit, accepts that fail
                    // and succeed in turn must not each start a fresh warning.
                    if this.failed > 0 {
                        tracing::info!(failed = this.failed, "accepting again");
                        this.failed = 0;
                    }
                    let _ = stream.set_nodelay(true);
                    let connection =
                        Connection::new(stream, this.header_timeout, Arc::clone(&this.open));
                    return Poll::Ready(Some(Ok(connection)));
                }
                Err(error) => {
                    this.failed += 1;
                    if this.last_logged.is_none_or(|at| at.elapsed() >= ACCEPT_LOG_EVERY) {
                        tracing::warn!(failed = this.failed, "accept failed: {error}; pausing");
                        this.last_logged = Some(Instant::now());
                    }
                    this.pause = Some(Box::pin(tokio::time::sleep(ACCEPT_PAUSE)));
                }
            }
        }
    }
}

/// One accepted connection: a `TcpStream` that fails its reads with `TimedOut` when the
/// client has not sent a complete first request within the header timeout.
///
/// "Complete" is the HTTP/2 connection preface (the 24-byte `PRI * HTTP/2.0...` and the
/// SETTINGS frame that must follow it, RFC 9113 section 3.4) or an HTTP/1.1 request head
/// (up to its blank line). hyper's own timers start only after that: its HTTP/1 header
/// timeout after the protocol is sniffed (so a client sending nothing, or only `P`, was
/// held for ever), its HTTP/2 keepalive after the preface. A TLS client (first byte 0x16)
/// is released at once: its bytes are ciphertext, and the TLS server times its handshake.
pub struct Connection {
    stream: TcpStream,
    first_request: Option<FirstRequest>,
    _open: OpenGuard,
}

impl Connection {
    fn new(stream: TcpStream, header_timeout: Duration, open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        let first_request = FirstRequest {
            deadline: Box::pin(tokio::time::sleep(header_timeout)),
            seen: Preface::default(),
        };
        Connection { stream, first_request: Some(first_request), _open: OpenGuard(open) }
    }
}

struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct FirstRequest {
    deadline: Pin<Box<Sleep>>,
    seen: Preface,
}

const HTTP2_MAGIC: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection has sent of its first request so far, byte by byte.
#[derive(Default, Debug)]
struct Preface {
    /// Bytes seen.
    read: usize,
    /// Not the HTTP/2 magic: read as HTTP/1.1 (or garbage, which hyper refuses).
    http1: bool,
    /// Length of the run of `\r\n\r\n` just seen.
    blank: usize,
    head_ended: bool,
    /// The SETTINGS frame header after the magic, as it arrives.
    frame_header: [u8; 9],
    tls: bool,
}

impl Preface {
    fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if self.read == 0 && byte == 0x16 {
                self.tls = true;
            }
            if !self.http1 && self.read < HTTP2_MAGIC.len() && byte != HTTP2_MAGIC[self.read] {
                self.http1 = true;
            }
            if (24..33).contains(&self.read) {
                self.frame_header[self.read - 24] = byte;
            }
            self.blank = match (self.blank, byte) {
                (0 | 2, b'\r') => self.blank + 1,
                (1 | 3, b'\n') => self.blank + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if self.blank == 4 {
                self.head_ended = true;
            }
            self.read += 1;
        }
    }

    fn complete(&self) -> bool {
        if self.tls {
            return true;
        }
        if self.http1 {
            return self.head_ended;
        }
        if self.read < 33 {
            return false;
        }
        let [a, b, c, ..] = self.frame_header;
        let length = u32::from_be_bytes([0, a, b, c]) as usize;
        self.read >= 33 + length
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let (before, room) = (buf.filled().len(), buf.remaining());
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Some(first) = &mut this.first_request {
            match &read {
                Poll::Ready(Ok(())) => {
                    let fresh = &buf.filled()[before..];
                    first.seen.feed(fresh);
                    let end_of_stream = fresh.is_empty() && room > 0;
                    if end_of_stream || first.seen.complete() {
                        this.first_request = None;
                    }
                }
                Poll::Pending if first.deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no complete request within the header timeout",
                    )));
                }
                _ => {}
            }
        }
        read
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// So a handler's `request.remote_addr()` still names the client.
impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::greeter::HelloGreeter;
    use crate::proto::greeter::GreetingsRequest;
    use crate::proto::greeter::greeter_client::GreeterClient;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SHORT: Limits = Limits {
        header_timeout: Duration::from_millis(300),
        drain_deadline: Duration::from_millis(300),
    };

    /// An empty SETTINGS frame: what an HTTP/2 client sends right after the magic.
    const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

    async fn greeter_within(limits: Limits) -> RunningServer {
        let routes = Routes::new(HelloGreeter::new("n1").into_service());
        let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        RunningServer::start_on(loopback, limits, move |incoming, stop| {
            builder().add_routes(routes).serve_with_incoming_shutdown(incoming, stop)
        })
        .await
        .unwrap()
    }

    /// Reads until the server closes the connection, and returns what it sent; fails
    /// past `limit`.
    async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
        let mut seen = Vec::new();
        tokio::time::timeout(limit, stream.read_to_end(&mut seen))
            .await
            .expect("the server kept the connection open")
            .ok();
        seen
    }

    #[tokio::test]
    async fn a_stop_cuts_an_endless_stream_at_the_drain_deadline_and_counts_it() {
        let server =
            greeter_within(Limits::default()).await.with_drain_deadline(SHORT.drain_deadline);
        let mut client = GreeterClient::connect(server.url()).await.unwrap();
        let request = GreetingsRequest { name: "n".into(), count: 0, interval_ms: 20 };
        let mut endless = client.greetings(request).await.unwrap().into_inner();
        endless.message().await.unwrap().expect("the stream is open");
        let started = Instant::now();
        let cut = tokio::time::timeout(crate::PATIENCE, server.shutdown_counting_cuts())
            .await
            .expect("the stop waited for a stream that never ends")
            .unwrap();
        assert_eq!(cut, 1, "one connection was open at the deadline");
        assert!(started.elapsed() >= SHORT.drain_deadline, "the call in flight got its drain");
        let ended = tokio::time::timeout(crate::PATIENCE, async {
            while let Ok(Some(_)) = endless.message().await {}
        });
        ended.await.expect("the client saw its stream cut");
    }

    #[tokio::test]
    async fn a_stop_with_nothing_in_flight_cuts_nothing() {
        let server = greeter_within(SHORT).await;
        let mut client = GreeterClient::connect(server.url()).await.unwrap();
        client.say_hello(crate::proto::greeter::HelloRequest::default()).await.unwrap();
        let cut = tokio::time::timeout(crate::PATIENCE, server.shutdown_counting_cuts());
        assert_eq!(cut.await.unwrap().unwrap(), 0);
    }

    #[tokio::test]
    async fn connections_with_no_complete_preface_are_closed_after_the_header_timeout() {
        let server = greeter_within(SHORT).await;
        let magic = HTTP2_MAGIC.as_slice();
        for sent in [&b""[..], b"P", magic] {
            // Timed from before the connection exists, so never from after its deadline began.
            let started = Instant::now();
            let mut stream = TcpStream::connect(server.addr()).await.unwrap();
            stream.write_all(sent).await.unwrap();
            closed_within(&mut stream, Duration::from_secs(5)).await;
            let took = started.elapsed();
            assert!(took >= SHORT.header_timeout, "{sent:?} closed after {took:?}");
        }
        // HTTP/1.1 on a gRPC port: refused at once, half a head or a whole one.
        for sent in [&b"GET / HTTP/1.1\r\nHost: x\r\n"[..], b"GET / HTTP/1.1\r\n\r\n"] {
            let mut stream = TcpStream::connect(server.addr()).await.unwrap();
            stream.write_all(sent).await.unwrap();
            closed_within(&mut stream, Duration::from_secs(5)).await;
        }
        // The server lives on for a client that speaks.
        let mut client = GreeterClient::connect(server.url()).await.unwrap();
        client.say_hello(crate::proto::greeter::HelloRequest::default()).await.unwrap();
    }

    #[tokio::test]
    async fn the_server_allows_a_bounded_number_of_streams_per_connection() {
        let server = greeter_within(SHORT).await;
        let mut stream = TcpStream::connect(server.addr()).await.unwrap();
        stream.write_all(HTTP2_MAGIC).await.unwrap();
        stream.write_all(&SETTINGS).await.unwrap();
        // The server's first frame is its SETTINGS: (id u16, value u32) pairs.
        let mut header = [0; 9];
        stream.read_exact(&mut header).await.unwrap();
        assert_eq!(header[3], 4, "a SETTINGS frame first");
        let mut payload =
            vec![0; u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize];
        stream.read_exact(&mut payload).await.unwrap();
        let settings: Vec<(u16, u32)> = payload
            .chunks(6)
            .map(|s| {
                (u16::from_be_bytes([s[0], s[1]]), u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
            })
            .collect();
        const MAX_CONCURRENT_STREAMS: u16 = 3;
        assert!(
            settings.contains(&(MAX_CONCURRENT_STREAMS, MAX_STREAMS_PER_CONNECTION)),
            "{settings:?}"
        );
    }

    #[tokio::test]
    async fn a_client_that_never_answers_a_ping_is_closed() {
        let server = greeter_within(SHORT).await;
        let mut stream = TcpStream::connect(server.addr()).await.unwrap();
        stream.write_all(HTTP2_MAGIC).await.unwrap();
        stream.write_all(&SETTINGS).await.unwrap();
        // A complete preface: only keepalive can find that nobody is there.
        let started = Instant::now();
        closed_within(&mut stream, 2 * KEEPALIVE + crate::PATIENCE).await;
        assert!(started.elapsed() >= KEEPALIVE, "closed by the keepalive, not before");
    }

    #[test]
    fn a_first_request_is_complete_at_its_end_in_either_protocol() {
        let complete = |chunks: &[&[u8]]| {
            let mut preface = Preface::default();
            chunks
                .iter()
                .map(|chunk| {
                    preface.feed(chunk);
                    preface.complete()
                })
                .collect::<Vec<_>>()
        };
        let settings_with_one = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        assert_eq!(
            complete(&[HTTP2_MAGIC, &settings_with_one[..9], &settings_with_one[9..]]),
            [false, false, true]
        );
        assert_eq!(
            complete(&[&HTTP2_MAGIC[..20], &HTTP2_MAGIC[20..], &SETTINGS]),
            [false, false, true]
        );
        assert_eq!(
            complete(&[b"GET / HTTP/1.1\r\n", b"Host: x\r", b"\n\r\n"]),
            [false, false, true]
        );
        // The magic holds a blank line of its own: not an HTTP/1.1 head.
        assert_eq!(complete(&[&HTTP2_MAGIC[..18]]), [false]);
        assert_eq!(complete(&[&[0x16, 3, 1]]), [true], "TLS: the handshake has its own timeout");
        assert_eq!(complete(&[b"P", b"X"]), [false, false], "garbage is left to hyper's refusal");
    }
}
