//! # health: "exists" and "fit to serve" are two different signals
//!
//! The registry's TTL heartbeat says a node *exists*; health checking says whether it is *fit
//! to serve*. Every server here mounts `grpc.health.v1.Health` and server reflection
//! (`microkit::health`). [`follow_dependency`] below is the lesson: greeter-1 is ready only
//! while the store it needs reports SERVING. When the store goes away greeter-1 stays alive
//! (it answers, `/health/live` is 200) and listed, but reports NOT_SERVING (`/health/ready`
//! 503), and a client that watches health sends it no work until it serves again.
//!
//! go-micro's registry could only say a node exists; its example servers had no health
//! service and no reflection, so no standard tool could list or call them.
//!
//! Run it:
//!
//! ```text
//! cargo run --example health                       # the whole story in one process
//! # or across processes, over a shared NATS (nats-server -js):
//! export NATS_URL=nats://127.0.0.1:4222
//! cargo run --example health -- node --id greeter-1      # serves until ctrl-c
//! cargo run --example health -- watch --id greeter-1     # prints each health change
//! grpcurl -plaintext 127.0.0.1:<port> list               # reflection, no .proto needed
//! ```
//!
//! Prints `tests/golden/health.txt`; explained in `notes/health.md`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures::{Stream, StreamExt};
use microkit::PATIENCE;
use microkit::backend::BackendArgs;
use microkit::discovery::{Channels, LiveNodes};
use microkit::greeter::{GREETER, HelloGreeter};
use microkit::health::{Health, WireStatus};
use microkit::http::{Forwarder, HttpServer};
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::registered::Registered;
use microkit::registry::Registry;
use microkit::server::RunningServer;
use tonic::transport::Channel;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// The registry name of this topic's nodes: its own, because every topic's roles may run
/// against one NATS, and another topic's client looking up `greeter` must not reach them.
const SERVICE: &str = "health-greeter";

/// Keeps `health` equal to what the node needs: SERVING while `dependency` (a server that
/// reports its own health) does, NOT_SERVING while it does not or cannot be reached.
/// Liveness is untouched: the node still answers, health checks included.
async fn follow_dependency(dependency: Channel, health: Health) {
    loop {
        if let Ok(mut statuses) = microkit::health::watch(dependency.clone(), "").await {
            while let Some(Ok(status)) = statuses.next().await {
                health.set_serving(status == WireStatus::Serving).await;
            }
        }
        // Unreachable (or its stream ended): not ready until it answers again.
        health.set_serving(false).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A client that takes turns over the nodes that are listed *and* serving.
struct Client {
    nodes: LiveNodes,
    next: AtomicUsize,
    channels: Channels,
}

impl Client {
    async fn calls(&self, count: usize) -> anyhow::Result<String> {
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
        Ok(format!("{count} calls: {}", served.join(" ")))
    }
}

/// The names of the services `channel`'s server lists through reflection, sorted.
async fn list_services(channel: Channel) -> anyhow::Result<Vec<String>> {
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

/// A Greeter node with its health, and HTTP probes that report the same health.
async fn start_node(
    registry: &Arc<dyn Registry>,
    id: &str,
    ttl: Duration,
) -> anyhow::Result<(Registered<RunningServer>, HttpServer)> {
    let health = Health::new(&[GREETER]);
    let routes = tonic::service::Routes::new(HelloGreeter::new(id).into_service());
    let server = RunningServer::start_with_health(routes, health.clone()).await?;
    let probes = HttpServer::start(health.http_routes()).await?.with_health(health);
    Ok((Registered::new(registry, server, SERVICE, id, ttl).await?, probes))
}

/// `/health/live: 200, /health/ready: 503`.
async fn probe(probes: &HttpServer) -> anyhow::Result<String> {
    let http = Forwarder::new();
    let mut codes = Vec::new();
    for path in ["/health/live", "/health/ready"] {
        let request =
            http::Request::get(format!("{}{path}", probes.url())).body(axum::body::Body::empty())?;
        let response = http.send(request).await.map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        codes.push(format!("{path}: {}", response.status().as_u16()));
    }
    Ok(codes.join(", "))
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

/// One process, the whole story: a dependency goes away and comes back; then a stop.
async fn demo(registry: &Arc<dyn Registry>, ttl: Duration) -> anyhow::Result<()> {
    let store = microkit::greeter::serve("store-1").await?;
    let (greeter_1, probes) = start_node(registry, "greeter-1", ttl).await?;
    let (greeter_2, _probes_2) = start_node(registry, "greeter-2", ttl).await?;
    let follower = tokio::spawn(follow_dependency(
        Channel::from_shared(store.url())?.connect_lazy(),
        greeter_1.server().health().context("greeter-1 has health")?.clone(),
    ));
    println!("greeter-1 and greeter-2 registered; greeter-1 needs store-1");

    let channel = Channel::from_shared(format!("http://{}", greeter_1.addr()))?.connect_lazy();
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
    println!("greeter-1 {}: alive, not ready", probe(&probes).await?);
    client.nodes.wait_for_ids(&["greeter-2"], PATIENCE).await?;
    let listed: Vec<String> = registry.nodes(SERVICE).await?.into_iter().map(|n| n.id).collect();
    println!("the registry lists {}; the client sends to greeter-2 only", listed.join(", "));
    println!("{}", client.calls(4).await?);

    store_health.set_serving(true).await;
    println!("store-1 reports SERVING again");
    println!("watch greeter-1: {}", next_status(&mut statuses).await?);
    println!("greeter-1 {}: ready", probe(&probes).await?);
    client.nodes.wait_for_ids(&["greeter-1", "greeter-2"], PATIENCE).await?;
    println!("{}", client.calls(4).await?);

    // The stop, phase by phase, as `Registered::stop` runs it.
    follower.abort();
    greeter_1.not_serving().await;
    println!("greeter-1 stops: 1. NOT_SERVING");
    println!("watch greeter-1: {}", next_status(&mut statuses).await?);
    greeter_1.deregister_and_drain().await?;
    println!("greeter-1 stops: 2. deregistered, 3. drained");
    println!("watch greeter-1: {}", next_status(&mut statuses).await?);
    client.nodes.wait_for_ids(&["greeter-2"], PATIENCE).await?;
    println!("{}", client.calls(2).await?);
    greeter_2.stop().await?;
    store.shutdown().await?;
    Ok(())
}

// ---- The command line and the roles ------------------------------------------------------

#[derive(Parser, Debug)]
#[command(about = "gRPC health checking and reflection: exists vs fit to serve")]
struct Args {
    #[command(flatten)]
    backend: BackendArgs,
    /// A node's time to live in the registry: heartbeats come every third of it.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=600_000), global = true)]
    ttl_ms: u64,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Serve the greeter with health and reflection, registered until stopped (needs NATS_URL).
    Node {
        #[arg(long)]
        id: String,
    },
    /// Print each health change of a registered node until it stops (needs NATS_URL).
    Watch {
        #[arg(long)]
        id: String,
    },
}

/// The `node` role: serve until a stop request, then stop in the three phases.
async fn node(registry: &Arc<dyn Registry>, id: &str, ttl: Duration) -> anyhow::Result<()> {
    let (node, probes) = start_node(registry, id, ttl).await?;
    let stop = microkit::signal::stop_requested();
    println!("{id} serving {GREETER} on {}; probes on {}", node.addr(), probes.url());
    microkit::signal::stopping(stop, "NOT_SERVING, deregistering, then draining").await?;
    node.stop().await?;
    probes.shutdown().await?;
    println!("{id} stopped: NOT_SERVING, deregistered, drained");
    Ok(())
}

/// The `watch` role: find the node in the registry, then print its health as it changes.
async fn watch(registry: &Arc<dyn Registry>, id: &str) -> anyhow::Result<()> {
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
            signal = &mut stop => { signal?; microkit::signal::exit_on_next(); return Ok(()); }
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let ttl = Duration::from_millis(args.ttl_ms);
    let backend = args.backend.connect().await?;
    let registry = backend.registry();
    match args.role {
        None => demo(&registry, ttl).await,
        Some(role) => {
            backend.require_shared_nats("the node and watch roles")?;
            match role {
                Role::Node { id } => node(&registry, &id, ttl).await,
                Role::Watch { id } => watch(&registry, &id).await,
            }
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse()).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use microkit::registry::MemoryRegistry;

    async fn until(health: &Health, serving: bool) {
        let mut statuses = health.subscribe();
        tokio::time::timeout(PATIENCE, statuses.wait_for(|s| *s == serving))
            .await
            .expect("the node's health follows its dependency")
            .unwrap();
    }

    #[tokio::test]
    async fn readiness_follows_the_dependency_and_an_unreachable_one_is_not_ready() {
        let store = microkit::greeter::serve("store").await.unwrap();
        let health = Health::new(&[GREETER]);
        let channel = Channel::from_shared(store.url()).unwrap().connect_lazy();
        let follower = tokio::spawn(follow_dependency(channel, health.clone()));
        until(&health, true).await;
        store.health().unwrap().set_serving(false).await;
        until(&health, false).await;
        store.health().unwrap().set_serving(true).await;
        until(&health, true).await;
        store.shutdown().await.unwrap();
        until(&health, false).await;
        follower.abort();
    }

    #[tokio::test]
    async fn while_stopping_ready_is_503_live_stays_200_and_the_node_is_still_listed() {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let (node, probes) = start_node(&registry, "n1", Duration::from_secs(5)).await.unwrap();
        assert_eq!(probe(&probes).await.unwrap(), "/health/live: 200, /health/ready: 200");
        node.not_serving().await;
        assert_eq!(probe(&probes).await.unwrap(), "/health/live: 200, /health/ready: 503");
        assert_eq!(registry.nodes(SERVICE).await.unwrap().len(), 1);
        node.deregister_and_drain().await.unwrap();
        assert!(registry.nodes(SERVICE).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn reflection_lists_the_greeter_and_the_standard_services() {
        let server = microkit::greeter::serve("n1").await.unwrap();
        let channel = Channel::from_shared(server.url()).unwrap().connect_lazy();
        let names = list_services(channel).await.unwrap();
        assert_eq!(
            names,
            ["greeter.v1.Greeter", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"]
        );
    }

    #[tokio::test]
    async fn roles_refuse_to_run_without_a_shared_nats() {
        let args = Args::parse_from(["health", "--backend", "memory", "node", "--id", "n1"]);
        let error = run(args).await.unwrap_err().to_string();
        assert!(error.contains("NATS_URL"), "{error}");
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(Args::try_parse_from(["health", "node"]).is_err(), "--id is required");
        assert!(Args::try_parse_from(["health", "--ttl-ms", "5"]).is_err());
    }
}
