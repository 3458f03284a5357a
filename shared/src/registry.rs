//! Service discovery: who serves what, and where.
//!
//! go-micro's heart is its registry: a service registers its nodes on start, clients list
//! a service's nodes before each call, and a node that stops sending heartbeats disappears
//! once its TTL runs out. This module holds the small [`Registry`] trait every example
//! uses, and [`MemoryRegistry`], the memory implementation a first run needs, and
//! [`NatsRegistry`], the same on a NATS JetStream key-value bucket.
//!
//! A node is kept alive by registering it again before its TTL ends: that re-registration
//! *is* the heartbeat. [`Registration`] does it in the background and deregisters on a
//! graceful stop; a node whose process crashes simply expires.

mod memory;
mod nats;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use memory::MemoryRegistry;
pub use nats::{DEFAULT_BUCKET, MAX_TTL, NatsRegistry};

/// One running instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The service's name, the key clients look it up by (e.g. `greeter`).
    pub service: String,
    /// Unique within the service (e.g. `greeter-1`).
    pub id: String,
    /// Where to reach it, `host:port`.
    pub address: String,
    /// Free-form labels (version, zone, protocol...).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Node {
    pub fn new(service: &str, id: &str, address: impl ToString) -> Self {
        Node {
            service: service.to_owned(),
            id: id.to_owned(),
            address: address.to_string(),
            metadata: BTreeMap::new(),
        }
    }
}

/// What a watcher is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A node appeared (or changed its address).
    Joined(Node),
    /// A node deregistered, or its TTL ran out.
    Left { service: String, id: String },
}

/// A cause of any type, kept so that `{:#}` prints the whole chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry's backend could not be reached or refused the request.
    #[error("registry backend failed: {what}")]
    Backend {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl RegistryError {
    /// The backend failed at `what`, because of `source`.
    pub fn backend(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        RegistryError::Backend { what: what.into(), source: Some(source.into()) }
    }

    /// A request the registry refuses by its own rule (no underlying error).
    pub fn refused(what: impl Into<String>) -> Self {
        RegistryError::Backend { what: what.into(), source: None }
    }
}

/// Register, deregister, list and watch the nodes of a service.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Adds `node`, or refreshes it: the node stays listed for `ttl` after the last call.
    async fn register(&self, node: &Node, ttl: Duration) -> Result<(), RegistryError>;

    /// Removes a node at once (a graceful stop). Removing an unknown node is not an error.
    async fn deregister(&self, service: &str, id: &str) -> Result<(), RegistryError>;

    /// The live nodes of `service`, sorted by id so every client sees the same order.
    async fn nodes(&self, service: &str) -> Result<Vec<Node>, RegistryError>;

    /// The nodes of `service` now (as `Joined`), then every change after that. Starting
    /// with the current set means a watcher never misses a node that joined just before.
    async fn watch(&self, service: &str) -> Result<BoxStream<'static, Change>, RegistryError>;
}

/// A node kept alive in a registry until [`Registration::deregister`] (or a crash).
///
/// It re-registers the node every third of its TTL. One missed heartbeat is survived with a
/// third of the TTL to spare; after two, the third beat is due just as the lease runs out,
/// so whether the node stays listed is a race that a slow write loses.
pub struct Registration {
    registry: Arc<dyn Registry>,
    node: Node,
    heartbeat: CancellationToken,
    /// The heartbeat task, awaited by `deregister` so no beat in flight can list the node
    /// again after it left.
    beating: Option<tokio::task::JoinHandle<()>>,
}

impl Registration {
    /// Registers `node` and starts its heartbeat.
    pub async fn start(
        registry: Arc<dyn Registry>,
        node: Node,
        ttl: Duration,
    ) -> Result<Self, RegistryError> {
        registry.register(&node, ttl).await?;
        let heartbeat = CancellationToken::new();
        let (reg, beat_node, stop) = (registry.clone(), node.clone(), heartbeat.clone());
        let beating = tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            tick.tick().await; // the first tick is immediate; we just registered
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        if let Err(e) = reg.register(&beat_node, ttl).await {
                            tracing::warn!(id = %beat_node.id, "heartbeat failed: {e}");
                        }
                    }
                }
            }
        });
        Ok(Registration { registry, node, heartbeat, beating: Some(beating) })
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// A graceful stop: no more heartbeats, and the node leaves the registry at once.
    pub async fn deregister(mut self) -> Result<(), RegistryError> {
        self.heartbeat.cancel();
        // A beat already on its way would register the node again right after it left:
        // wait until the heartbeat task has ended (a cancelled one ends at its next await).
        if let Some(mut beating) = self.beating.take()
            && tokio::time::timeout(crate::PATIENCE, &mut beating).await.is_err()
        {
            beating.abort();
        }
        self.registry.deregister(&self.node.service, &self.node.id).await
    }
}

impl Drop for Registration {
    /// Dropped without `deregister`: the heartbeat stops and the node expires after its
    /// TTL, exactly as if the process had crashed.
    fn drop(&mut self) {
        self.heartbeat.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MemoryRegistry;

    /// A registry whose writes take a while, as a remote one's do.
    struct Slow(MemoryRegistry);

    #[async_trait]
    impl Registry for Slow {
        async fn register(&self, node: &Node, ttl: Duration) -> Result<(), RegistryError> {
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.0.register(node, ttl).await
        }
        async fn deregister(&self, service: &str, id: &str) -> Result<(), RegistryError> {
            self.0.deregister(service, id).await
        }
        async fn nodes(&self, service: &str) -> Result<Vec<Node>, RegistryError> {
            self.0.nodes(service).await
        }
        async fn watch(&self, service: &str) -> Result<BoxStream<'static, Change>, RegistryError> {
            self.0.watch(service).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_in_flight_does_not_list_a_node_again_after_it_left() {
        let memory = MemoryRegistry::new();
        let registry: Arc<dyn Registry> = Arc::new(Slow(memory.clone()));
        let node = Node::new("greeter", "a", "127.0.0.1:1");
        let ttl = Duration::from_secs(3);
        let registration = Registration::start(registry, node, ttl).await.unwrap();
        // The first beat starts at ttl/3 and takes 100 ms: deregister in the middle of it.
        tokio::time::sleep(ttl / 3 + Duration::from_millis(50)).await;
        registration.deregister().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await; // the beat, had it gone on
        assert!(memory.nodes("greeter").await.unwrap().is_empty(), "listed again after leaving");
    }

    #[test]
    fn an_error_keeps_its_cause_for_the_whole_chain() {
        let cause = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused by peer");
        let error = anyhow::Error::new(RegistryError::backend("a NATS request", cause));
        assert_eq!(
            format!("{error:#}"),
            "registry backend failed: a NATS request: refused by peer"
        );
    }
}
