//! The NATS registry on a three-node JetStream cluster: when the node a client is
//! connected to dies, the client reconnects to another, the bucket (three replicas) keeps
//! its quorum, and registration and discovery go on.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use microkit_testing::NatsCluster;
use registry::NatsRegistry;
use registry::{Change, Node, Registration, Registry};

/// Long enough that a leader election (a few seconds) does not expire a live node.
const TTL: Duration = Duration::from_secs(10);
/// Only turns a hang into a failure: a fresh cluster takes a while to elect its leaders.
const PATIENCE: Duration = Duration::from_secs(60);

/// Retries `attempt` until it succeeds, failing the test after [`PATIENCE`].
async fn eventually<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let retried = tokio::time::timeout(PATIENCE, async {
        loop {
            match attempt().await {
                Ok(value) => return value,
                Err(e) => {
                    tracing::debug!("{what}: {e}, retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    retried.await.unwrap_or_else(|_| panic!("{what}: still failing after {PATIENCE:?}"))
}

async fn ids(registry: &Arc<dyn Registry>) -> Result<Vec<String>, String> {
    let nodes = registry.nodes("greeter").await.map_err(|e| e.to_string())?;
    Ok(nodes.into_iter().map(|n| n.id).collect())
}

#[tokio::test]
async fn registration_and_discovery_go_on_when_a_nats_node_dies() {
    microkit::init_tracing();
    let mut cluster = NatsCluster::start(3).await.unwrap();
    let client = async_nats::connect(cluster.urls().as_slice()).await.unwrap();
    let registry: Arc<dyn Registry> = Arc::new(NatsRegistry::new(client.clone()).with_replicas(3));

    let a = Node::new("greeter", "a", "127.0.0.1:9001");
    let _a =
        eventually("registering a", || Registration::start(registry.clone(), a.clone(), TTL)).await;
    let mut changes = registry.watch("greeter").await.unwrap();
    let first = tokio::time::timeout(PATIENCE, changes.next()).await.unwrap();
    assert_eq!(first, Some(Change::Joined(a.clone())));

    // Kill the very node this client talks to.
    let connected_port = client.server_info().port;
    let victim = cluster
        .nodes
        .iter()
        .position(|n| n.url().ends_with(&format!(":{connected_port}")))
        .unwrap();
    cluster.nodes[victim].stop().await.unwrap();

    let b = Node::new("greeter", "b", "127.0.0.1:9002");
    let _b = eventually("registering b after the loss", || {
        Registration::start(registry.clone(), b.clone(), TTL)
    })
    .await;
    let both = eventually("listing both", || async {
        let ids = ids(&registry).await?;
        if ids == ["a", "b"] { Ok(ids) } else { Err(format!("listed {ids:?}")) }
    })
    .await;
    assert_eq!(both, ["a", "b"]);

    // The watch resubscribed through the new connection and heard of b.
    let joined = tokio::time::timeout(PATIENCE, changes.next()).await.unwrap();
    assert_eq!(joined, Some(Change::Joined(b.clone())));

    // A client that only knows a surviving node sees the same registry.
    let survivor = &cluster.nodes[(victim + 1) % cluster.nodes.len()];
    let other = async_nats::connect(survivor.url()).await.unwrap();
    let other: Arc<dyn Registry> = Arc::new(NatsRegistry::new(other));
    let seen = eventually("discovery from a survivor", || ids(&other)).await;
    assert_eq!(seen, ["a", "b"]);
}
