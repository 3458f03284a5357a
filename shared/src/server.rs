//! A gRPC server on a free loopback port, for demos and tests.
//!
//! [`RunningServer`] binds `127.0.0.1:0` (the OS picks the port, so runs never collide),
//! hands back the address, and can be stopped two ways:
//! - [`RunningServer::shutdown`]: graceful, the server stops accepting and lets calls in
//!   flight finish;
//! - [`RunningServer::crash`]: every connection dies at once, as when a process is killed.
//!
//! Every server started with [`RunningServer::start`] also serves health checking and
//! reflection ([`crate::health`]); one built by hand with [`RunningServer::start_with`] adds
//! them itself and hands its [`Health`] over with [`RunningServer::with_health`].
//!
//! To make a crash real, the server runs on its own small tokio runtime in its own thread;
//! dropping that runtime drops every connection task with it.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::health::Health;

/// A server running in the background until shut down, crashed or dropped (a drop crashes).
pub struct RunningServer {
    addr: SocketAddr,
    stop: CancellationToken,
    crash: Option<oneshot::Sender<()>>,
    finished: Option<oneshot::Receiver<anyhow::Result<()>>>,
    health: Option<Health>,
}

impl RunningServer {
    /// Serves `routes`, with health (SERVING for the whole server) and reflection, with a
    /// plain `Server::builder()`.
    pub async fn start(routes: Routes) -> std::io::Result<Self> {
        Self::start_with_health(routes, Health::new(&[])).await
    }

    /// Serves `routes` with `health` (which may name the services it reports on) and
    /// reflection.
    pub async fn start_with_health(routes: Routes, health: Health) -> std::io::Result<Self> {
        let routes = health.mount(routes);
        let server = Self::start_with(move |incoming, stop| {
            Server::builder().add_routes(routes).serve_with_incoming_shutdown(incoming, stop)
        })
        .await?;
        Ok(server.with_health(health))
    }

    /// Serves whatever `serve` builds from the listener and the stop signal, so callers can
    /// add layers, TLS or several services: `serve` is usually
    /// `|incoming, stop| Server::builder()...serve_with_incoming_shutdown(incoming, stop)`.
    pub async fn start_with<F, Fut>(serve: F) -> std::io::Result<Self>
    where
        F: FnOnce(TcpIncoming, WaitForCancellationFutureOwned) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), tonic::transport::Error>>,
    {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), serve).await
    }

    /// [`RunningServer::start_with`] on a free port of `ip` instead of loopback: for a node
    /// that other hosts must reach (the partition tests run nodes on separate hosts).
    pub async fn start_on<F, Fut>(ip: IpAddr, serve: F) -> std::io::Result<Self>
    where
        F: FnOnce(TcpIncoming, WaitForCancellationFutureOwned) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), tonic::transport::Error>>,
    {
        let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0))?;
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
        std::thread::spawn(move || {
            let result = runtime.block_on(async move {
                // TCP_NODELAY on every accepted connection, as tonic's own `serve` sets it:
                // without it the kernel holds a small write (a TLS handshake message) until
                // the last one is acknowledged, and a handshake stalls for a delayed ACK
                // (measured: 44 ms per new TLS connection instead of under 1 ms).
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                tokio::select! {
                    served = serve(incoming, stop_signal) => Ok(served?),
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
        })
    }

    /// Names the [`Health`] this server's health service reports, so a graceful stop can
    /// report NOT_SERVING first and end open `Watch` streams when it drains.
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = Some(health);
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

    /// Stops accepting, waits for calls in flight to finish, then returns.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(health) = &self.health {
            health.close();
        }
        self.stop.cancel();
        self.wait().await
    }

    /// Drops every connection at once, mid-call: what clients see when a server dies.
    pub async fn crash(mut self) {
        if let Some(crash) = self.crash.take() {
            let _ = crash.send(());
        }
        let _ = self.wait().await;
    }

    async fn wait(&mut self) -> anyhow::Result<()> {
        match self.finished.take() {
            Some(finished) => finished.await.unwrap_or(Ok(())),
            None => Ok(()),
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
