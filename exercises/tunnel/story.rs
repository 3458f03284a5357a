//! The story the default run tells: calls multiplexed over one link, a channel nobody
//! serves, the link cut mid-call and made again, and a stranger speaking HTTP to node-b.

use std::sync::Arc;

use anyhow::Context;
use microkit::PATIENCE;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::{GreetingsRequest, HelloRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::nodes::{NodeA, NodeB};

/// What the one-process run saw, for the tests to check.
#[derive(Debug, PartialEq, Eq)]
pub struct Story {
    pub replies: Vec<String>,
    pub sessions: usize,
    pub links: usize,
    pub refusal: String,
    /// The root cause of each stream the cut failed, and how many hung instead.
    pub cut: Vec<String>,
    pub hung: usize,
    pub again: String,
    pub links_after_cut: usize,
    pub stranger: String,
}

/// Everything in one process: node-b and node-a, joined by a real TCP link on loopback.
pub async fn demo(names: &[String]) -> anyhow::Result<Story> {
    let node_b = NodeB::start("node-b", "127.0.0.1:0".parse()?).await?;
    println!("node-b serves the Greeter on channel \"greeter\"");
    let node_a = Arc::new(NodeA::new("node-a", node_b.addr));

    println!("{} clients on node-a call it at once:", names.len());
    let replies = call_all(&node_a, names).await?;
    for line in &replies {
        println!("  {line}");
    }
    let link = node_a.link().await?;
    let (sessions, links) = (link.sessions_opened(), node_a.links_dialed());
    println!("{sessions} sessions over {links} link");

    // A channel nobody serves is refused by the far node, by name: no hang, no guess.
    let refusal = match link.open("billing").await {
        Ok(_) => anyhow::bail!("node-b accepted a channel it does not serve"),
        Err(error) => error.to_string(),
    };
    println!("open channel \"billing\": {refusal}");

    let (cut, hung) = cut_link_mid_call(&node_a, 3).await?;
    let mut distinct = cut.clone();
    distinct.dedup();
    let causes = distinct.join("; ");
    println!("link cut with 3 streams open: {} failed ({causes}), {hung} hung", cut.len());

    // A tonic Channel reconnects by calling its connector again, which dials a new link.
    let mut client = GreeterClient::new(node_a.channel("greeter")?);
    let reply = tokio::time::timeout(PATIENCE, client.say_hello(hello("ada")))
        .await
        .context("calling again after the cut")??;
    let (again, links_after_cut) = (reply.into_inner().message, node_a.links_dialed());
    println!("the same client calls again: {again}, over link {links_after_cut}");

    let stranger = stranger_speaks_http(&node_b).await?;
    println!("a stranger sends \"GET / HTTP/1.1\" to node-b: link closed ({stranger})");
    Ok(Story { replies, sessions, links, refusal, cut, hung, again, links_after_cut, stranger })
}

/// One client per name, all calling at once, each over its own session. Returns the
/// replies sorted, since concurrent calls finish in any order.
pub async fn call_all(node_a: &Arc<NodeA>, names: &[String]) -> anyhow::Result<Vec<String>> {
    let calls = names.iter().map(|name| {
        let node_a = Arc::clone(node_a);
        let name = name.clone();
        async move {
            // Each client has its own Channel: one HTTP/2 connection, so one session.
            let mut client = GreeterClient::new(node_a.channel("greeter")?);
            let reply = tokio::time::timeout(PATIENCE, client.say_hello(hello(&name)))
                .await
                .with_context(|| format!("calling for {name} timed out"))??
                .into_inner();
            anyhow::Ok(format!("{}, answered by {}", reply.message, reply.node))
        }
    });
    let mut lines = futures::future::try_join_all(calls).await?;
    lines.sort();
    Ok(lines)
}

/// Opens `streams` endless server streams, each on its own session, then cuts the link
/// under them. Returns the root cause of each stream's error, sorted, and how many hung
/// (none should).
pub async fn cut_link_mid_call(
    node_a: &Arc<NodeA>,
    streams: usize,
) -> anyhow::Result<(Vec<String>, usize)> {
    let mut open = Vec::new();
    for _ in 0..streams {
        let mut client = GreeterClient::new(node_a.channel("greeter")?);
        let endless = GreetingsRequest { name: "ada".into(), count: 0, interval_ms: 10 };
        let mut replies = client.greetings(endless).await?.into_inner();
        // One reply in hand: the stream is really open, mid-call.
        tokio::time::timeout(PATIENCE, replies.message()).await.context("first reply")??;
        open.push(replies);
    }
    node_a.link().await?.cut();

    let (mut failed, mut hung) = (Vec::new(), 0);
    for mut replies in open {
        let end = tokio::time::timeout(PATIENCE, async {
            loop {
                match replies.message().await {
                    Ok(Some(_)) => continue, // replies already on their way
                    Ok(None) => return None,
                    Err(status) => return Some(status),
                }
            }
        });
        match end.await {
            Ok(Some(status)) => {
                tracing::info!(code = ?status.code(), message = status.message(), "stream failed");
                failed.push(root_cause(&status));
            }
            Ok(None) => anyhow::bail!("a stream cut by the link ended as if complete"),
            Err(_) => hung += 1,
        }
    }
    failed.sort();
    Ok((failed, hung))
}

/// Bytes that are not frames end the link at once, with the reason; node-b lives on.
pub async fn stranger_speaks_http(node_b: &NodeB) -> anyhow::Result<String> {
    let mut stranger = TcpStream::connect(node_b.addr).await?;
    stranger.write_all(b"GET / HTTP/1.1\r\nHost: node-b\r\n\r\n").await?;
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, stranger.read_to_end(&mut rest))
        .await
        .context("node-b kept a link full of garbage open")??;
    let link = node_b.links.lock().unwrap().last().cloned().context("no link recorded")?;
    Ok(link.end_reason().unwrap_or_default())
}

/// The innermost error under a status: what actually went wrong, below gRPC and HTTP/2.
pub fn root_cause(status: &tonic::Status) -> String {
    let mut cause: &dyn std::error::Error = status;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

pub fn hello(name: &str) -> HelloRequest {
    HelloRequest { name: name.to_owned() }
}

#[cfg(test)]
mod tests;
