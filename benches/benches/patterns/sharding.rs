//! Sharding: what choosing a node by the caller's `x-from-user` costs per call, and how many
//! users move when a node joins.
//!
//! The rendezvous hash and go-micro's crc32 modulo are the example's own
//! `examples/sharding/hashing.rs`, from the `sharding` package's library; the
//! router is a few lines of that example's `ShardRouter`, without its round-robin fallback.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use micro_benches::{Effort, Row, Target, latency_pair};

use crate::hashing::{crc32_modulo, moved_fraction, rendezvous};
use health::{Channels, LiveNodes};
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use registry::{MemoryRegistry, Node, Registration, Registry};
use tonic::Status;
use tonic::body::Body;
use tower::{Service, ServiceExt};

const SERVICE: &str = "greeter";
const USER_HEADER: &str = "x-from-user";

pub async fn rows(effort: Effort) -> Vec<Row> {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let mut running = Vec::new();
    for name in ["greeter-a", "greeter-b", "greeter-c"] {
        let server = microkit::greeter::serve(name).await.unwrap();
        let node = Node::new(SERVICE, name, server.addr());
        let ttl = Duration::from_secs(60);
        running.push((server, Registration::start(registry.clone(), node, ttl).await.unwrap()));
    }
    let live = LiveNodes::watch(&registry, SERVICE).await.unwrap();
    let ids = ["greeter-a", "greeter-b", "greeter-c"];
    live.wait_for_ids(&ids, Duration::from_secs(10)).await.unwrap();
    let three = live.current();

    // Raw: a channel to the node that ada's calls end up on anyway.
    let ada_node = rendezvous("ada", &three).unwrap();
    let channel = Channels::default().to(ada_node).unwrap();
    let mut raw = GreeterClient::new(channel);
    let mut sharded = GreeterClient::new(ShardRouter::new(live));
    let mut request = tonic::Request::new(HelloRequest { name: "ada".into() });
    request.metadata_mut().insert(USER_HEADER, "ada".parse().unwrap());
    let reply = sharded.say_hello(request).await.unwrap().into_inner();
    assert_eq!(reply.node, ada_node.id, "the router sends ada to ada's node");
    let unary = latency_pair(
        effort,
        async || {
            raw.say_hello(HelloRequest { name: "ada".into() }).await.unwrap();
        },
        async || {
            let mut request = tonic::Request::new(HelloRequest { name: "ada".into() });
            request.metadata_mut().insert(USER_HEADER, "ada".parse().unwrap());
            sharded.say_hello(request).await.unwrap();
        },
    )
    .await;

    let users: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    let (round_robin, hashed) = pick_costs(effort, &users, &three);
    let mut four = three.clone();
    four.push(Node::new(SERVICE, "greeter-d", "127.0.0.1:9"));
    let ideal = 1.0 / four.len() as f64;
    let by_rendezvous = moved_fraction(&users, &three, &four, rendezvous);
    let by_modulo = moved_fraction(&users, &three, &four, crc32_modulo);

    vec![
        Row::latency("sharding: unary p50 via x-from-user router vs raw", unary, Target::Report),
        Row::new(
            "sharding: one pick, rendezvous vs round robin",
            format!("{round_robin:.0} ns"),
            format!("{hashed:.0} ns"),
            hashed / round_robin,
            Target::Report,
        ),
        Row::new(
            "sharding: moved by a 4th node, rendezvous / 1/N",
            percent(ideal),
            percent(by_rendezvous),
            by_rendezvous / ideal,
            Target::AtMost(1.2),
        ),
        Row::new(
            "sharding: moved by a 4th node, crc32 modulo / 1/N",
            percent(ideal),
            percent(by_modulo),
            by_modulo / ideal,
            Target::Report,
        ),
    ]
}

fn percent(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

/// Nanoseconds per pick over three nodes: a round-robin turn vs a rendezvous hash, in
/// alternating rounds, medians. (What a call pays for its affinity, without the call.)
fn pick_costs(effort: Effort, users: &[String], nodes: &[Node]) -> (f64, f64) {
    let turn = AtomicUsize::new(0);
    let round_robin = |_: &str| {
        black_box(&nodes[turn.fetch_add(1, Ordering::Relaxed) % nodes.len()]);
    };
    let hashed = |user: &str| {
        black_box(rendezvous(user, nodes));
    };
    let time = |pick: &dyn Fn(&str)| {
        let start = Instant::now();
        for user in users {
            pick(black_box(user));
        }
        start.elapsed().as_nanos() as f64 / users.len() as f64
    };
    let (mut raw, mut pattern) = (Vec::new(), Vec::new());
    for round in 0..effort.rounds {
        if round % 2 == 0 {
            raw.push(time(&round_robin));
            pattern.push(time(&hashed));
        } else {
            pattern.push(time(&hashed));
            raw.push(time(&round_robin));
        }
    }
    raw.sort_by(f64::total_cmp);
    pattern.sort_by(f64::total_cmp);
    (raw[raw.len() / 2], pattern[pattern.len() / 2])
}

/// The example's `ShardRouter`, header required: the user's node, by rendezvous.
#[derive(Clone)]
struct ShardRouter {
    nodes: Arc<LiveNodes>,
    channels: Channels,
}

impl ShardRouter {
    fn new(nodes: LiveNodes) -> Self {
        ShardRouter { nodes: Arc::new(nodes), channels: Channels::default() }
    }

    fn pick(&self, user: Option<&str>) -> Result<Node, Status> {
        let nodes = self.nodes.current();
        let chosen = user.and_then(|user| rendezvous(user, &nodes));
        chosen.cloned().ok_or_else(|| Status::unavailable("no user, or no node"))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<http::Request<Body>> for ShardRouter {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let user = request.headers().get(USER_HEADER).and_then(|v| v.to_str().ok());
        let channel = self.pick(user).and_then(|node| self.channels.to(&node));
        Box::pin(async move { Ok(channel?.oneshot(request).await?) })
    }
}
