//! Service discovery: who serves what, and where.
//!
//! A node registers under its service's name with a lease (a TTL) and keeps it with a
//! heartbeat; clients list or watch the nodes of a service. A graceful stop deregisters at
//! once; a crash stops the heartbeat, and the node leaves when its lease runs out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Register, deregister, list and watch the nodes of a service.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Adds `node`, or refreshes it: the node stays listed for `ttl` after the last call.
    async fn register(&self, node: &Node, ttl: Duration) -> Result<(), RegistryError>;

    /// Removes a node at once (a graceful stop). Removing an unknown node is not an error.
    async fn deregister(&self, service: &str, id: &str) -> Result<(), RegistryError>;

    /// The live nodes of `service`, sorted by id so every client sees the same order.
    async fn nodes(&self, service: &str) -> Result<Vec<Node>, RegistryError>;

    /// The nodes of `service` now (as `Joined`, sorted by id), then every change after that.
    /// Starting with the current set means a watcher never misses a node that joined just
    /// before.
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
                        // exercise begins: renew the lease at each tick: register the node again, for another TTL
                        if let Err(e) = reg.register(&beat_node, ttl).await {
                            tracing::warn!(id = %beat_node.id, "heartbeat failed: {e}");
                        }
                        // exercise ends
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
            && tokio::time::timeout(microkit::PATIENCE, &mut beating).await.is_err()
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
