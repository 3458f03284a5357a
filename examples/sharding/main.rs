//! # sharding: the same user always reaches the same node
//!
//! Request affinity: the client reads the `x-from-user` header (gRPC keys are lower case)
//! in [`ShardRouter`] below, a tower service under the generated client, and picks the
//! node by rendezvous hashing (`rendezvous` in `hashing.rs` beside this file): every node
//! scores the user, the highest score wins. Adding a node moves only the users the new node
//! now wins, about 1/N of them. A call without the header has no affinity to keep and goes
//! round robin.
//!
//! go-micro's example picked `crc32(user) % number of nodes`: when the number of nodes
//! changed, most users moved, and whatever a node held for them (a cache, a session) was lost.
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
//! Prints `tests/golden/sharding.txt`; explained in `notes/sharding.md`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use microkit::PATIENCE;
use microkit::discovery::{Channels, LiveNodes};
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::registry::{Node, Registry};
use tonic::Status;
use tonic::body::Body;
use tonic::metadata::AsciiMetadataValue;
use tower::{Service, ServiceExt};

// Choosing a node for a user, the heart of the lesson, is in hashing.rs beside this file.
mod hashing;
use hashing::{crc32_modulo, moved_fraction, rendezvous};

// The server role and the client's loop, shared with the round-robin example.
#[path = "../common/greeter_roles.rs"]
mod roles;
use roles::{SERVICE, start_node};

/// The request header that carries the user: what the affinity is keyed on.
const USER_HEADER: &str = "x-from-user";

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
        // A header that is there but unreadable is refused: taken as no header, the call
        // would go round robin and its affinity would be lost without a word.
        let user = match request.headers().get(USER_HEADER) {
            None => Ok(None),
            Some(value) => value.to_str().map(Some).map_err(|e| {
                Status::invalid_argument(format!("{USER_HEADER} is not printable ASCII: {e}"))
            }),
        };
        let channel = user.and_then(|user| self.pick(user)).and_then(|n| self.channels.to(&n));
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
        request.metadata_mut().insert(USER_HEADER, user_value(user)?);
    }
    Ok(client.say_hello(request).await?.into_inner().node)
}

/// `user` as the header's value. gRPC metadata values are printable ASCII, the only bytes a
/// receiver can read back as text; anything else (`é`, a tab) is refused naming the rule.
fn user_value(user: &str) -> Result<AsciiMetadataValue, Status> {
    let refused = || format!("{USER_HEADER} must be printable ASCII, not {user:?}");
    if !user.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(Status::invalid_argument(refused()));
    }
    user.parse().map_err(|e| Status::invalid_argument(format!("{}: {e}", refused())))
}

/// A node's time to live in the registry.
const TTL: Duration = Duration::from_secs(3);
/// The users of the printed table.
const USERS: [&str; 8] = ["ada", "bo", "carol", "dan", "eve", "finn", "gus", "hana"];
/// How many users the moved fractions are measured over.
const POPULATION: usize = 10_000;

/// One process, the whole story: three nodes, eight users, then a fourth node joins.
async fn demo(registry: &Arc<dyn Registry>) -> anyhow::Result<()> {
    let mut running = Vec::new();
    for name in ["greeter-a", "greeter-b", "greeter-c"] {
        running.push(start_node(registry, name, TTL).await?);
    }
    let nodes = LiveNodes::watch(registry, SERVICE).await?;
    nodes.wait_for_ids(&["greeter-a", "greeter-b", "greeter-c"], PATIENCE).await?;
    let router = ShardRouter::new(nodes);
    let mut client = GreeterClient::new(router.clone());
    let three = router.nodes.current();
    let ids: Vec<String> = three.iter().map(|n| n.id.clone()).collect();
    println!("nodes of {SERVICE}: {}", ids.join(", "));

    println!("user   node (3 calls each)");
    let mut before = Vec::new();
    for user in USERS {
        let node = same_node_every_time(&mut client, user, 3).await?;
        println!("{user:<6} {node}");
        before.push(node);
    }

    running.push(start_node(registry, "greeter-d", TTL).await?);
    let all = ["greeter-a", "greeter-b", "greeter-c", "greeter-d"];
    router.nodes.wait_for_ids(&all, PATIENCE).await?;
    println!("greeter-d joined");
    println!("user   node (3 calls each)");
    let mut moved = 0;
    for (user, old) in USERS.iter().zip(&before) {
        let node = same_node_every_time(&mut client, user, 3).await?;
        if &node == old {
            println!("{user:<6} {node}");
        } else {
            moved += 1;
            println!("{user:<6} {node} (moved from {old})");
        }
    }
    println!("moved: {moved} of {} users", USERS.len());

    let four = router.nodes.current();
    let population: Vec<String> = (0..POPULATION).map(|i| format!("user-{i}")).collect();
    println!("of {POPULATION} users, adding a 4th node moves:");
    let rendezvous_moved = moved_fraction(&population, &three, &four, rendezvous);
    println!("  rendezvous hashing {:5.1}%  (ideal: 1/4 = 25.0%)", rendezvous_moved * 100.0);
    let modulo_moved = moved_fraction(&population, &three, &four, crc32_modulo);
    println!("  crc32 modulo       {:5.1}%  (go-micro's choice)", modulo_moved * 100.0);

    let mut turns = Vec::new();
    for _ in 0..4 {
        turns.push(hello(&mut client, None).await?);
    }
    println!("no {USER_HEADER} header, 4 calls: {}", turns.join(" "));

    for node in running {
        node.stop().await?;
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

// ---- The command line and the roles ------------------------------------------------------

/// `--backend`, and the role to run (none: the whole story, in this one process).
type Args = microkit::backend::Cli<Role>;

#[derive(Subcommand, Debug)]
enum Role {
    /// Serve the greeter and stay registered until stopped (needs NATS_URL).
    Server(roles::ServerArgs),
    /// Call the service as one user, or without the header (needs NATS_URL).
    Client {
        /// Sent as x-from-user (printable ASCII); without it, calls go round robin.
        #[arg(long, value_parser = parse_user)]
        user: Option<String>,
        /// How many calls to make; 0 means until stopped.
        #[arg(long, default_value_t = 5)]
        calls: u64,
        /// Pause between calls.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
    },
}

impl microkit::backend::Roles for Role {
    const ABOUT: &'static str =
        "Request affinity: x-from-user picks the node by rendezvous hashing";
}

/// `--user`: refused at once if it cannot travel as the header.
fn parse_user(user: &str) -> Result<String, String> {
    user_value(user).map(|_| user.to_owned()).map_err(|status| status.message().to_owned())
}

/// The `client` role: every call as `user` (or without the header), and who answered.
async fn client(
    registry: &Arc<dyn Registry>,
    user: Option<&str>,
    calls: u64,
    interval: Duration,
) -> anyhow::Result<()> {
    let mut client = GreeterClient::new(ShardRouter::new(roles::watch_service(registry).await?));
    let who = user.map_or("no header".to_owned(), |u| format!("{USER_HEADER}: {u}"));
    roles::call_until_stopped(calls, interval, async |_| match hello(&mut client, user).await {
        Ok(node) => Ok(format!(" ({who}): {node}")),
        Err(status) => Err(format!(" ({who}): {:?}: {}", status.code(), status.message())),
    })
    .await?;
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let backend = args.backend.connect().await?;
    let registry = backend.registry();
    match args.role {
        None => demo(&registry).await,
        Some(role) => {
            backend.require_shared_nats("the server and client roles")?;
            match role {
                Role::Server(server) => {
                    roles::serve(&registry, &server.name, server.listen, TTL).await
                }
                Role::Client { user, calls, interval_ms } => {
                    let interval = Duration::from_millis(interval_ms);
                    client(&registry, user.as_deref(), calls, interval).await
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
    use crate::hashing::{crc32, fnv1a};
    use clap::Parser;
    use microkit::registered::Registered;
    use microkit::registry::MemoryRegistry;
    use microkit::server::RunningServer;

    fn nodes(ids: &[&str]) -> Vec<Node> {
        ids.iter().map(|id| Node::new(SERVICE, id, "127.0.0.1:1")).collect()
    }

    fn population() -> Vec<String> {
        (0..POPULATION).map(|i| format!("user-{i}")).collect()
    }

    /// A memory registry with `names` registered, and a router that sees them all.
    async fn cluster(
        names: &[&str],
    ) -> (Arc<dyn Registry>, Vec<Registered<RunningServer>>, ShardRouter) {
        let (registry, running, live) = roles::memory_cluster(names, TTL).await;
        (registry, running, ShardRouter::new(live))
    }

    #[tokio::test]
    async fn every_user_reaches_one_node_over_many_calls() {
        let (_registry, _running, router) = cluster(&["n1", "n2", "n3"]).await;
        let mut client = GreeterClient::new(router);
        let mut used = std::collections::BTreeSet::new();
        for user in (0..30).map(|i| format!("u{i}")) {
            used.insert(same_node_every_time(&mut client, &user, 10).await.unwrap());
        }
        assert_eq!(used.len(), 3, "30 users spread over all three nodes");
    }

    #[tokio::test]
    async fn a_joined_node_takes_over_only_the_users_it_wins() {
        let (registry, mut running, router) = cluster(&["n1", "n2", "n3"]).await;
        let mut client = GreeterClient::new(router.clone());
        let users: Vec<String> = (0..40).map(|i| format!("u{i}")).collect();
        let mut before = Vec::new();
        for user in &users {
            before.push(hello(&mut client, Some(user)).await.unwrap());
        }
        running.push(start_node(&registry, "n4", TTL).await.unwrap());
        router.nodes.wait_for_ids(&["n1", "n2", "n3", "n4"], PATIENCE).await.unwrap();
        let mut moved = 0;
        for (user, old) in users.iter().zip(&before) {
            let now = hello(&mut client, Some(user)).await.unwrap();
            if &now != old {
                assert_eq!(now, "n4", "{user} moved between old nodes");
                moved += 1;
            }
        }
        assert!((1..20).contains(&moved), "about a quarter moved, not {moved} of 40");
    }

    #[tokio::test]
    async fn without_the_header_calls_go_round_robin() {
        let (_registry, _running, router) = cluster(&["n1", "n2", "n3"]).await;
        let mut client = GreeterClient::new(router);
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

    #[tokio::test]
    async fn a_user_that_is_not_printable_ascii_is_refused_not_sent_round_robin() {
        let (_registry, _running, router) = cluster(&["n1", "n2", "n3"]).await;
        let mut client = GreeterClient::new(router.clone());
        for user in ["é", "tab\there", "bell\u{7}"] {
            let status = hello(&mut client, Some(user)).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{user:?}: {status:?}");
            assert!(status.message().contains("printable ASCII"), "{}", status.message());
        }
        // The router itself never treats an unreadable header as no header.
        let mut request = http::Request::new(Body::empty());
        let value = http::HeaderValue::from_bytes("é".as_bytes()).unwrap();
        request.headers_mut().insert(USER_HEADER, value);
        let error = router.clone().oneshot(request).await.unwrap_err();
        let status = error.downcast_ref::<Status>().expect("a Status");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
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

    #[tokio::test]
    async fn roles_refuse_to_run_without_a_shared_nats() {
        let args = Args::parse_from(["sharding", "--backend", "memory", "server", "--name", "a"]);
        let error = run(args).await.unwrap_err().to_string();
        assert!(error.contains("NATS_URL"), "{error}");
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(Args::try_parse_from(["sharding", "client", "--calls", "many"]).is_err());
        assert!(Args::try_parse_from(["sharding", "server"]).is_err(), "--name is required");
        let error = Args::try_parse_from(["sharding", "client", "--user", "é"]).unwrap_err();
        assert!(error.to_string().contains("printable ASCII"), "{error}");
    }
}
