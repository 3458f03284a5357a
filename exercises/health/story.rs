//! The default run: a dependency goes away and comes back, a client that watches health
//! follows it, then a node stops in the shutdown lesson's steps 0 to 3.

use microkit::server::RunningServer;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{Stream, StreamExt};
use health::{Channels, LiveNodes};
use microkit::PATIENCE;
use microkit::health::WireStatus;
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit_http::Forwarder;
use registry::Registry;
use tonic::transport::Channel;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::readiness::{GreeterNode, SERVICE, follow_dependency};

/// One process, the whole story: a dependency goes away and comes back; then a stop.
pub async fn demo(registry: &Arc<dyn Registry>, ttl: Duration) -> anyhow::Result<()> {
    let store = microkit::greeter::serve("store-1").await?;
    let greeter_1 = GreeterNode::start(registry, "greeter-1", ttl).await?;
    let greeter_2 = GreeterNode::start(registry, "greeter-2", ttl).await?;
    let follower = tokio::spawn(follow_dependency(
        Channel::from_shared(store.url())?.connect_lazy(),
        greeter_1.grpc.server().health().context("greeter-1 has health")?.clone(),
    ));
    println!("greeter-1 and greeter-2 registered; greeter-1 needs store-1");

    let channel = Channel::from_shared(format!("http://{}", greeter_1.grpc.addr()))?.connect_lazy();
    println!("reflection on greeter-1: {}", list_services(channel.clone()).await?.join(", "));
    let mut statuses = Box::pin(microkit::health::watch(channel, "").await?);
    println!("watch greeter-1: {}", next_status(&mut statuses).await?);

    let client = Client {
        nodes: LiveNodes::watch_healthy(registry, SERVICE).await?,
        next: AtomicUsize::new(0),
        channels: Channels::default(),
    };
    client.nodes.wait_for_ids(&["greeter-1", "greeter-2"], PATIENCE).await?;
    println!("{}", client.calls(4).await?);

    let store_health = store.health().context("the store has health")?;
    store_health.set_serving(false).await;
    println!("store-1 reports NOT_SERVING");
    println!("watch greeter-1: {}", next_status(&mut statuses).await?);
    println!("greeter-1 {}: alive, not ready", probe(&greeter_1.probes).await?);
    client.nodes.wait_for_ids(&["greeter-2"], PATIENCE).await?;
    let listed: Vec<String> = registry.nodes(SERVICE).await?.into_iter().map(|n| n.id).collect();
    println!("the registry lists {}; the client sends to greeter-2 only", listed.join(", "));
    println!("{}", client.calls(4).await?);

    store_health.set_serving(true).await;
    println!("store-1 reports SERVING again");
    println!("watch greeter-1: {}", next_status(&mut statuses).await?);
    println!("greeter-1 {}: ready", probe(&greeter_1.probes).await?);
    client.nodes.wait_for_ids(&["greeter-1", "greeter-2"], PATIENCE).await?;
    println!("{}", client.calls(4).await?);

    // The stop, step by step as `Registered::stop` runs it, numbered as in the shutdown lesson.
    follower.abort();
    greeter_1.grpc.not_serving().await;
    println!("greeter-1 stops: 0. NOT_SERVING");
    println!("watch greeter-1: {}", next_status(&mut statuses).await?);
    greeter_1.grpc.deregister_and_drain().await?;
    println!("greeter-1 stops: 1. deregistered, 2. stopped accepting, 3. drained");
    println!("watch greeter-1: {}", next_status(&mut statuses).await?);
    client.nodes.wait_for_ids(&["greeter-2"], PATIENCE).await?;
    println!("{}", client.calls(2).await?);
    greeter_2.grpc.stop().await?;
    store.shutdown().await?;
    Ok(())
}

/// A client that takes turns over the nodes that are listed *and* serving.
struct Client {
    nodes: LiveNodes,
    next: AtomicUsize,
    channels: Channels,
}

/// Which node answered each call, in order.
struct Served(Vec<String>);

impl fmt::Display for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} calls: {}", self.0.len(), self.0.join(" "))
    }
}

impl Client {
    async fn calls(&self, count: usize) -> anyhow::Result<Served> {
        let mut served = Vec::new();
        for _ in 0..count {
            let nodes = self.nodes.current();
            if nodes.is_empty() {
                bail!("no node of {SERVICE} is serving");
            }
            let node = &nodes[self.next.fetch_add(1, Ordering::Relaxed) % nodes.len()];
            let mut client = GreeterClient::new(self.channels.to(node)?);
            let reply = client.say_hello(HelloRequest { name: "ada".into() }).await?;
            served.push(reply.into_inner().node);
        }
        Ok(Served(served))
    }
}

/// The names of the services `channel`'s server lists through reflection, sorted.
pub async fn list_services(channel: Channel) -> anyhow::Result<Vec<String>> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut client = ServerReflectionClient::new(channel);
    let mut replies =
        client.server_reflection_info(futures::stream::iter([request])).await?.into_inner();
    match replies.message().await?.and_then(|reply| reply.message_response) {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            Ok(names)
        }
        other => bail!("reflection answered {other:?} to ListServices"),
    }
}

/// The status codes of a node's two probes.
pub struct Probes {
    pub live: u16,
    pub ready: u16,
}

impl fmt::Display for Probes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/health/live: {}, /health/ready: {}", self.live, self.ready)
    }
}

/// Asks both probes of `probes`, as an orchestrator would.
pub async fn probe(probes: &RunningServer) -> anyhow::Result<Probes> {
    let http = Forwarder::default();
    let status = async |path: &str| -> anyhow::Result<u16> {
        let request =
            http::Request::get(format!("{}{path}", probes.url())).body(axum::body::Body::empty())?;
        let response = http.send(request).await.map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        Ok(response.status().as_u16())
    };
    Ok(Probes { live: status("/health/live").await?, ready: status("/health/ready").await? })
}

/// The next status a Watch stream reports, named as the spec names it.
async fn next_status(
    statuses: &mut (impl Stream<Item = Result<WireStatus, tonic::Status>> + Unpin),
) -> anyhow::Result<String> {
    match tokio::time::timeout(PATIENCE, statuses.next()).await? {
        Some(status) => Ok(status?.as_str_name().to_owned()),
        None => Ok("the stream ended".to_owned()),
    }
}
