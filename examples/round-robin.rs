//! # round-robin: a client that takes turns over the nodes of a service
//!
//! go-micro's example wrapped its client so each call took the next node of the service,
//! a counter over the list the registry gave back. The learner's question was "round robin
//! over *what*?": over the nodes of one service, as listed in the registry. go-micro's
//! selector rebuilt that list for each request and its counter reset with it; here the
//! client keeps one watch on the registry and one counter, so turns are fair across
//! calls, and a node that joins or leaves is picked up as it happens. The rotation is the
//! [`RoundRobin`] struct below, written by hand: tower only ships power-of-two-choices
//! balancing, which picks by load, not by turn (see the note).
//!
//! Run it:
//!
//! ```text
//! cargo run --example round-robin                  # the whole story in one process
//! # or across processes, over a shared NATS (nats-server -js):
//! export NATS_URL=nats://127.0.0.1:4222
//! cargo run --example round-robin -- server --name greeter-a    # one terminal each
//! cargo run --example round-robin -- server --name greeter-b
//! cargo run --example round-robin -- client --calls 0            # until ctrl-c
//! ```
//!
//! It prints (the golden file `tests/golden/round-robin.txt` holds exactly this):
//!
//! ```text
//! nodes of greeter: greeter-a, greeter-b, greeter-c
//! 6 calls: greeter-a greeter-b greeter-c greeter-a greeter-b greeter-c
//! greeter-b left: deregistered on a graceful stop
//! nodes of greeter: greeter-a, greeter-c
//! 4 calls: greeter-a greeter-c greeter-a greeter-c
//! greeter-d joined
//! nodes of greeter: greeter-a, greeter-c, greeter-d
//! 6 calls: greeter-c greeter-d greeter-a greeter-c greeter-d greeter-a
//! greeter-c crashed: still listed until its TTL runs out
//! call: greeter-c failed, retried on greeter-d
//! call: greeter-a
//! call: greeter-c failed, retried on greeter-d
//! greeter-c expired: no heartbeat within its TTL
//! nodes of greeter: greeter-a, greeter-d
//! 4 calls: greeter-d greeter-a greeter-d greeter-a
//! greeter-a and greeter-d left
//! call: Unavailable: no node of service "greeter" in the registry
//! ```
//!
//! The run waits once for a TTL (1 s by default, `--ttl-ms`), to show a crashed node expire.
//! Read it beside `notes/round-robin.md`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand};
use microkit::backend::BackendArgs;
use microkit::discovery::{Channels, LiveNodes};
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::registry::{Node, Registration, Registry};
use microkit::server::RunningServer;
use microkit::{Out, say};
use tonic::{Code, Status};

/// The service every node here belongs to.
const SERVICE: &str = "greeter";
/// How long the demo waits for the registry to show a change (a hang guard, not a pace).
const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(about = "Round robin over the nodes of a service, from the registry")]
struct Args {
    #[command(flatten)]
    backend: BackendArgs,
    /// A node's time to live in the registry: heartbeats come every third of it.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=600_000), global = true)]
    ttl_ms: u64,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Serve the greeter and register it until ctrl-c (needs NATS_URL).
    Server {
        /// The node's id in the registry, e.g. greeter-a.
        #[arg(long)]
        name: String,
    },
    /// Call the service, one node after the other (needs NATS_URL).
    Client {
        /// How many calls to make; 0 means until ctrl-c.
        #[arg(long, default_value_t = 10)]
        calls: u64,
        /// Pause between calls.
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse(), &Out::stdout()).await)
}

async fn run(args: Args, out: &Out) -> anyhow::Result<()> {
    let ttl = Duration::from_millis(args.ttl_ms);
    let backend = args.backend.connect().await?;
    match args.role {
        None => demo(&backend.registry(), ttl, out).await,
        Some(role) => {
            backend.require_shared_nats("the server and client roles")?;
            match role {
                Role::Server { name } => server(&backend.registry(), &name, ttl, out).await,
                Role::Client { calls, interval_ms } => {
                    let interval = Duration::from_millis(interval_ms);
                    client(&backend.registry(), calls, interval, out).await
                }
            }
        }
    }
}

/// The rotation: the next node of the service, in turn. This is all round robin is.
struct RoundRobin {
    nodes: LiveNodes,
    /// One counter for the client's life, shared by every call: turns stay fair across
    /// calls and survive changes of the node list (go-micro's restarted per request).
    next: AtomicUsize,
    channels: Channels,
}

impl RoundRobin {
    async fn new(registry: &Arc<dyn Registry>, service: &str) -> anyhow::Result<Self> {
        let nodes = LiveNodes::watch(registry, service).await?;
        Ok(RoundRobin { nodes, next: AtomicUsize::new(0), channels: Channels::default() })
    }

    /// The node whose turn it is; `Unavailable` naming the service when there is none.
    fn pick(&self) -> Result<Node, Status> {
        let nodes = self.nodes.current(); // sorted by id: every client rotates the same way
        if nodes.is_empty() {
            let service = self.nodes.service();
            return Err(Status::unavailable(format!(
                "no node of service \"{service}\" in the registry"
            )));
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Ok(nodes[turn % nodes.len()].clone())
    }

    /// Calls the next node; if it cannot be reached, tries the one after it, once.
    /// (Safe here because SayHello can run twice without harm.)
    async fn say_hello(&self, name: &str) -> Result<Served, Status> {
        let first = self.pick()?;
        let failure = match self.call(&first, name).await {
            Ok(()) => return Ok(Served { node: first.id, retried_after: None }),
            Err(status) if is_unreachable(&status) => status,
            Err(status) => return Err(status),
        };
        tracing::info!(node = %first.id, "unreachable ({failure}); retrying on the next node");
        let second = self.pick()?;
        if second.id == first.id {
            return Err(failure); // the only node left is the one that failed
        }
        self.call(&second, name).await?;
        Ok(Served { node: second.id, retried_after: Some(first.id) })
    }

    async fn call(&self, node: &Node, name: &str) -> Result<(), Status> {
        let mut client = GreeterClient::new(self.channels.to(node)?);
        let reply = client.say_hello(HelloRequest { name: name.to_owned() }).await?;
        if reply.get_ref().node != node.id {
            return Err(Status::internal(format!(
                "{} answered for {}",
                reply.get_ref().node,
                node.id
            )));
        }
        Ok(())
    }
}

struct Served {
    node: String,
    /// The node that could not be reached first, if any.
    retried_after: Option<String>,
}

/// What a dead or vanished node looks like to a caller: worth one try elsewhere.
fn is_unreachable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled)
}

/// One process, the whole story: three nodes, one leaves, one joins, one crashes.
async fn demo(registry: &Arc<dyn Registry>, ttl: Duration, out: &Out) -> anyhow::Result<()> {
    let mut nodes = BTreeMap::new();
    for name in ["greeter-a", "greeter-b", "greeter-c"] {
        nodes.insert(name, start_node(registry, name, ttl).await?);
    }
    let client = RoundRobin::new(registry, SERVICE).await?;
    client.nodes.wait_for_ids(&["greeter-a", "greeter-b", "greeter-c"], PATIENCE).await?;
    show_nodes(&client, out);
    calls(&client, 6, out).await?;

    // A graceful stop: the node deregisters, so clients drop it at once.
    let (server, registration) = nodes.remove("greeter-b").unwrap();
    registration.deregister().await?;
    server.shutdown().await?;
    client.nodes.wait_for_ids(&["greeter-a", "greeter-c"], PATIENCE).await?;
    say!(out, "greeter-b left: deregistered on a graceful stop");
    show_nodes(&client, out);
    calls(&client, 4, out).await?;

    nodes.insert("greeter-d", start_node(registry, "greeter-d", ttl).await?);
    client.nodes.wait_for_ids(&["greeter-a", "greeter-c", "greeter-d"], PATIENCE).await?;
    say!(out, "greeter-d joined");
    show_nodes(&client, out);
    calls(&client, 6, out).await?;

    // A crash: no deregistration, the heartbeat just stops. Until the TTL runs out the
    // registry still lists the node, and a call that picks it must go elsewhere.
    let (server, registration) = nodes.remove("greeter-c").unwrap();
    server.crash().await;
    drop(registration);
    say!(out, "greeter-c crashed: still listed until its TTL runs out");
    for _ in 0..3 {
        match client.say_hello("ada").await? {
            Served { node, retried_after: None } => say!(out, "call: {node}"),
            Served { node, retried_after: Some(failed) } => {
                say!(out, "call: {failed} failed, retried on {node}")
            }
        }
    }
    client.nodes.wait_for_ids(&["greeter-a", "greeter-d"], ttl + PATIENCE).await?;
    say!(out, "greeter-c expired: no heartbeat within its TTL");
    show_nodes(&client, out);
    calls(&client, 4, out).await?;

    for (_, (server, registration)) in std::mem::take(&mut nodes) {
        registration.deregister().await?;
        server.shutdown().await?;
    }
    client.nodes.wait_for_ids(&[], PATIENCE).await?;
    say!(out, "greeter-a and greeter-d left");
    match client.say_hello("ada").await {
        Ok(served) => bail!("{} answered, but no node should be left", served.node),
        Err(status) => say!(out, "call: {:?}: {}", status.code(), status.message()),
    }
    Ok(())
}

/// A greeter on a free port, registered under `name` and kept alive by heartbeats.
async fn start_node(
    registry: &Arc<dyn Registry>,
    name: &str,
    ttl: Duration,
) -> anyhow::Result<(RunningServer, Registration)> {
    let server = microkit::greeter::serve(name).await?;
    let node = Node::new(SERVICE, name, server.addr());
    let registration = Registration::start(registry.clone(), node, ttl).await?;
    Ok((server, registration))
}

fn show_nodes(client: &RoundRobin, out: &Out) {
    let ids: Vec<String> = client.nodes.current().into_iter().map(|n| n.id).collect();
    say!(out, "nodes of {SERVICE}: {}", ids.join(", "));
}

/// `count` calls in a row, on one line: the rotation at a glance.
async fn calls(client: &RoundRobin, count: usize, out: &Out) -> anyhow::Result<()> {
    let mut served = Vec::with_capacity(count);
    for _ in 0..count {
        served.push(client.say_hello("ada").await?.node);
    }
    say!(out, "{count} calls: {}", served.join(" "));
    Ok(())
}

/// The `server` role: serve and stay registered until ctrl-c or SIGTERM.
async fn server(
    registry: &Arc<dyn Registry>,
    name: &str,
    ttl: Duration,
    out: &Out,
) -> anyhow::Result<()> {
    let (server, registration) = start_node(registry, name, ttl).await?;
    say!(out, "{name} serving {SERVICE} on {}, registered with a TTL of {ttl:?}", server.addr());
    microkit::signal::stop_requested().await?;
    registration.deregister().await?;
    server.shutdown().await?;
    say!(out, "{name} deregistered and stopped");
    Ok(())
}

/// The `client` role: call in turn, print who answered and every change of the node list.
async fn client(
    registry: &Arc<dyn Registry>,
    calls: u64,
    interval: Duration,
    out: &Out,
) -> anyhow::Result<()> {
    let mut client = RoundRobin::new(registry, SERVICE).await?;
    let mut failures = 0;
    let mut n = 0;
    while calls == 0 || n < calls {
        n += 1;
        if client.nodes.has_changed() {
            show_nodes(&client, out);
        }
        match client.say_hello("ada").await {
            Ok(Served { node, retried_after: None }) => say!(out, "call {n}: {node}"),
            Ok(Served { node, retried_after: Some(failed) }) => {
                say!(out, "call {n}: {failed} failed, retried on {node}")
            }
            Err(status) => {
                failures += 1;
                say!(out, "call {n} failed: {:?}: {}", status.code(), status.message());
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    if failures > 0 {
        bail!("{failures} of {n} calls failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use microkit::registry::MemoryRegistry;

    #[tokio::test]
    async fn prints_its_golden_output() {
        let out = Out::capture();
        run(Args::parse_from(["round-robin", "--backend", "memory"]), &out).await.unwrap();
        microkit::golden::assert_matches("round-robin", &out.text());
    }

    #[tokio::test]
    async fn prints_the_same_on_nats() {
        let nats = microkit::nats::NatsServer::start().await.expect(microkit::nats::INSTALL_HINT);
        let client = microkit::backend::connect(&nats.url()).await.unwrap();
        let registry: Arc<dyn Registry> = Arc::new(microkit::registry::NatsRegistry::new(client));
        let out = Out::capture();
        demo(&registry, Duration::from_secs(1), &out).await.unwrap();
        microkit::golden::assert_matches("round-robin", &out.text());
    }

    #[tokio::test]
    async fn turns_are_fair_over_many_calls() {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let mut nodes = Vec::new();
        for name in ["n1", "n2", "n3"] {
            nodes.push(start_node(&registry, name, Duration::from_secs(5)).await.unwrap());
        }
        let client = RoundRobin::new(&registry, SERVICE).await.unwrap();
        client.nodes.wait_for_ids(&["n1", "n2", "n3"], PATIENCE).await.unwrap();
        let mut counts = BTreeMap::new();
        for _ in 0..30 {
            *counts.entry(client.say_hello("x").await.unwrap().node).or_insert(0) += 1;
        }
        assert_eq!(counts.into_values().collect::<Vec<_>>(), [10, 10, 10]);
    }

    #[tokio::test]
    async fn no_node_is_unavailable_naming_the_service() {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let client = RoundRobin::new(&registry, "billing").await.unwrap();
        let status = client.say_hello("x").await.err().unwrap();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("\"billing\""), "{}", status.message());
    }

    #[tokio::test]
    async fn roles_refuse_to_run_without_a_shared_nats() {
        let args = Args::parse_from(["round-robin", "--backend", "memory", "client"]);
        let error = run(args, &Out::capture()).await.unwrap_err().to_string();
        assert!(error.contains("NATS_URL"), "{error}");
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(Args::try_parse_from(["round-robin", "--ttl-ms", "5"]).is_err());
        assert!(Args::try_parse_from(["round-robin", "server"]).is_err(), "--name is required");
    }
}
