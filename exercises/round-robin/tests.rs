use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::Parser;
use health::LiveNodes;
use microkit::PATIENCE;
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::server::RunningServer;
use registry::{MemoryRegistry, Node, Registered, Registry};
use round_robin::{SERVICE, start_node};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::rotation::{RoundRobin, WhenNoNode, never_started};
use crate::story::{failed, show_nodes};
use crate::{Args, run};

const TTL: Duration = Duration::from_secs(5);

/// A memory registry with `names` registered, and a client that sees them all.
async fn cluster(names: &[&str]) -> (Arc<dyn Registry>, Vec<Registered>, RoundRobin) {
    let (registry, nodes, _listed) = round_robin::memory_cluster(names, TTL).await;
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
    assert_eq!(first.to_string(), ": a failed, retried on b");
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
async fn calls_held<T>(channel: T, calls: usize, arrived: &mut mpsc::UnboundedReceiver<()>) -> usize
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
    eprintln!("measured: of {CALLS} calls, balance_list held {at_random}, p2c by load {by_load}");
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
    let (answer, node) = tokio::join!(client.say_hello("x"), start_node(&registry, "late", TTL));
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
    assert_eq!(status.message(), "no node of service \"greeter\" appeared within the call's 200ms");
}

#[tokio::test]
async fn no_node_is_unavailable_naming_the_service() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let client = RoundRobin::new(LiveNodes::watch(&registry, "billing").await.unwrap());
    let status = client.say_hello("x").await.err().unwrap();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(failed(&status), ": Unavailable: no node of service \"billing\" in the registry");
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
