//! The memory registry: every node of this process in a map behind a mutex, with a timer
//! per registration standing in for a TTL. Nothing to install; one process only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{Change, Node, Registry, RegistryError};

/// The registry of the memory backend.
#[derive(Clone, Default)]
pub struct MemoryRegistry {
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

impl MemoryRegistry {
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
impl Registry for MemoryRegistry {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registration;
    use futures::StreamExt;

    const TTL: Duration = Duration::from_secs(3);

    fn node(id: &str) -> Node {
        Node::new("greeter", id, format!("127.0.0.1:{}", 9000 + id.len()))
    }

    #[tokio::test(start_paused = true)]
    async fn lists_registered_nodes_sorted_and_per_service() {
        let registry = MemoryRegistry::new();
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
        let registry = MemoryRegistry::new();
        registry.register(&node("a"), TTL).await.unwrap();
        registry.deregister("greeter", "a").await.unwrap();
        assert!(registry.nodes("greeter").await.unwrap().is_empty());
        registry.deregister("greeter", "a").await.unwrap(); // unknown: not an error
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_expires_without_heartbeat_and_lives_on_with_one() {
        let registry = MemoryRegistry::new();
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
        let registry = MemoryRegistry::new();
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
        let registry = Arc::new(MemoryRegistry::new());
        let registration = Registration::start(registry.clone(), node("a"), TTL).await.unwrap();
        tokio::time::sleep(TTL * 5).await;
        assert_eq!(registry.nodes("greeter").await.unwrap().len(), 1, "heartbeat keeps it");
        registration.deregister().await.unwrap();
        assert!(registry.nodes("greeter").await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_registration_expires_like_a_crash() {
        let registry = Arc::new(MemoryRegistry::new());
        drop(Registration::start(registry.clone(), node("a"), TTL).await.unwrap());
        assert_eq!(registry.nodes("greeter").await.unwrap().len(), 1, "still within TTL");
        tokio::time::sleep(TTL + Duration::from_millis(1)).await;
        assert!(registry.nodes("greeter").await.unwrap().is_empty());
    }
}
