//! The two nodes: node-b serves channels to every node that links up; node-a dials node-b
//! when it needs a link, and its gRPC clients open sessions on it instead of sockets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use microkit::PATIENCE;
use microkit::greeter::HelloGreeter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint, Server};

use tunnel::link::{Side, Tunnel};

/// How long node-b's accept loop pauses after a failed accept.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// node-a: dials node-b when it needs a link, and again when the link was lost.
pub struct NodeA {
    pub name: String,
    pub peer: SocketAddr,
    pub link: tokio::sync::Mutex<Option<Tunnel>>,
    pub dialed: AtomicUsize,
}

impl NodeA {
    pub fn new(name: &str, peer: SocketAddr) -> Self {
        NodeA { name: name.to_owned(), peer, link: Default::default(), dialed: AtomicUsize::new(0) }
    }

    /// A gRPC channel whose connections are tunnel sessions to `service`: the connector
    /// tonic calls to connect (and to reconnect) opens a session instead of a socket.
    pub fn channel(self: &Arc<Self>, service: &'static str) -> anyhow::Result<Channel> {
        let node_a = Arc::clone(self);
        let connector = tower::service_fn(move |_uri| {
            let node_a = Arc::clone(&node_a);
            async move {
                let session = node_a.link().await?.open(service).await?;
                Ok::<_, std::io::Error>(TokioIo::new(session))
            }
        });
        // The URI is only a label here: the connector decides where bytes go.
        let endpoint = Endpoint::from_shared(format!("http://{service}.tunnel"))?;
        Ok(endpoint.connect_timeout(PATIENCE).connect_with_connector_lazy(connector))
    }

    /// The live link, dialing a new one if there is none or the last one is down.
    pub async fn link(&self) -> std::io::Result<Tunnel> {
        let mut link = self.link.lock().await;
        if let Some(tunnel) = link.as_ref().filter(|t| t.is_up()) {
            return Ok(tunnel.clone());
        }
        let stream = tokio::time::timeout(PATIENCE, TcpStream::connect(self.peer)).await??;
        stream.set_nodelay(true)?;
        let tunnel = Tunnel::start(&self.name, stream, Side::Dialer, HashMap::new());
        self.dialed.fetch_add(1, Ordering::Relaxed);
        *link = Some(tunnel.clone());
        Ok(tunnel)
    }

    pub fn links_dialed(&self) -> usize {
        self.dialed.load(Ordering::Relaxed)
    }
}

/// node-b: accepts links, and serves the Greeter to sessions opened on channel "greeter".
pub struct NodeB {
    pub addr: SocketAddr,
    pub links: Arc<Mutex<Vec<Tunnel>>>,
    /// Links accepted and sessions handed to the Greeter, over node-b's life.
    pub linked: Arc<AtomicUsize>,
    pub served: Arc<AtomicUsize>,
    /// Asks the gRPC server to finish the calls in flight and stop.
    pub drain: CancellationToken,
    pub server: AbortOnDropHandle<()>,
    pub accept: AbortOnDropHandle<()>,
}

/// What a node-b that was asked to stop had done.
#[derive(Debug, PartialEq, Eq)]
pub struct NodeBTally {
    pub links: usize,
    pub sessions: usize,
    /// Every call in flight finished before the deadline.
    pub drained: bool,
}

impl NodeB {
    pub async fn start(name: &str, listen: SocketAddr) -> anyhow::Result<NodeB> {
        let listener =
            TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;

        // One gRPC server for every session on every link: sessions are its connections.
        let (arrivals, sessions) = mpsc::channel(16);
        let served = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&served);
        let incoming = ReceiverStream::new(sessions).map(move |session| {
            counted.fetch_add(1, Ordering::Relaxed);
            Ok::<_, std::io::Error>(session)
        });
        let greeter = HelloGreeter::new(name).into_service();
        let drain = CancellationToken::new();
        let stopped = drain.clone().cancelled_owned();
        let server = tokio::spawn(async move {
            // Health and reflection answer through the tunnel too.
            let health = microkit::health::Health::new(&[microkit::greeter::GREETER]);
            let server = Server::builder().add_routes(health.mount(Routes::new(greeter)));
            if let Err(error) = server.serve_with_incoming_shutdown(incoming, stopped).await {
                tracing::error!(%error, "the greeter server stopped");
            }
        });

        let links = Arc::new(Mutex::new(Vec::new()));
        let linked = Arc::new(AtomicUsize::new(0));
        let (name, accepted, count) = (name.to_owned(), Arc::clone(&links), Arc::clone(&linked));
        // A link is no HTTP, so this loop is node-b's own rather than the HTTP servers'
        // listener: `FrameDeadline` bounds a stranger's silence instead of a header timeout.
        let accept = tokio::spawn(async move {
            let mut failing = false;
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    // At the file limit accept fails at once for as long as links wait in
                    // the backlog: pause, or the loop spins a core. The listener is fine,
                    // and takes links again once files are free. One line per spell.
                    Err(error) => {
                        if !std::mem::replace(&mut failing, true) {
                            tracing::warn!("accept failed: {error}; pausing until files are free");
                        }
                        tokio::time::sleep(ACCEPT_PAUSE).await;
                        continue;
                    }
                };
                if std::mem::take(&mut failing) {
                    tracing::info!("accepting links again");
                }
                // A small frame goes out at once, not after the peer's delayed ACK.
                let _ = stream.set_nodelay(true);
                let peer = stream.peer_addr().map(|peer| peer.to_string()).unwrap_or_default();
                tracing::info!(%peer, "a node linked up");
                let services = HashMap::from([("greeter".to_owned(), arrivals.clone())]);
                let tunnel = Tunnel::start(&name, stream, Side::Listener, services);
                count.fetch_add(1, Ordering::Relaxed);
                let mut links = accepted.lock().unwrap();
                links.retain(Tunnel::is_up); // forget links that have ended
                links.push(tunnel);
            }
        });
        Ok(NodeB {
            addr,
            links,
            linked,
            served,
            drain,
            server: AbortOnDropHandle::new(server),
            accept: AbortOnDropHandle::new(accept),
        })
    }

    /// The graceful stop: take no new links, let the calls in flight finish (for at most
    /// `PATIENCE`), then close every link that is left.
    pub async fn stop(mut self) -> NodeBTally {
        self.accept.abort();
        self.drain.cancel();
        let drained = tokio::time::timeout(PATIENCE, &mut self.server).await.is_ok();
        let links: Vec<Tunnel> = self.links.lock().unwrap().drain(..).collect();
        for link in &links {
            link.cut();
            // A cut link lets go of its sessions: wait until none is held any more.
            let mut live = link.sessions_live();
            let _ = tokio::time::timeout(PATIENCE, live.wait_for(|n| *n == 0)).await;
        }
        NodeBTally {
            links: self.linked.load(Ordering::Relaxed),
            sessions: self.served.load(Ordering::Relaxed),
            drained,
        }
    }
}
