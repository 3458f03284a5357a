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

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use microkit::PATIENCE;
use microkit::backend::BackendArgs;
use microkit::discovery::{Channels, LiveNodes};
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::{GreetingsRequest, HelloReply, HelloRequest};
use microkit::registry::{Node, Registry};
use tokio::time::Instant;
use tonic::{Code, Status, Streaming};

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
    /// What a call does when the service has no node: gRPC's two answers.
    when_none: WhenNoNode,
    /// Each call's deadline, retry included; sent to the node as `grpc-timeout`.
    deadline: Duration,
}

/// gRPC's two answers to "no node to send this call to": fail fast, its default, or wait
/// for ready: wait, up to the call's deadline, for a node to appear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WhenNoNode {
    FailFast,
    WaitForReady,
}

impl RoundRobin {
    fn new(nodes: LiveNodes) -> Self {
        RoundRobin {
            nodes,
            next: AtomicUsize::new(0),
            channels: Channels::default(),
            when_none: WhenNoNode::FailFast,
            deadline: PATIENCE,
        }
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

    /// [`RoundRobin::pick`], but under wait-for-ready an empty list is waited out, until
    /// a node appears or the call's deadline passes.
    async fn pick_ready(&self, deadline: Instant) -> Result<Node, Status> {
        if self.when_none == WhenNoNode::WaitForReady {
            let mut nodes = self.nodes.subscribe();
            let appeared = tokio::time::timeout_at(deadline, nodes.wait_for(|n| !n.is_empty()));
            if appeared.await.is_err() {
                let (service, waited) = (self.nodes.service(), self.deadline);
                return Err(Status::deadline_exceeded(format!(
                    "no node of service \"{service}\" appeared within the call's {waited:?}"
                )));
            }
        }
        self.pick()
    }

    /// Calls the next node; if the call provably never reached it, tries the one after
    /// it, once. (Even so, only because SayHello can run twice without harm.)
    async fn say_hello(&self, name: &str) -> Result<Served, Status> {
        let deadline = Instant::now() + self.deadline;
        let first = self.pick_ready(deadline).await?;
        let failure = match self.call(&first, name, deadline).await {
            Ok(()) => return Ok(Served { node: first.id, retried_after: None }),
            Err(status) if never_started(&status) => status,
            Err(status) => return Err(status),
        };
        tracing::info!(node = %first.id, "unreachable ({failure}); retrying on the next node");
        let second = self.pick()?;
        if second.id == first.id {
            return Err(failure); // the only node left is the one that failed
        }
        self.call(&second, name, deadline).await?;
        Ok(Served { node: second.id, retried_after: Some(first.id) })
    }

    async fn call(&self, node: &Node, name: &str, deadline: Instant) -> Result<(), Status> {
        let mut client = GreeterClient::new(self.channels.to(node)?);
        let mut request = tonic::Request::new(HelloRequest { name: name.to_owned() });
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Status::deadline_exceeded("the call's deadline passed before it was sent"));
        }
        request.set_timeout(left);
        let reply = client.say_hello(request).await?;
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

/// True when the call provably never reached a handler, so another node may take it:
/// `Unavailable` (tonic's answer for a refused connection and for a stream the server
/// refused, gRPC's code for "retry just this call"), or, among the status's causes, a
/// connect error or a request hyper cancelled before sending it (its `is_canceled`: a
/// connection that closed while the request still waited in the client's queue).
///
/// Not `Unknown` or `Cancelled` as such: tonic gives those to a connection cut mid-call,
/// gRPC's status table to a handler that failed or was cancelled, and a server that cuts a
/// call it has already run (waitgroup's drain deadline) answers `Cancelled`. The call may
/// have done its work there, and a retry would do it twice.
fn never_started(status: &Status) -> bool {
    if status.code() == Code::Unavailable {
        return true;
    }
    let mut cause = std::error::Error::source(status);
    while let Some(error) = cause {
        let unsent = error.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_canceled);
        if unsent || error.is::<tonic::ConnectError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// One process, the whole story: three nodes, one leaves, one joins, one crashes.
async fn demo(registry: &Arc<dyn Registry>, ttl: Duration) -> anyhow::Result<()> {
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
        Err(status) => println!("call (fail fast){}", failed(&status)),
    }

    // The same empty list under wait-for-ready: the call is polled first, so it is already
    // waiting when greeter-e registers, and greeter-e answers it.
    client.when_none = WhenNoNode::WaitForReady;
    let (answer, node) =
        tokio::join!(client.say_hello("ada"), start_node(registry, "greeter-e", ttl));
    println!("call (wait for ready), while greeter-e joins{}", served(&answer?));
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
        /// With no node of the service, wait for one (up to the call's deadline) instead
        /// of failing at once, gRPC's default.
        #[arg(long)]
        wait_for_ready: bool,
        /// Each call's deadline, its wait for a node and its retry included.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
        deadline_ms: u64,
    },
}

/// The `client` role: call in turn, print who answered and every change of the node list.
async fn client(
    registry: &Arc<dyn Registry>,
    calls: u64,
    interval: Duration,
    when_none: WhenNoNode,
    deadline: Duration,
) -> anyhow::Result<()> {
    let nodes = roles::watch_healthy_service(registry).await?;
    let mut client = RoundRobin { when_none, deadline, ..RoundRobin::new(nodes) };
    if when_none == WhenNoNode::WaitForReady && client.nodes.current().is_empty() {
        println!("no node of {SERVICE} yet: each call waits up to {deadline:?} for one");
    }
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
                Role::Client { calls, interval_ms, wait_for_ready, deadline_ms } => {
                    let when_none = match wait_for_ready {
                        true => WhenNoNode::WaitForReady,
                        false => WhenNoNode::FailFast,
                    };
                    let (interval, deadline) =
                        (Duration::from_millis(interval_ms), Duration::from_millis(deadline_ms));
                    client(&registry, calls, interval, when_none, deadline).await
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
    use tokio::sync::mpsc;
    use tonic::transport::{Channel, Endpoint};

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
        assert!(never_started(&status), "{status:?}");
    }

    /// A Greeter node that runs every call, counts it in `ran`, then answers `code` in
    /// place of the reply: a handler that failed, or a call the server cut after it ran.
    async fn failing_after_the_handler(code: Code, ran: Arc<AtomicUsize>) -> RunningServer {
        let greeter = microkit::greeter::HelloGreeter::new("a").into_service();
        let fail = tower::util::MapResponseLayer::new(move |_: http::Response<_>| {
            ran.fetch_add(1, Ordering::SeqCst);
            Status::new(code, "cut after the handler ran").into_http::<tonic::body::Body>()
        });
        RunningServer::start_with(move |incoming, stop| {
            tonic::transport::Server::builder()
                .layer(fail)
                .add_service(greeter)
                .serve_with_incoming_shutdown(incoming, stop)
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_call_that_reached_a_handler_is_not_retried_whatever_its_status() {
        for code in [Code::Unknown, Code::Cancelled] {
            let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
            let ran = Arc::new(AtomicUsize::new(0));
            let a = failing_after_the_handler(code, ran.clone()).await;
            registry.register(&Node::new(SERVICE, "a", a.addr()), TTL).await.unwrap();
            let _b = start_node(&registry, "b", TTL).await.unwrap();
            // No health watch: the failing node answers every call, health's too, with `code`.
            let client = RoundRobin::new(LiveNodes::watch(&registry, SERVICE).await.unwrap());
            client.nodes.wait_for_ids(&["a", "b"], PATIENCE).await.unwrap();

            let status = client.say_hello("x").await.err().expect("a's answer, not b's");
            assert_eq!(status.code(), code, "{status:?}");
            assert_eq!(ran.load(Ordering::SeqCst), 1, "the handler ran once, on a only");
            // No turn went to a retry: the next call is b's.
            assert_eq!(client.say_hello("x").await.unwrap().node, "b");
        }
    }

    /// A Greeter node that reports each call's arrival on `arrived` and never answers it:
    /// every call to it stays in flight, the load a balancer should steer around.
    async fn holding_every_call(arrived: mpsc::UnboundedSender<()>) -> RunningServer {
        let greeter = microkit::greeter::HelloGreeter::new("slow").into_service();
        let hold = tower::util::MapFutureLayer::new(move |answer| {
            let _ = arrived.send(());
            async move {
                std::future::pending::<()>().await;
                answer.await
            }
        });
        RunningServer::start_with(move |incoming, stop| {
            tonic::transport::Server::builder()
                .layer(hold)
                .add_service(greeter)
                .serve_with_incoming_shutdown(incoming, stop)
        })
        .await
        .unwrap()
    }

    /// Sends `calls` calls one after the other through `channel` to a holding node and a
    /// fine one; answers how many the holding node got (and holds).
    async fn calls_held<T>(
        channel: T,
        calls: usize,
        arrived: &mut mpsc::UnboundedReceiver<()>,
    ) -> usize
    where
        T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
        T::Future: Send,
        T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
        T::Error: Into<tonic::codegen::StdError>,
    {
        let mut held = Vec::new();
        for _ in 0..calls {
            let mut client = GreeterClient::new(channel.clone());
            let mut call = tokio::spawn(async move {
                client.say_hello(HelloRequest::default()).await.map(|r| r.into_inner().node)
            });
            let turn = tokio::time::timeout(PATIENCE, async {
                tokio::select! {
                    Some(()) = arrived.recv() => None,
                    answered = &mut call => Some(answered.unwrap().unwrap()),
                }
            });
            match turn.await.expect("each call is answered or held") {
                Some(node) => assert_eq!(node, "fine"),
                None => held.push(call),
            }
        }
        held.iter().for_each(tokio::task::JoinHandle::abort);
        held.len()
    }

    /// tonic's `balance_list` runs tower's p2c, but its connections report a load of 0, so
    /// p2c picks at random: about half the calls go to a node that holds them all. Over
    /// endpoints that count their calls in flight, p2c keeps off it after the first.
    #[tokio::test]
    async fn p2c_is_load_aware_only_over_endpoints_that_measure_their_load() {
        use tower::balance::p2c::Balance;
        use tower::buffer::Buffer;
        use tower::discover::Change;
        use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
        const CALLS: usize = 30;

        let (report, mut arrived) = mpsc::unbounded_channel();
        let slow = holding_every_call(report).await;
        let fine = microkit::greeter::serve("fine").await.unwrap();
        let endpoint = |server: &RunningServer| Endpoint::from_shared(server.url()).unwrap();

        let tonic_balanced = Channel::balance_list([endpoint(&slow), endpoint(&fine)].into_iter());
        let at_random = calls_held(tonic_balanced, CALLS, &mut arrived).await;
        // Binomial(30, 1/2): 1 or fewer happens about once in 30 million runs.
        assert!(at_random >= 2, "tonic's balancer held {at_random} of {CALLS} calls");

        // Each endpoint counts its calls in flight; p2c sends to the less busy of two.
        let endpoints = [("slow", &slow), ("fine", &fine)].map(|(key, server)| {
            Ok::<_, std::convert::Infallible>(Change::Insert(key, endpoint(server).connect_lazy()))
        });
        let discover = PendingRequestsDiscover::new(
            futures::stream::iter(endpoints),
            CompleteOnResponse::default(),
        );
        let load_aware = Buffer::new(Balance::new(discover), 64);
        let by_load = calls_held(load_aware, CALLS, &mut arrived).await;
        eprintln!(
            "measured: of {CALLS} calls, balance_list held {at_random}, p2c by load {by_load}"
        );
        assert!(by_load <= 1, "at most the first tie goes to the busy node: {by_load}");
    }

    #[test]
    fn only_what_never_reached_a_handler_counts_as_never_started() {
        assert!(never_started(&Status::unavailable("connection refused")));
        for code in [Code::Unknown, Code::Cancelled, Code::DeadlineExceeded, Code::Internal] {
            assert!(!never_started(&Status::new(code, "")), "{code:?}");
        }
    }

    #[tokio::test]
    async fn with_no_node_fail_fast_fails_at_once_and_wait_for_ready_waits_for_one() {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let mut client = RoundRobin::new(LiveNodes::watch(&registry, SERVICE).await.unwrap());
        let status = client.say_hello("x").await.err().unwrap();
        assert_eq!(status.code(), Code::Unavailable, "gRPC's default: fail fast");

        client.when_none = WhenNoNode::WaitForReady;
        // The call is polled first: it waits, then the node registers and answers it.
        let (answer, node) =
            tokio::join!(client.say_hello("x"), start_node(&registry, "late", TTL));
        assert_eq!(answer.unwrap().node, "late");
        node.unwrap().stop().await.unwrap();
    }

    #[tokio::test]
    async fn wait_for_ready_gives_up_at_the_calls_deadline() {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let nodes = LiveNodes::watch(&registry, SERVICE).await.unwrap();
        let deadline = Duration::from_millis(200);
        let client =
            RoundRobin { when_none: WhenNoNode::WaitForReady, deadline, ..RoundRobin::new(nodes) };
        let started = Instant::now();
        let status = client.say_hello("x").await.err().unwrap();
        assert!(started.elapsed() >= deadline, "it waited: {:?}", started.elapsed());
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(
            status.message(),
            "no node of service \"greeter\" appeared within the call's 200ms"
        );
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
        let zero = ["round-robin", "client", "--deadline-ms", "0"];
        assert!(Args::try_parse_from(zero).is_err(), "a call needs some time");
        assert!(Args::try_parse_from(["round-robin", "server"]).is_err(), "--name is required");
    }
}
