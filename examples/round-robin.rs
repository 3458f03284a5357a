//! # round-robin: a client that takes turns over the nodes of a service
//!
//! Round robin over *what*? Over the nodes of one service, as the registry lists them:
//! each call goes to the next node in turn, A, B, C, A, B, C. [`RoundRobin`] below is the
//! whole rotation, written by hand: tower ships only power-of-two-choices balancing, which
//! picks by load, not by turn. The client watches the registry once and keeps one counter,
//! so a node that joins or leaves is picked up as it happens and turns stay fair. It follows
//! each node's health too: a node that reports NOT_SERVING is skipped while still listed.
//!
//! go-micro's selector rebuilt the node list for every request and its counter restarted
//! with it, and its example never showed a node leaving, joining or dying.
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
//! The run waits once for a TTL (1 s, `--ttl-ms`) to show a crashed node expire.
//! Prints `tests/golden/round-robin.txt`; explained in `notes/round-robin.md`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand};
use microkit::PATIENCE;
use microkit::backend::BackendArgs;
use microkit::discovery::{Channels, LiveNodes};
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::registry::{Node, Registry};
use tonic::{Code, Status};

// The server role and the client's loop, shared with the sharding example.
#[path = "common/greeter_roles.rs"]
mod roles;
use roles::{SERVICE, start_node};

/// The rotation: the next node of the service, in turn. This is all round robin is.
struct RoundRobin {
    nodes: LiveNodes,
    /// One counter for the client's life, shared by every call: turns stay fair across
    /// calls and survive changes of the node list (go-micro's restarted per request).
    next: AtomicUsize,
    channels: Channels,
}

impl RoundRobin {
    fn new(nodes: LiveNodes) -> Self {
        RoundRobin { nodes, next: AtomicUsize::new(0), channels: Channels::default() }
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
async fn demo(registry: &Arc<dyn Registry>, ttl: Duration) -> anyhow::Result<()> {
    let mut nodes = BTreeMap::new();
    for name in ["greeter-a", "greeter-b", "greeter-c"] {
        nodes.insert(name, start_node(registry, name, ttl).await?);
    }
    let client = RoundRobin::new(LiveNodes::watch_healthy(registry, SERVICE).await?);
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

    // A crash: no deregistration, the heartbeat just stops. Until the TTL runs out the
    // registry still lists the node, and a call that picks it must go elsewhere.
    nodes.remove("greeter-c").unwrap().crash().await;
    println!("greeter-c crashed: still listed until its TTL runs out");
    for _ in 0..3 {
        println!("call{}", served(&client.say_hello("ada").await?));
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
        Err(status) => println!("call{}", failed(&status)),
    }
    Ok(())
}

/// `nodes of greeter: a, b, c`.
fn show_nodes(client: &RoundRobin) -> String {
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

/// The rest of a `call` line for a served call: `: b` or `: a failed, retried on b`.
fn served(served: &Served) -> String {
    match &served.retried_after {
        None => format!(": {}", served.node),
        Some(failed) => format!(": {failed} failed, retried on {}", served.node),
    }
}

/// The rest of a `call` line for a failed call.
fn failed(status: &Status) -> String {
    format!(": {:?}: {}", status.code(), status.message())
}

// ---- The command line and the roles ------------------------------------------------------

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
    /// Serve the greeter and stay registered until stopped (needs NATS_URL).
    Server(roles::ServerArgs),
    /// Call the service, one node after the other (needs NATS_URL).
    Client {
        /// How many calls to make; 0 means until stopped.
        #[arg(long, default_value_t = 10)]
        calls: u64,
        /// Pause between calls.
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
    },
}

/// The `client` role: call in turn, print who answered and every change of the node list.
async fn client(
    registry: &Arc<dyn Registry>,
    calls: u64,
    interval: Duration,
) -> anyhow::Result<()> {
    let mut client = RoundRobin::new(roles::watch_healthy_service(registry).await?);
    roles::call_until_stopped(calls, interval, async |_| {
        if client.nodes.has_changed() {
            println!("{}", show_nodes(&client));
        }
        client.say_hello("ada").await.map(|s| served(&s)).map_err(|s| failed(&s))
    })
    .await?;
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let ttl = Duration::from_millis(args.ttl_ms);
    let backend = args.backend.connect().await?;
    let registry = backend.registry();
    match args.role {
        None => demo(&registry, ttl).await,
        Some(role) => {
            backend.require_shared_nats("the server and client roles")?;
            match role {
                Role::Server(server) => {
                    roles::serve(&registry, &server.name, server.listen, ttl).await
                }
                Role::Client { calls, interval_ms } => {
                    client(&registry, calls, Duration::from_millis(interval_ms)).await
                }
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    microkit::main(run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use microkit::registered::Registered;
    use microkit::registry::MemoryRegistry;
    use microkit::server::RunningServer;

    const TTL: Duration = Duration::from_secs(5);

    /// A memory registry with `names` registered, and a client that sees them all.
    async fn cluster(
        names: &[&str],
    ) -> (Arc<dyn Registry>, Vec<Registered<RunningServer>>, RoundRobin) {
        let (registry, nodes, _listed) = roles::memory_cluster(names, TTL).await;
        let client = RoundRobin::new(LiveNodes::watch_healthy(&registry, SERVICE).await.unwrap());
        client.nodes.wait_for_ids(names, PATIENCE).await.unwrap();
        (registry, nodes, client)
    }

    /// Once the client sees exactly `ids`, one call per node: each answers once per round.
    async fn one_round(client: &RoundRobin, ids: &[&str]) -> Vec<String> {
        client.nodes.wait_for_ids(ids, PATIENCE).await.unwrap();
        let mut round = answers(client, ids.len()).await;
        round.sort();
        round
    }

    async fn answers(client: &RoundRobin, count: usize) -> Vec<String> {
        let mut nodes = Vec::new();
        for _ in 0..count {
            nodes.push(client.say_hello("x").await.unwrap().node);
        }
        nodes
    }

    #[tokio::test]
    async fn calls_take_turns_in_id_order() {
        let (_registry, _nodes, client) = cluster(&["n1", "n2", "n3"]).await;
        assert_eq!(answers(&client, 6).await, ["n1", "n2", "n3", "n1", "n2", "n3"]);
        assert_eq!(show_nodes(&client), "nodes of greeter: n1, n2, n3");
    }

    #[tokio::test]
    async fn turns_are_fair_over_many_calls() {
        let (_registry, _nodes, client) = cluster(&["n1", "n2", "n3"]).await;
        let mut counts = BTreeMap::new();
        for node in answers(&client, 30).await {
            *counts.entry(node).or_insert(0) += 1;
        }
        assert_eq!(counts.into_values().collect::<Vec<_>>(), [10, 10, 10]);
    }

    #[tokio::test]
    async fn a_node_that_leaves_or_joins_changes_the_rotation_at_once() {
        let (registry, mut nodes, client) = cluster(&["n1", "n2", "n3"]).await;
        nodes.remove(1).stop().await.unwrap();
        client.nodes.wait_for_ids(&["n1", "n3"], PATIENCE).await.unwrap();
        let two = answers(&client, 4).await;
        assert!(two[0] != two[1] && two[..2] == two[2..], "n1 and n3 take turns: {two:?}");
        assert!(!two.contains(&"n2".to_owned()), "{two:?}");

        nodes.push(start_node(&registry, "n4", TTL).await.unwrap());
        let three = one_round(&client, &["n1", "n3", "n4"]).await;
        assert_eq!(three, ["n1", "n3", "n4"], "each node once per round");
    }

    #[tokio::test]
    async fn a_crashed_node_is_retried_once_on_the_next_until_it_expires() {
        let ttl = Duration::from_millis(300);
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let a = start_node(&registry, "a", ttl).await.unwrap();
        let _b = start_node(&registry, "b", ttl).await.unwrap();
        let _c = start_node(&registry, "c", ttl).await.unwrap();
        let client = RoundRobin::new(LiveNodes::watch_healthy(&registry, SERVICE).await.unwrap());
        client.nodes.wait_for_ids(&["a", "b", "c"], PATIENCE).await.unwrap();
        a.crash().await;
        let first = client.say_hello("x").await.unwrap(); // a's turn, then b's
        assert_eq!((first.node.as_str(), first.retried_after.as_deref()), ("b", Some("a")));
        assert_eq!(served(&first), ": a failed, retried on b");
        let second = client.say_hello("x").await.unwrap(); // c's turn
        assert_eq!((second.node.as_str(), second.retried_after), ("c", None));
        client.nodes.wait_for_ids(&["b", "c"], ttl + PATIENCE).await.unwrap();
        for _ in 0..4 {
            let served = client.say_hello("x").await.unwrap();
            assert_eq!(served.retried_after, None, "expired: a is never picked again");
        }
    }

    #[tokio::test]
    async fn a_node_not_serving_is_skipped_while_listed_and_taken_back_when_it_serves() {
        let (registry, nodes, client) = cluster(&["n1", "n2", "n3"]).await;
        let health = nodes[1].server().health().unwrap();
        health.set_serving(false).await;
        client.nodes.wait_for_ids(&["n1", "n3"], PATIENCE).await.unwrap();
        assert_eq!(registry.nodes(SERVICE).await.unwrap().len(), 3, "n2 is still listed");
        let answered = answers(&client, 6).await;
        assert!(!answered.contains(&"n2".to_owned()), "no work for n2: {answered:?}");
        health.set_serving(true).await;
        let round = one_round(&client, &["n1", "n2", "n3"]).await;
        assert_eq!(round, ["n1", "n2", "n3"], "n2 takes its turns again");
    }

    #[tokio::test]
    async fn the_only_node_failing_is_not_retried_on_itself() {
        let (_registry, mut nodes, client) = cluster(&["solo"]).await;
        nodes.pop().unwrap().crash().await;
        let status = client.say_hello("x").await.err().expect("no other node to try");
        assert!(is_unreachable(&status), "{status:?}");
    }

    #[tokio::test]
    async fn no_node_is_unavailable_naming_the_service() {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let client = RoundRobin::new(LiveNodes::watch(&registry, "billing").await.unwrap());
        let status = client.say_hello("x").await.err().unwrap();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            failed(&status),
            ": Unavailable: no node of service \"billing\" in the registry"
        );
    }

    #[tokio::test]
    async fn roles_refuse_to_run_without_a_shared_nats() {
        let args = Args::parse_from(["round-robin", "--backend", "memory", "client"]);
        let error = run(args).await.unwrap_err().to_string();
        assert!(error.contains("NATS_URL"), "{error}");
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(Args::try_parse_from(["round-robin", "--ttl-ms", "5"]).is_err());
        assert!(Args::try_parse_from(["round-robin", "server"]).is_err(), "--name is required");
    }
}
