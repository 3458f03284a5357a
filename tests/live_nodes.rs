//! `LiveNodes::watch_listed` against a registry whose list moves while it is read.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use health::LiveNodes;
use registry::{Change, MemoryRegistry, Node, Registry, RegistryError};
use tokio::sync::Notify;

const TTL: Duration = Duration::from_secs(60);

/// A memory registry in which `late` registers right after the first listing of its
/// service was taken: the listing misses it, the watch that was already running shows it.
struct JoinsWhileListed {
    inner: MemoryRegistry,
    late: Node,
    /// Told when a watch has handed `late` on, so the listing returns only after that.
    shown: Arc<Notify>,
}

#[async_trait]
impl Registry for JoinsWhileListed {
    async fn register(&self, node: &Node, ttl: Duration) -> Result<(), RegistryError> {
        self.inner.register(node, ttl).await
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<(), RegistryError> {
        self.inner.deregister(service, id).await
    }

    async fn nodes(&self, service: &str) -> Result<Vec<Node>, RegistryError> {
        let listed = self.inner.nodes(service).await?;
        self.inner.register(&self.late, TTL).await?;
        // On this single-threaded runtime the watch's follower records `late` in the same
        // turn in which its stream hands it on, so when this wakes the live list has it.
        self.shown.notified().await;
        Ok(listed)
    }

    async fn watch(&self, service: &str) -> Result<BoxStream<'static, Change>, RegistryError> {
        let (shown, late) = (self.shown.clone(), self.late.id.clone());
        let changes = self.inner.watch(service).await?;
        Ok(changes
            .inspect(move |change| {
                if matches!(change, Change::Joined(node) if node.id == late) {
                    shown.notify_one();
                }
            })
            .boxed())
    }
}

#[tokio::test]
async fn a_node_that_joins_while_the_registry_is_listed_does_not_stall_the_wait() {
    let memory = MemoryRegistry::new();
    memory.register(&Node::new("greeter", "greeter-1", "127.0.0.1:1"), TTL).await.unwrap();
    let late = Node::new("greeter", "greeter-2", "127.0.0.1:2");
    let registry: Arc<dyn Registry> =
        Arc::new(JoinsWhileListed { inner: memory, late, shown: Arc::default() });

    // The listing says greeter-1; the watch already shows greeter-1 and greeter-2. Every
    // node listed is there, and that is what the wait is for.
    let live = tokio::time::timeout(
        Duration::from_secs(30),
        LiveNodes::watch_listed(&registry, "greeter"),
    )
    .await
    .expect("watch_listed returns within its own bound")
    .expect("every listed node is shown");
    let ids: Vec<String> = live.current().into_iter().map(|n| n.id).collect();
    assert_eq!(ids, ["greeter-1", "greeter-2"]);
}
