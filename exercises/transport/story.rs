//! The one-process story: two nodes, each serving the same handler over HTTP/2 and over
//! NATS, and what changes with the transport: finding, balancing, refusing, counting, dying.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use health::{Channels, LiveNodes};
use microkit::PATIENCE;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::greeter_server::GreeterServer;
use microkit::proto::greeter::{HelloReply, HelloRequest};
use microkit::server::RunningServer;
use microkit_backend::Backend;
use prost::Message;
use registry::Registered;
use registry::Registry;
use tonic::Code;

use crate::bus::{
    self, Answer, Bus, CallError, ERROR_CODE_HEADER, ERROR_HEADER, Info, Ping, Stats,
};
use crate::memory::MemoryBus;
use crate::service::{METHOD, NatsInstance, OverHttp2, SERVICE, VERSION, serve_over_nats};

/// The two nodes; each serves both transports.
const NODES: [&str; 2] = ["greeter-1", "greeter-2"];
/// Enough calls that a random queue-group choice gives both instances a share (all 32 to one
/// has a chance of 2 in 4 billion).
pub const CALLS: usize = 32;
/// A registration's time to live: how long a crashed node stays listed.
pub const TTL: Duration = Duration::from_secs(10);

/// What the run saw, for the tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Replies per node, over HTTP/2 (the client's round robin) and over NATS (the queue group).
    pub http2: BTreeMap<String, usize>,
    pub nats: BTreeMap<String, usize>,
    /// Over NATS, after greeter-2 stopped.
    pub after_stop: BTreeMap<String, usize>,
    /// `$SRV.STATS`, summed over the instances: requests and errors of `SayHello`.
    pub stats: (u64, u64),
    /// The calls each NATS instance says it served, as it stopped.
    pub served: u64,
    /// Calls that ended other than the story says they must.
    pub lost: usize,
}

/// A node: the same handler on both transports.
struct Node {
    grpc: Registered,
    nats: NatsInstance,
}

async fn start_node(registry: &Arc<dyn Registry>, bus: &Bus, id: &str) -> anyhow::Result<Node> {
    let routes = tonic::service::Routes::new(GreeterServer::new(OverHttp2 { node: id.into() }));
    let server = RunningServer::start(routes).await?;
    let grpc = Registered::new(registry, server, SERVICE, id, TTL).await?;
    Ok(Node { grpc, nats: serve_over_nats(bus, id).await? })
}

/// The story, on whichever backend: what it printed, counted.
pub async fn demo(backend: &Backend) -> anyhow::Result<Tally> {
    let registry = registry::on(backend);
    let memory = MemoryBus::new();
    let mut nodes = Vec::new();
    for id in NODES {
        // Each node its own NATS connection, as separate processes would have.
        nodes.push(start_node(&registry, &Bus::connect(backend, &memory).await?, id).await?);
    }
    let bus = Bus::connect(backend, &memory).await?;
    let mut tally = Tally::default();
    println!("{METHOD}: one handler, served by {} over two transports", NODES.join(" and "));
    println!("  HTTP/2: gRPC on a port of each node's own, listed in the registry");
    println!("  NATS:   service {SERVICE} {VERSION}, subject {SERVICE}.{METHOD}, no port at all");

    println!("finding an instance");
    let live = LiveNodes::watch(&registry, SERVICE).await?;
    live.wait_for_ids(&NODES, PATIENCE).await?;
    let listed: Vec<String> = live.current().into_iter().map(|n| n.id).collect();
    println!(
        "  HTTP/2: the registry lists {} (each kept by heartbeats, TTL {TTL:?})",
        listed.join(", ")
    );
    let pings: Vec<Ping> = bus::parse_all(bus.gather(&format!("$SRV.PING.{SERVICE}")).await?);
    let answered: BTreeSet<String> = pings.iter().map(bus::node_of).collect();
    let answered = answered.into_iter().collect::<Vec<_>>().join(", ");
    println!("  NATS:   $SRV.PING.{SERVICE}: every instance answers for itself: {answered}");
    let infos: Vec<Info> = bus::parse_all(bus.gather(&format!("$SRV.INFO.{SERVICE}")).await?);
    let endpoints: BTreeSet<String> = infos
        .iter()
        .flat_map(|info| &info.endpoints)
        .map(|e| format!("endpoint {} on {}, queue group {}", e.name, e.subject, e.queue_group))
        .collect();
    for endpoint in endpoints {
        println!("  NATS:   $SRV.INFO.{SERVICE}: {endpoint}, from {} instances", infos.len());
    }

    println!("balancing {CALLS} calls");
    let channels = Channels::default();
    let ada = HelloRequest { name: "ada".into() };
    for turn in 0..CALLS {
        let current = live.current();
        let node = &current[turn % current.len()];
        let reply = GreeterClient::new(channels.to(node)?).say_hello(ada.clone()).await?;
        *tally.http2.entry(reply.into_inner().node).or_default() += 1;
    }
    println!(
        "  HTTP/2: the client's round robin over the registry's list: {}",
        counts(&tally.http2)
    );
    tally.lost += call_over_nats(&bus, CALLS, &mut tally.nats).await?;
    let share = if tally.nats.len() == NODES.len() { "each took a share" } else { "NOT shared" };
    let answered = tally.nats.values().sum::<usize>();
    println!(
        "  NATS:   the queue group, in the server; the client names only the subject: {answered} answered, {share}"
    );

    println!("refusing a call (an empty name)");
    let empty = HelloRequest { name: String::new() };
    let mut client = GreeterClient::new(channels.to(&live.current()[0])?);
    match client.say_hello(empty.clone()).await {
        Err(status) => println!(
            "  HTTP/2: in the trailers: grpc-status {:?}, grpc-message {:?}",
            status.code(),
            status.message()
        ),
        Ok(_) => tally.lost += 1,
    }
    let subject = format!("{SERVICE}.{METHOD}");
    match bus.request(&subject, empty.encode_to_vec().into()).await {
        Ok(Answer::ServiceError { code, description }) => {
            println!(
                "  NATS:   in the reply's headers: {ERROR_CODE_HEADER} {code}, {ERROR_HEADER} {description:?}"
            )
        }
        _ => tally.lost += 1,
    }

    println!("counting calls");
    let stats: Vec<Stats> = bus::parse_all(bus.gather(&format!("$SRV.STATS.{SERVICE}")).await?);
    for endpoint in stats.iter().flat_map(|s| &s.endpoints).filter(|e| e.name == METHOD) {
        tally.stats.0 += endpoint.num_requests;
        tally.stats.1 += endpoint.num_errors;
    }
    let (requests, errors) = tally.stats;
    println!(
        "  NATS:   $SRV.STATS.{SERVICE}, summed over {} instances: {METHOD} {requests} requests, {errors} of them refused",
        stats.len()
    );
    println!("  HTTP/2: nothing counts calls unless a layer is added (see the wrapper example)");

    println!("losing an instance");
    let mut nodes = nodes.into_iter();
    let (one, two) = (nodes.next().context("node 1")?, nodes.next().context("node 2")?);
    let two_listed = live.current()[1].clone();
    two.grpc.crash().await;
    // A client that picks it from the registry dials it anew, and finds nobody there.
    let fresh = Channels::default().to(&two_listed)?;
    match GreeterClient::new(fresh).say_hello(ada.clone()).await {
        Err(status) if status.code() == Code::Unavailable => println!(
            "  HTTP/2: greeter-2 crashes: still listed until its TTL runs out, and a call to it gets {:?}",
            status.code()
        ),
        other => {
            tracing::error!(?other, "a call to a crashed node did not fail with Unavailable");
            tally.lost += 1;
        }
    }
    tally.served += two.nats.stop().await?;
    tally.lost += call_over_nats(&bus, CALLS / 4, &mut tally.after_stop).await?;
    println!(
        "  NATS:   greeter-2 stops: the queue group routes around it: {}",
        counts(&tally.after_stop)
    );
    tally.served += one.nats.stop().await?;
    match bus.request(&subject, ada.encode_to_vec().into()).await {
        Err(CallError::NoResponders) => {
            println!(
                "  NATS:   greeter-1 stops too: the next call gets \"no responders\" at once, from the server"
            )
        }
        _ => tally.lost += 1,
    }
    one.grpc.stop().await?;
    println!("lost: {}", tally.lost);
    Ok(tally)
}

/// `count` calls over NATS, the replies counted per node; returns how many got no reply.
async fn call_over_nats(
    bus: &Bus,
    count: usize,
    by_node: &mut BTreeMap<String, usize>,
) -> anyhow::Result<usize> {
    let payload = Bytes::from(HelloRequest { name: "ada".into() }.encode_to_vec());
    let mut lost = 0;
    for _ in 0..count {
        match bus.request(&format!("{SERVICE}.{METHOD}"), payload.clone()).await {
            Ok(Answer::Reply(reply)) => {
                *by_node.entry(HelloReply::decode(reply)?.node).or_default() += 1
            }
            other => {
                tracing::error!(?other, "a call over NATS got no reply");
                lost += 1;
            }
        }
    }
    Ok(lost)
}

fn counts(by_node: &BTreeMap<String, usize>) -> String {
    by_node.iter().map(|(node, n)| format!("{node} {n}")).collect::<Vec<_>>().join(", ")
}
