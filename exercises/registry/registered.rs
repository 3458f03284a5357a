//! A server that is listed in the registry for exactly as long as it serves.
//!
//! Every example that runs a discoverable node does the same three things: serve on a free
//! port, register the node with a TTL and keep it alive with heartbeats, and on a graceful
//! stop report NOT_SERVING (so clients watching its health stop sending at once), leave the
//! registry (so no new client is sent to it), and only then drain. [`Registered`] does
//! those in that order, for a gRPC server or an axum one alike (both are a [`RunningServer`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::{Node, Registration, Registry, RegistryError};
use microkit::server::RunningServer;

/// A serving node and its registration, stopped together in the right order.
pub struct Registered {
    server: RunningServer,
    registration: Registration,
}

impl Registered {
    /// Registers `server` as node `id` of `service` at its address, with heartbeats.
    pub async fn new(
        registry: &Arc<dyn Registry>,
        server: RunningServer,
        service: &str,
        id: &str,
        ttl: Duration,
    ) -> Result<Self, RegistryError> {
        let node = Node::new(service, id, server.addr());
        Self::with_node(registry, server, node, ttl).await
    }

    /// Registers `server` as `node` (for a node with metadata; its address is the caller's).
    pub async fn with_node(
        registry: &Arc<dyn Registry>,
        server: RunningServer,
        node: Node,
        ttl: Duration,
    ) -> Result<Self, RegistryError> {
        let registration = Registration::start(registry.clone(), node, ttl).await?;
        Ok(Registered { server, registration })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    pub fn node(&self) -> &Node {
        self.registration.node()
    }

    pub fn server(&self) -> &RunningServer {
        &self.server
    }

    /// The graceful stop: report NOT_SERVING (clients watching health stop sending),
    /// deregister (no client chooses this node any more), then drain.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.not_serving().await;
        self.deregister_and_drain().await
    }

    /// The first phase of a stop alone, for a role that prints each phase.
    pub async fn not_serving(&self) {
        if let Some(health) = self.server.health() {
            health.set_serving(false).await;
        }
    }

    /// The rest of a stop, after [`Registered::not_serving`].
    pub async fn deregister_and_drain(self) -> anyhow::Result<()> {
        let Registered { server, registration } = self;
        registration.deregister().await?;
        server.shutdown().await
    }

    /// A crash: every connection dies and the heartbeat stops, but the node stays listed
    /// until its TTL runs out, exactly as when the process is killed.
    pub async fn crash(self) {
        let Registered { server, registration } = self;
        drop(registration);
        server.crash().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryRegistry;

    #[tokio::test]
    async fn stop_leaves_the_registry_before_the_server_stops() {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let server = microkit::greeter::serve("a").await.unwrap();
        let addr = server.addr();
        let node = Registered::new(&registry, server, "greeter", "a", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(node.node().address, addr.to_string());
        assert_eq!(registry.nodes("greeter").await.unwrap().len(), 1);
        node.stop().await.unwrap();
        assert!(registry.nodes("greeter").await.unwrap().is_empty());
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed");
    }

    #[tokio::test]
    async fn the_first_phase_reports_not_serving_while_still_listed() {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let server = microkit::greeter::serve("a").await.unwrap();
        let node = Registered::new(&registry, server, "greeter", "a", Duration::from_secs(5))
            .await
            .unwrap();
        assert!(*node.server().health().unwrap().subscribe().borrow());
        node.not_serving().await;
        assert!(!*node.server().health().unwrap().subscribe().borrow());
        assert_eq!(registry.nodes("greeter").await.unwrap().len(), 1, "still listed");
        node.deregister_and_drain().await.unwrap();
        assert!(registry.nodes("greeter").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_crashed_node_stays_listed_until_its_ttl() {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let server = microkit::greeter::serve("a").await.unwrap();
        // Real time: the server runs on a runtime of its own, which a paused clock would
        // not wait for.
        let ttl = Duration::from_millis(500);
        Registered::new(&registry, server, "greeter", "a", ttl).await.unwrap().crash().await;
        assert_eq!(registry.nodes("greeter").await.unwrap().len(), 1, "listed within its TTL");
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        assert!(registry.nodes("greeter").await.unwrap().is_empty());
    }
}
