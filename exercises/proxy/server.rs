//! The proxy's own accept loop: hyper's HTTP/2 server on a listener, with the bounds a server
//! facing unknown clients needs (the shared servers keep the same ones): a rest after a failed
//! accept, a first request within the header timeout, HTTP/2 keepalive, a stream limit per
//! connection, and a stop that drains for a deadline and then cuts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Proxy;

/// The proxy serving on a loopback port: HTTP/2 only, as gRPC is.
pub struct ProxyServer {
    addr: SocketAddr,
    proxy: Arc<Proxy>,
    stop: CancellationToken,
    /// Cancelled when the drain deadline has passed: every connection still open is cut.
    cut: CancellationToken,
    connections: TaskTracker,
    accepting: tokio::task::JoinHandle<()>,
}

/// How long the accept loop rests after a failed accept. At the file limit, accept fails at
/// once for as long as connections wait in the backlog; without a rest the loop spins a core
/// and floods the log with the same line.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

impl ProxyServer {
    /// Listens on `addr` (port 0: any free port) and serves `proxy` on every connection.
    pub async fn start(proxy: Arc<Proxy>, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, cut) = (CancellationToken::new(), CancellationToken::new());
        let connections = TaskTracker::new();
        let limits = proxy.limits;
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_streams_per_connection)
            .keep_alive_interval(limits.header_timeout)
            .keep_alive_timeout(limits.header_timeout);
        let accepting = tokio::spawn({
            let (proxy, stop, cut, connections) =
                (proxy.clone(), stop.clone(), cut.clone(), connections.clone());
            async move {
                loop {
                    let stream = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => stream,
                            Err(e) => {
                                tracing::warn!("accept: {e}; resting {ACCEPT_BACKOFF:?}");
                                tokio::select! {
                                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                                    () = stop.cancelled() => break,
                                }
                            }
                        },
                        () = stop.cancelled() => break,
                    };
                    let _ = stream.set_nodelay(true);
                    let first_request = Arc::new(Notify::new());
                    let service = service_fn({
                        let (proxy, first_request) = (proxy.clone(), first_request.clone());
                        move |request| {
                            first_request.notify_one();
                            let proxy = proxy.clone();
                            async move { Ok::<_, Infallible>(proxy.handle(request).await) }
                        }
                    });
                    let connection = http2.serve_connection(TokioIo::new(stream), service);
                    let (stop, cut) = (stop.clone(), cut.clone());
                    connections.spawn(async move {
                        tokio::pin!(connection);
                        // A connection that sends no request in time (no preface, half of one,
                        // or a preface and then silence) is dropped, and with it the socket.
                        tokio::select! {
                            _ = connection.as_mut() => return,
                            () = first_request.notified() => {}
                            () = tokio::time::sleep(limits.header_timeout) => {
                                tracing::info!("cut a connection that sent no request in time");
                                return;
                            }
                            () = stop.cancelled() => {}
                        }
                        tokio::select! {
                            _ = connection.as_mut() => return,
                            () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
                        }
                        tokio::select! {
                            _ = connection.as_mut() => {}
                            () = cut.cancelled() => {}
                        }
                    });
                }
            }
        });
        Ok(ProxyServer { addr, proxy, stop, cut, connections, accepting })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Reports NOT_SERVING, stops accepting and lets the calls in flight finish, for at most
    /// `drain`; then cuts what is left. True when every call finished in time.
    pub async fn stop(self, drain: Duration) -> bool {
        self.proxy.health.set_serving(false).await;
        self.proxy.health.close(); // open Watch streams end, instead of holding the drain
        self.stop.cancel();
        let _ = self.accepting.await;
        self.connections.close();
        let drained = tokio::time::timeout(drain, self.connections.wait()).await.is_ok();
        if !drained {
            self.cut.cancel();
            self.connections.wait().await;
        }
        drained
    }
}
