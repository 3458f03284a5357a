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

use crate::{Change, Node, Registry, RegistryError};

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
