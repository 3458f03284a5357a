//! The `client` role, for several terminals over a shared NATS (the `server` role is the
//! library's `round_robin::serve`, shared with sharding).

use std::sync::Arc;
use std::time::Duration;

use registry::Registry;
use round_robin::SERVICE;

use crate::rotation::{RoundRobin, WhenNoNode};
use crate::story::{failed, show_nodes};

/// The `client` role: call in turn, print who answered and every change of the node list.
pub async fn client(
    registry: &Arc<dyn Registry>,
    calls: u64,
    interval: Duration,
    when_none: WhenNoNode,
    deadline: Duration,
) -> anyhow::Result<()> {
    let nodes = round_robin::watch_healthy_service(registry).await?;
    let mut client = RoundRobin { when_none, deadline, ..RoundRobin::new(nodes) };
    if when_none == WhenNoNode::WaitForReady && client.nodes.current().is_empty() {
        println!("no node of {SERVICE} yet: each call waits up to {deadline:?} for one");
    }
    round_robin::call_until_stopped(calls, interval, async |_| {
        if client.nodes.has_changed() {
            println!("{}", show_nodes(&client));
        }
        client.say_hello("ada").await.map(|served| served.to_string()).map_err(|s| failed(&s))
    })
    .await?;
    Ok(())
}
