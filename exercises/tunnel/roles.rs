//! The roles, for several terminals: node-b in one, node-a in another.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use crate::nodes::{NodeA, NodeB, NodeBTally};
use crate::story::call_all;

/// Serves the Greeter on channel "greeter" to every node that links up, until stopped.
pub async fn node_b(listen: SocketAddr) -> anyhow::Result<()> {
    let node_b = NodeB::start("node-b", listen).await?;
    // Armed before the ready line: a signal that follows it is a stop request.
    let stop = microkit::signal::stop_requested();
    println!("node-b listens for links on {}; ctrl-c stops it", node_b.addr);
    microkit::signal::stopping(stop.await, "node-b stopping")?;
    let NodeBTally { links, sessions, drained } = node_b.stop().await;
    let calls = if drained { "every call finished" } else { "calls cut at the deadline" };
    println!("node-b stopped: {links} link(s), {sessions} session(s) served, {calls}");
    Ok(())
}

/// Links up with node-b and calls its Greeter through the tunnel, one session per name.
pub async fn node_a(connect: SocketAddr, names: &[String]) -> anyhow::Result<()> {
    let node_a = Arc::new(NodeA::new("node-a", connect));
    node_a.link().await.with_context(|| {
        format!("cannot link up with node-b at {connect}: is `tunnel node-b` running there?")
    })?;
    for line in call_all(&node_a, names).await? {
        println!("  {line}");
    }
    Ok(())
}
