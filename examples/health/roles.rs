//! The roles, for several terminals over a shared NATS: a node, and a watcher of its health.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use health::LiveNodes;
use microkit::PATIENCE;
use microkit::greeter::GREETER;
use registry::Registry;
use tonic::transport::Channel;

use crate::readiness::{GreeterNode, SERVICE};

/// The `node` role: serve until a stop request, then stop in the shutdown lesson's steps 0 to 3.
pub async fn node(registry: &Arc<dyn Registry>, id: &str, ttl: Duration) -> anyhow::Result<()> {
    let GreeterNode { grpc, probes } = GreeterNode::start(registry, id, ttl).await?;
    let stop = microkit::signal::stop_requested();
    println!("{id} serving {GREETER} on {}; probes on {}", grpc.addr(), probes.url());
    microkit::signal::stopping(stop.await, "NOT_SERVING, deregistering, then draining")?;
    grpc.stop().await?;
    probes.shutdown().await?;
    println!("{id} stopped: NOT_SERVING, deregistered, drained");
    Ok(())
}

/// The `watch` role: find the node in the registry, then print its health as it changes.
pub async fn watch(registry: &Arc<dyn Registry>, id: &str) -> anyhow::Result<()> {
    let nodes = LiveNodes::watch(registry, SERVICE).await?;
    let mut listed = nodes.subscribe();
    let found = tokio::time::timeout(PATIENCE, listed.wait_for(|l| l.iter().any(|n| n.id == id)))
        .await
        .with_context(|| format!("no node {id} of {SERVICE} in the registry"))??;
    let node = found.iter().find(|n| n.id == id).cloned().context("listed")?;
    drop(found);
    let channel = Channel::from_shared(format!("http://{}", node.address))?.connect_lazy();
    let mut statuses = Box::pin(microkit::health::watch(channel, "").await?);
    let stop = microkit::signal::stop_requested();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            status = statuses.next() => match status {
                Some(status) => println!("{id}: {}", status?.as_str_name()),
                None => { println!("{id}: the stream ended"); return Ok(()); }
            },
            signal = &mut stop => {
                microkit::signal::stopping(signal, "ending the watch")?;
                return Ok(());
            }
        }
    }
}
