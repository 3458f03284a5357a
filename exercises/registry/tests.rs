//! The library's unit tests: the heartbeat's edge cases and the memory registry on a
//! paused clock. The behaviours both registries share are in `conformance.rs`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::{Change, MemoryRegistry, Node, Registration, Registry, RegistryError};

// ---- Registration ----

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
    assert_eq!(format!("{error:#}"), "registry backend failed: a NATS request: refused by peer");
}

// ---- MemoryRegistry ----

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
    let ids: Vec<_> = registry.nodes("greeter").await.unwrap().into_iter().map(|n| n.id).collect();
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
    let ids: Vec<_> = registry.nodes("greeter").await.unwrap().into_iter().map(|n| n.id).collect();
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
