//! A client's live view of one service's nodes, kept up to date by a registry watch.
//!
//! go-micro's selector asked the registry for the nodes on every request (behind a
//! cache). Here a client watches the registry once and keeps the current list, so picking
//! a node is a lookup in memory; the choosing itself (round robin, hashing...) is each
//! example's lesson and lives in the example.
//!
//! [`Channels`] keeps one gRPC channel per node address, so a client reuses its HTTP/2
//! connections instead of dialling for every call.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::registry::{Change, Node, Registry, RegistryError};

/// The nodes of one service as the registry last told us, sorted by id.
pub struct LiveNodes {
    service: String,
    nodes: watch::Receiver<Vec<Node>>,
    follower: tokio::task::JoinHandle<()>,
}

impl LiveNodes {
    /// Starts watching `service` in `registry`.
    pub async fn watch(registry: &Arc<dyn Registry>, service: &str) -> Result<Self, RegistryError> {
        let mut changes = registry.watch(service).await?;
        let (tx, nodes) = watch::channel(Vec::new());
        let follower = tokio::spawn(async move {
            let mut known = BTreeMap::new();
            while let Some(change) = changes.next().await {
                match change {
                    Change::Joined(node) => known.insert(node.id.clone(), node),
                    Change::Left { id, .. } => known.remove(&id),
                };
                tx.send_replace(known.values().cloned().collect());
            }
        });
        Ok(LiveNodes { service: service.to_owned(), nodes, follower })
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// The nodes right now.
    pub fn current(&self) -> Vec<Node> {
        self.nodes.borrow().clone()
    }

    /// True (once) after the list changed since the last call.
    pub fn has_changed(&mut self) -> bool {
        let changed = self.nodes.has_changed().unwrap_or(false);
        self.nodes.mark_unchanged();
        changed
    }

    /// Waits until the node ids are exactly `ids` (in id order), or fails after `limit`.
    pub async fn wait_for_ids(&self, ids: &[&str], limit: Duration) -> anyhow::Result<()> {
        let mut nodes = self.nodes.clone();
        let wanted = |list: &Vec<Node>| list.iter().map(|n| n.id.as_str()).eq(ids.iter().copied());
        match tokio::time::timeout(limit, nodes.wait_for(wanted)).await {
            Ok(Ok(_)) => Ok(()),
            _ => anyhow::bail!(
                "the registry did not show nodes {ids:?} of {} within {limit:?} (it shows {:?})",
                self.service,
                self.current().iter().map(|n| n.id.clone()).collect::<Vec<_>>()
            ),
        }
    }
}

impl Drop for LiveNodes {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// One lazily connected channel per node address.
#[derive(Clone, Default)]
pub struct Channels {
    by_address: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Channels {
    /// The channel to `node`, created on first use. It connects on the first call and
    /// reconnects by itself; a call to a dead node fails fast with `Unavailable`.
    pub fn to(&self, node: &Node) -> Result<Channel, tonic::Status> {
        let mut channels = self.by_address.lock().unwrap();
        if let Some(channel) = channels.get(&node.address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", node.address))
            .map_err(|e| {
                tonic::Status::invalid_argument(format!("bad address {}: {e}", node.address))
            })?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5));
        let channel = endpoint.connect_lazy();
        channels.insert(node.address.clone(), channel.clone());
        Ok(channel)
    }
}
