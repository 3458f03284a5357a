//! The default run: three nodes; one leaves, one joins, one crashes; then none is left, and
//! a call fails fast or waits for ready.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use health::LiveNodes;
use microkit::PATIENCE;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::{GreetingsRequest, HelloReply};
use registry::Registry;
use round_robin::{SERVICE, start_node};
use tonic::{Status, Streaming};

use crate::rotation::{RoundRobin, WhenNoNode, never_started};

/// One process, the whole story: three nodes, one leaves, one joins, one crashes.
pub async fn demo(registry: &Arc<dyn Registry>, ttl: Duration) -> anyhow::Result<()> {
    let mut nodes = BTreeMap::new();
    for name in ["greeter-a", "greeter-b", "greeter-c"] {
        nodes.insert(name, start_node(registry, name, ttl).await?);
    }
    let mut client = RoundRobin::new(LiveNodes::watch_healthy(registry, SERVICE).await?);
    client.nodes.wait_for_ids(&["greeter-a", "greeter-b", "greeter-c"], PATIENCE).await?;
    println!("{}", show_nodes(&client));
    println!("{}", calls(&client, 6).await?);

    // A graceful stop: the node deregisters, so clients drop it at once.
    nodes.remove("greeter-b").unwrap().stop().await?;
    client.nodes.wait_for_ids(&["greeter-a", "greeter-c"], PATIENCE).await?;
    println!("greeter-b left: deregistered on a graceful stop");
    println!("{}", show_nodes(&client));
    println!("{}", calls(&client, 4).await?);

    nodes.insert("greeter-d", start_node(registry, "greeter-d", ttl).await?);
    client.nodes.wait_for_ids(&["greeter-a", "greeter-c", "greeter-d"], PATIENCE).await?;
    println!("greeter-d joined");
    println!("{}", show_nodes(&client));
    println!("{}", calls(&client, 6).await?);

    // A crash: no deregistration, the heartbeat just stops. A stream open on greeter-c
    // fails with it; it was running there, so it is not tried again elsewhere. Until the TTL
    // runs out the registry still lists the node, and a call that picks it must go elsewhere.
    let mut open = open_stream(&client, "greeter-c").await?;
    nodes.remove("greeter-c").unwrap().crash().await;
    println!("greeter-c crashed: still listed until its TTL runs out");
    match tokio::time::timeout(PATIENCE, open.message()).await? {
        Err(status) if !never_started(&status) => {
            println!("a stream open on greeter-c failed with it: it had started, so no retry");
        }
        other => bail!("the stream on greeter-c did not fail with it: {other:?}"),
    }
    for _ in 0..3 {
        println!("call{}", client.say_hello("ada").await?);
    }
    client.nodes.wait_for_ids(&["greeter-a", "greeter-d"], ttl + PATIENCE).await?;
    println!("greeter-c expired: no heartbeat within its TTL");
    println!("{}", show_nodes(&client));
    println!("{}", calls(&client, 4).await?);

    for (_, node) in std::mem::take(&mut nodes) {
        node.stop().await?;
    }
    client.nodes.wait_for_ids(&[], PATIENCE).await?;
    println!("greeter-a and greeter-d left");
    match client.say_hello("ada").await {
        Ok(served) => bail!("{} answered, but no node should be left", served.node),
        Err(status) => println!("call (fail fast){}", failed(&status)),
    }

    // The same empty list under wait-for-ready: the call is polled first, so it is already
    // waiting when greeter-e registers, and greeter-e answers it.
    client.when_none = WhenNoNode::WaitForReady;
    let (answer, node) =
        tokio::join!(client.say_hello("ada"), start_node(registry, "greeter-e", ttl));
    println!("call (wait for ready), while greeter-e joins{}", answer?);
    node?.stop().await?;
    Ok(())
}

/// A Greetings stream on the node `id` over the client's own connection to it, once its
/// first reply is in: a call running on that node.
async fn open_stream(client: &RoundRobin, id: &str) -> anyhow::Result<Streaming<HelloReply>> {
    let node = client.nodes.current().into_iter().find(|n| n.id == id).context("not listed")?;
    let mut greeter = GreeterClient::new(client.channels.to(&node)?);
    // Far apart, so the stream is waiting for its second reply when the node goes.
    let request = GreetingsRequest { name: "ada".into(), count: 0, interval_ms: 600_000 };
    let mut open = greeter.greetings(request).await?.into_inner();
    open.message().await?.context("the stream ended at once")?;
    Ok(open)
}

/// `nodes of greeter: a, b, c`.
pub fn show_nodes(client: &RoundRobin) -> String {
    let ids: Vec<String> = client.nodes.current().into_iter().map(|n| n.id).collect();
    format!("nodes of {SERVICE}: {}", ids.join(", "))
}

/// `count` calls in a row, on one line: the rotation at a glance.
async fn calls(client: &RoundRobin, count: usize) -> Result<String, Status> {
    let mut served = Vec::with_capacity(count);
    for _ in 0..count {
        served.push(client.say_hello("ada").await?.node);
    }
    Ok(format!("{count} calls: {}", served.join(" ")))
}

/// The rest of a `call` line for a failed call.
pub fn failed(status: &Status) -> String {
    format!(": {:?}: {}", status.code(), status.message())
}
