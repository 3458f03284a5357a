//! Service discovery: who serves what, and where.
//!
//! go-micro's heart is its registry: a service registers its nodes on start, clients list
//! a service's nodes before each call, and a node that stops sending heartbeats disappears
//! once its TTL runs out. This module holds the small [`Registry`] trait every example
//! uses, and [`InMemoryRegistry`], the in-process implementation a first run needs.
//!
//! A node is kept alive by registering it again before its TTL ends: that re-registration
//! *is* the heartbeat. [`Registration`] does it in the background and deregisters on a
//! graceful stop; a node whose process crashes simply expires.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;

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

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry's backend could not be reached or refused the request.
    #[error("registry backend failed: {0}")]
    Backend(String),
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

/// The in-process registry: a map behind a mutex, with a timer per registration.
#[derive(Clone, Default)]
pub struct InMemoryRegistry {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Keyed by (service, id).
    nodes: HashMap<(String, String), Entry>,
    watchers: Vec<(String, mpsc::UnboundedSender<Change>)>,
}

struct Entry {
    node: Node,
    /// Bumped by every registration, so an old expiry timer knows it was superseded.
    generation: u64,
}

impl State {
    fn notify(&mut self, service: &str, change: &Change) {
        // A watcher whose receiver is gone is dropped here, on the next change.
        self.watchers.retain(|(watched, tx)| watched != service || tx.send(change.clone()).is_ok());
    }
}

impl InMemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Removes the node when its TTL runs out, unless a later registration refreshed it.
    fn expire_after(&self, key: (String, String), generation: u64, deadline: Instant) {
        let state = Arc::downgrade(&self.state);
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            let Some(state) = state.upgrade() else { return };
            let mut state = state.lock().unwrap();
            if state.nodes.get(&key).is_some_and(|e| e.generation == generation) {
                state.nodes.remove(&key);
                tracing::info!(service = %key.0, id = %key.1, "node expired: no heartbeat within its TTL");
                let (service, id) = key;
                state.notify(&service.clone(), &Change::Left { service, id });
            }
        });
    }
}

#[async_trait]
impl Registry for InMemoryRegistry {
    async fn register(&self, node: &Node, ttl: Duration) -> Result<(), RegistryError> {
        let key = (node.service.clone(), node.id.clone());
        let generation = {
            let mut state = self.state.lock().unwrap();
            let (generation, is_new) = match state.nodes.get(&key) {
                Some(entry) => (entry.generation + 1, entry.node != *node),
                None => (0, true),
            };
            let entry = Entry { node: node.clone(), generation };
            state.nodes.insert(key.clone(), entry);
            if is_new {
                state.notify(&node.service, &Change::Joined(node.clone()));
            }
            generation
        };
        self.expire_after(key, generation, Instant::now() + ttl);
        Ok(())
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<(), RegistryError> {
        let mut state = self.state.lock().unwrap();
        if state.nodes.remove(&(service.to_owned(), id.to_owned())).is_some() {
            let change = Change::Left { service: service.to_owned(), id: id.to_owned() };
            state.notify(service, &change);
        }
        Ok(())
    }

    async fn nodes(&self, service: &str) -> Result<Vec<Node>, RegistryError> {
        let state = self.state.lock().unwrap();
        let mut nodes: Vec<Node> = state
            .nodes
            .values()
            .filter(|e| e.node.service == service)
            .map(|e| e.node.clone())
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    async fn watch(&self, service: &str) -> Result<BoxStream<'static, Change>, RegistryError> {
        let (tx, rx) = mpsc::unbounded_channel();
        // Under one lock: the current nodes, then the subscription, so nothing slips between.
        let mut state = self.state.lock().unwrap();
        let mut current: Vec<&Node> =
            state.nodes.values().map(|e| &e.node).filter(|n| n.service == service).collect();
        current.sort_by(|a, b| a.id.cmp(&b.id));
        for node in current {
            let _ = tx.send(Change::Joined(node.clone()));
        }
        state.watchers.push((service.to_owned(), tx));
        Ok(Box::pin(UnboundedReceiverStream::new(rx)))
    }
}

/// A node kept alive in a registry until [`Registration::deregister`] (or a crash).
///
/// It re-registers the node every third of its TTL, so two missed heartbeats in a row
/// are survived and a third lets the node expire.
pub struct Registration {
    registry: Arc<dyn Registry>,
    node: Node,
    heartbeat: CancellationToken,
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
        tokio::spawn(async move {
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
        Ok(Registration { registry, node, heartbeat })
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// A graceful stop: no more heartbeats, and the node leaves the registry at once.
    pub async fn deregister(self) -> Result<(), RegistryError> {
        self.heartbeat.cancel();
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
    use futures::StreamExt;

    const TTL: Duration = Duration::from_secs(3);

    fn node(id: &str) -> Node {
        Node::new("greeter", id, format!("127.0.0.1:{}", 9000 + id.len()))
    }

    #[tokio::test(start_paused = true)]
    async fn lists_registered_nodes_sorted_and_per_service() {
        let registry = InMemoryRegistry::new();
        registry.register(&node("b"), TTL).await.unwrap();
        registry.register(&node("a"), TTL).await.unwrap();
        registry.register(&Node::new("other", "x", "127.0.0.1:1"), TTL).await.unwrap();
        let ids: Vec<_> =
            registry.nodes("greeter").await.unwrap().into_iter().map(|n| n.id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(registry.nodes("missing").await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn deregister_removes_at_once() {
        let registry = InMemoryRegistry::new();
        registry.register(&node("a"), TTL).await.unwrap();
        registry.deregister("greeter", "a").await.unwrap();
        assert!(registry.nodes("greeter").await.unwrap().is_empty());
        registry.deregister("greeter", "a").await.unwrap(); // unknown: not an error
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_expires_without_heartbeat_and_lives_on_with_one() {
        let registry = InMemoryRegistry::new();
        registry.register(&node("silent"), TTL).await.unwrap();
        registry.register(&node("beating"), TTL).await.unwrap();
        for _ in 0..4 {
            tokio::time::sleep(TTL / 2).await;
            registry.register(&node("beating"), TTL).await.unwrap();
        }
        let ids: Vec<_> =
            registry.nodes("greeter").await.unwrap().into_iter().map(|n| n.id).collect();
        assert_eq!(ids, ["beating"]);
    }

    #[tokio::test(start_paused = true)]
    async fn watch_starts_with_current_nodes_then_reports_changes() {
        let registry = InMemoryRegistry::new();
        registry.register(&node("a"), TTL).await.unwrap();
        let mut changes = registry.watch("greeter").await.unwrap();
        assert_eq!(changes.next().await, Some(Change::Joined(node("a"))));

        registry.register(&node("a"), TTL).await.unwrap(); // a heartbeat: no change
        registry.register(&node("b"), TTL).await.unwrap();
        registry.register(&Node::new("other", "x", "127.0.0.1:1"), TTL).await.unwrap();
        registry.deregister("greeter", "a").await.unwrap();
        assert_eq!(changes.next().await, Some(Change::Joined(node("b"))));
        let left_a = Change::Left { service: "greeter".into(), id: "a".into() };
        assert_eq!(changes.next().await, Some(left_a));

        tokio::time::sleep(TTL * 2).await; // b's TTL runs out
        let left_b = Change::Left { service: "greeter".into(), id: "b".into() };
        assert_eq!(changes.next().await, Some(left_b));
    }

    #[tokio::test(start_paused = true)]
    async fn registration_heartbeats_until_deregistered() {
        let registry = Arc::new(InMemoryRegistry::new());
        let registration = Registration::start(registry.clone(), node("a"), TTL).await.unwrap();
        tokio::time::sleep(TTL * 5).await;
        assert_eq!(registry.nodes("greeter").await.unwrap().len(), 1, "heartbeat keeps it");
        registration.deregister().await.unwrap();
        assert!(registry.nodes("greeter").await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_registration_expires_like_a_crash() {
        let registry = Arc::new(InMemoryRegistry::new());
        drop(Registration::start(registry.clone(), node("a"), TTL).await.unwrap());
        assert_eq!(registry.nodes("greeter").await.unwrap().len(), 1, "still within TTL");
        tokio::time::sleep(TTL + Duration::from_millis(1)).await;
        assert!(registry.nodes("greeter").await.unwrap().is_empty());
    }
}
