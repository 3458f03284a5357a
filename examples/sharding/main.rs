//! # sharding: the same user always reaches the same node
//!
//! go-micro's example wrapped its client to read an `X-From-User` header and pick the node
//! as `crc32(user) % number of nodes`. Every user did stick to one node, until the number
//! of nodes changed: then the modulo sent most users somewhere else, and whatever a node
//! held for them (a cache, a session) was lost. Here the client reads `x-from-user` (gRPC
//! keys are lower case) in [`ShardRouter`], a tower service under the generated client,
//! and picks the node by rendezvous hashing: each node gets a score for the user, the
//! highest wins. Adding a node moves only the users the new node now wins, about 1/N of
//! them. A call without the header has no affinity to keep and goes round robin.
//!
//! Run it:
//!
//! ```text
//! cargo run --example sharding                     # the whole story in one process
//! # or across processes, over a shared NATS (nats-server -js):
//! export NATS_URL=nats://127.0.0.1:4222
//! cargo run --example sharding -- server --name greeter-a       # one terminal each
//! cargo run --example sharding -- server --name greeter-b
//! cargo run --example sharding -- client --user ada --calls 5    # always one node
//! cargo run --example sharding -- client --calls 5               # no header: round robin
//! ```
//!
//! It prints (the golden file `tests/golden/sharding.txt` holds exactly this):
//!
//! ```text
//! nodes of greeter: greeter-a, greeter-b, greeter-c
//! user   node (3 calls each)
//! ada    greeter-c
//! bo     greeter-a
//! carol  greeter-a
//! dan    greeter-b
//! eve    greeter-a
//! finn   greeter-c
//! gus    greeter-b
//! hana   greeter-a
//! greeter-d joined
//! user   node (3 calls each)
//! ada    greeter-c
//! bo     greeter-a
//! carol  greeter-d (moved from greeter-a)
//! dan    greeter-b
//! eve    greeter-a
//! finn   greeter-c
//! gus    greeter-b
//! hana   greeter-d (moved from greeter-a)
//! moved: 2 of 8 users
//! of 10000 users, adding a 4th node moves:
//!   rendezvous hashing  25.2%  (ideal: 1/4 = 25.0%)
//!   crc32 modulo        74.3%  (go-micro's choice)
//! no x-from-user header, 4 calls: greeter-a greeter-b greeter-c greeter-d
//! ```
//!
//! The node choosers (rendezvous hashing, and go-micro's crc32 modulo for contrast) are in
//! `hashing.rs` beside this file; the router that uses them is `ShardRouter` below. Read it
//! beside `notes/sharding.md`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
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
use tonic::Status;
use tonic::body::Body;
use tower::{Service, ServiceExt};

// The lesson's core, choosing a node for a user, is in hashing.rs beside this file.
mod hashing;
use hashing::{crc32_modulo, moved_fraction, rendezvous};

const SERVICE: &str = "greeter";
/// The request header that carries the user: what the affinity is keyed on.
const USER_HEADER: &str = "x-from-user";
/// A node's time to live in the registry.
const TTL: Duration = Duration::from_secs(3);
/// How long the demo waits for the registry to show a change (a hang guard, not a pace).
const PATIENCE: Duration = Duration::from_secs(10);
/// The users of the printed table.
const USERS: [&str; 8] = ["ada", "bo", "carol", "dan", "eve", "finn", "gus", "hana"];
/// How many users the moved fractions are measured over.
const POPULATION: usize = 10_000;

#[derive(Parser, Debug)]
#[command(about = "Request affinity: x-from-user picks the node by rendezvous hashing")]
struct Args {
    #[command(flatten)]
    backend: BackendArgs,
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
    /// Call the service as one user, or without the header (needs NATS_URL).
    Client {
        /// Sent as x-from-user; without it, calls go round robin.
        #[arg(long)]
        user: Option<String>,
        /// How many calls to make.
        #[arg(long, default_value_t = 5)]
        calls: u32,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse(), &Out::stdout()).await)
}

async fn run(args: Args, out: &Out) -> anyhow::Result<()> {
    let backend = args.backend.connect().await?;
    match args.role {
        None => demo(&backend.registry(), out).await,
        Some(role) => {
            backend.require_shared_nats("the server and client roles")?;
            match role {
                Role::Server { name } => server(&backend.registry(), &name, out).await,
                Role::Client { user, calls } => {
                    client(&backend.registry(), user.as_deref(), calls, out).await
                }
            }
        }
    }
}

// ---- Choosing a node: the lesson ---------------------------------------------------------

// ---- The client-side layer ---------------------------------------------------------------

/// go-micro's client wrapper, as a tower service under the generated client: it reads
/// `x-from-user` from each request and forwards the request to that user's node; without
/// the header, to the next node in turn.
#[derive(Clone)]
struct ShardRouter {
    nodes: Arc<LiveNodes>,
    channels: Channels,
    turn: Arc<AtomicUsize>,
}

impl ShardRouter {
    fn new(nodes: LiveNodes) -> Self {
        ShardRouter { nodes: Arc::new(nodes), channels: Channels::default(), turn: Arc::default() }
    }

    fn pick(&self, user: Option<&str>) -> Result<Node, Status> {
        let nodes = self.nodes.current();
        let chosen = match user {
            Some(user) => rendezvous(user, &nodes),
            None if nodes.is_empty() => None,
            None => Some(&nodes[self.turn.fetch_add(1, Ordering::Relaxed) % nodes.len()]),
        };
        chosen.cloned().ok_or_else(|| {
            Status::unavailable(format!("no node of service \"{}\" in the registry", SERVICE))
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<http::Request<Body>> for ShardRouter {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(())) // each call readies the channel it picks
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let user = request.headers().get(USER_HEADER).and_then(|v| v.to_str().ok());
        let channel = self.pick(user).and_then(|node| self.channels.to(&node));
        Box::pin(async move {
            // A `Status` error reaches the caller as that status (tonic looks for one).
            let channel = channel?;
            Ok(channel.oneshot(request).await?)
        })
    }
}

/// One call, as `user` (or with no header), answered by the node the router chose.
async fn hello(
    client: &mut GreeterClient<ShardRouter>,
    user: Option<&str>,
) -> Result<String, Status> {
    let mut request = tonic::Request::new(HelloRequest { name: user.unwrap_or("guest").into() });
    if let Some(user) = user {
        let value = user.parse().map_err(|_| Status::invalid_argument("user must be ASCII"))?;
        request.metadata_mut().insert(USER_HEADER, value);
    }
    Ok(client.say_hello(request).await?.into_inner().node)
}

// ---- The run -----------------------------------------------------------------------------

async fn demo(registry: &Arc<dyn Registry>, out: &Out) -> anyhow::Result<()> {
    let mut running = Vec::new();
    for name in ["greeter-a", "greeter-b", "greeter-c"] {
        running.push(start_node(registry, name).await?);
    }
    let nodes = LiveNodes::watch(registry, SERVICE).await?;
    nodes.wait_for_ids(&["greeter-a", "greeter-b", "greeter-c"], PATIENCE).await?;
    let router = ShardRouter::new(nodes);
    let mut client = GreeterClient::new(router.clone());
    let three = router.nodes.current();
    let ids: Vec<String> = three.iter().map(|n| n.id.clone()).collect();
    say!(out, "nodes of {SERVICE}: {}", ids.join(", "));

    say!(out, "user   node (3 calls each)");
    let mut before = Vec::new();
    for user in USERS {
        let node = same_node_every_time(&mut client, user, 3).await?;
        say!(out, "{user:<6} {node}");
        before.push(node);
    }

    running.push(start_node(registry, "greeter-d").await?);
    let all = ["greeter-a", "greeter-b", "greeter-c", "greeter-d"];
    router.nodes.wait_for_ids(&all, PATIENCE).await?;
    say!(out, "greeter-d joined");
    say!(out, "user   node (3 calls each)");
    let mut moved = 0;
    for (user, old) in USERS.iter().zip(&before) {
        let node = same_node_every_time(&mut client, user, 3).await?;
        if &node == old {
            say!(out, "{user:<6} {node}");
        } else {
            moved += 1;
            say!(out, "{user:<6} {node} (moved from {old})");
        }
    }
    say!(out, "moved: {moved} of {} users", USERS.len());

    let four = router.nodes.current();
    let population: Vec<String> = (0..POPULATION).map(|i| format!("user-{i}")).collect();
    say!(out, "of {POPULATION} users, adding a 4th node moves:");
    let rendezvous_moved = moved_fraction(&population, &three, &four, rendezvous);
    say!(out, "  rendezvous hashing {:5.1}%  (ideal: 1/4 = 25.0%)", rendezvous_moved * 100.0);
    let modulo_moved = moved_fraction(&population, &three, &four, crc32_modulo);
    say!(out, "  crc32 modulo       {:5.1}%  (go-micro's choice)", modulo_moved * 100.0);

    let mut turns = Vec::new();
    for _ in 0..4 {
        turns.push(hello(&mut client, None).await?);
    }
    say!(out, "no {USER_HEADER} header, 4 calls: {}", turns.join(" "));

    for (server, registration) in running {
        registration.deregister().await?;
        server.shutdown().await?;
    }
    Ok(())
}

/// Calls `count` times as `user` and checks one node answered them all.
async fn same_node_every_time(
    client: &mut GreeterClient<ShardRouter>,
    user: &str,
    count: usize,
) -> anyhow::Result<String> {
    let first = hello(client, Some(user)).await?;
    for _ in 1..count {
        let node = hello(client, Some(user)).await?;
        if node != first {
            bail!("{user} reached {first}, then {node}: affinity broken");
        }
    }
    Ok(first)
}

async fn start_node(
    registry: &Arc<dyn Registry>,
    name: &str,
) -> anyhow::Result<(RunningServer, Registration)> {
    let server = microkit::greeter::serve(name).await?;
    let node = Node::new(SERVICE, name, server.addr());
    let registration = Registration::start(registry.clone(), node, TTL).await?;
    Ok((server, registration))
}

// ---- The roles ---------------------------------------------------------------------------

async fn server(registry: &Arc<dyn Registry>, name: &str, out: &Out) -> anyhow::Result<()> {
    let (server, registration) = start_node(registry, name).await?;
    say!(out, "{name} serving {SERVICE} on {}", server.addr());
    microkit::signal::stop_requested().await?;
    registration.deregister().await?;
    server.shutdown().await?;
    say!(out, "{name} deregistered and stopped");
    Ok(())
}

async fn client(
    registry: &Arc<dyn Registry>,
    user: Option<&str>,
    calls: u32,
    out: &Out,
) -> anyhow::Result<()> {
    let nodes = LiveNodes::watch(registry, SERVICE).await?;
    // The watch reports the registered nodes one by one: hashing over half of them would
    // send a user to the wrong node, so wait until it shows all that are registered.
    let listed: Vec<String> = registry.nodes(SERVICE).await?.into_iter().map(|n| n.id).collect();
    let listed: Vec<&str> = listed.iter().map(String::as_str).collect();
    nodes.wait_for_ids(&listed, PATIENCE).await?;
    let mut client = GreeterClient::new(ShardRouter::new(nodes));
    let who = user.map_or("no header".to_owned(), |u| format!("{USER_HEADER}: {u}"));
    for n in 1..=calls {
        let node = hello(&mut client, user).await?;
        say!(out, "call {n} ({who}): {node}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hashing::{crc32, fnv1a};
    use microkit::registry::MemoryRegistry;

    fn nodes(ids: &[&str]) -> Vec<Node> {
        ids.iter().map(|id| Node::new(SERVICE, id, "127.0.0.1:1")).collect()
    }

    fn population() -> Vec<String> {
        (0..POPULATION).map(|i| format!("user-{i}")).collect()
    }

    #[tokio::test]
    async fn prints_its_golden_output() {
        let out = Out::capture();
        run(Args::parse_from(["sharding", "--backend", "memory"]), &out).await.unwrap();
        microkit::golden::assert_matches("sharding", &out.text());
    }

    #[tokio::test]
    async fn every_user_reaches_one_node_over_many_calls() {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let mut running = Vec::new();
        for name in ["n1", "n2", "n3"] {
            running.push(start_node(&registry, name).await.unwrap());
        }
        let live = LiveNodes::watch(&registry, SERVICE).await.unwrap();
        live.wait_for_ids(&["n1", "n2", "n3"], PATIENCE).await.unwrap();
        let mut client = GreeterClient::new(ShardRouter::new(live));
        let mut used = std::collections::BTreeSet::new();
        for user in (0..30).map(|i| format!("u{i}")) {
            used.insert(same_node_every_time(&mut client, &user, 10).await.unwrap());
        }
        assert_eq!(used.len(), 3, "30 users spread over all three nodes");
    }

    #[tokio::test]
    async fn without_the_header_calls_go_round_robin() {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let mut running = Vec::new();
        for name in ["n1", "n2", "n3"] {
            running.push(start_node(&registry, name).await.unwrap());
        }
        let live = LiveNodes::watch(&registry, SERVICE).await.unwrap();
        live.wait_for_ids(&["n1", "n2", "n3"], PATIENCE).await.unwrap();
        let mut client = GreeterClient::new(ShardRouter::new(live));
        let mut turns = Vec::new();
        for _ in 0..6 {
            turns.push(hello(&mut client, None).await.unwrap());
        }
        assert_eq!(turns, ["n1", "n2", "n3", "n1", "n2", "n3"]);
    }

    #[tokio::test]
    async fn no_node_is_unavailable_naming_the_service() {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let live = LiveNodes::watch(&registry, SERVICE).await.unwrap();
        let mut client = GreeterClient::new(ShardRouter::new(live));
        let status = hello(&mut client, Some("ada")).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("\"greeter\""), "{}", status.message());
    }

    #[test]
    fn adding_a_node_moves_about_one_in_n_and_only_to_it() {
        let users = population();
        for n in 2..=8 {
            let ids: Vec<String> = (0..=n).map(|i| format!("node-{i}")).collect();
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let (before, after) = (nodes(&ids[..n]), nodes(&ids));
            let moved = moved_fraction(&users, &before, &after, rendezvous);
            let ideal = 1.0 / (n + 1) as f64;
            assert!((moved - ideal).abs() < 0.02, "{n} -> {}: moved {moved}, ideal {ideal}", n + 1);
            for user in &users {
                let (old, new) =
                    (rendezvous(user, &before).unwrap(), rendezvous(user, &after).unwrap());
                assert!(old.id == new.id || new.id == ids[n], "{user} moved between old nodes");
            }
            assert!(moved_fraction(&users, &before, &after, crc32_modulo) > 0.5);
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_users() {
        let users = population();
        let (before, after) = (nodes(&["a", "b", "c", "d"]), nodes(&["a", "b", "d"]));
        for user in &users {
            let old = rendezvous(user, &before).unwrap();
            if old.id != "c" {
                assert_eq!(rendezvous(user, &after).unwrap().id, old.id, "{user}");
            }
        }
    }

    #[test]
    fn the_hashes_are_the_standard_ones() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926); // the CRC-32 check value
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c); // FNV-1a 64 of "a"
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(Args::try_parse_from(["sharding", "client", "--calls", "many"]).is_err());
        assert!(Args::try_parse_from(["sharding", "server"]).is_err(), "--name is required");
    }
}
