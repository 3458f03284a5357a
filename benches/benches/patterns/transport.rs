//! transport: the transport example's `SayHello`, one handler, over its two transports,
//! compiled here from `examples/transport/` unchanged (the handler, both adapters, the
//! client side of the bus):
//!
//! - one call's p50 as a NATS service (async-nats's `service` module on a private
//!   nats-server: client → server → instance → server → client) vs over HTTP/2 (a tonic
//!   channel straight to the port). Reported, not judged: two different roads.
//! - the NATS service's throughput with two instances in its queue group vs one, under 64
//!   concurrent callers; each setup has a nats-server of its own, so the two never share a
//!   subject.

use std::time::Duration;

use bytes::Bytes;
use micro_benches::{Effort, Row, Target, latency_pair, throughput_pair};
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::greeter_server::GreeterServer;
use microkit::proto::greeter::{HelloReply, HelloRequest};
use microkit::server::RunningServer;
use microkit_testing::NatsServer;
use prost::Message;
use tonic::transport::Channel;

use ::transport::{bus, service};
use bus::{Answer, Bus};

/// Concurrent callers in a throughput round: enough to keep two instances busy.
const CALLERS: usize = 64;

pub async fn rows(effort: Effort) -> Vec<Row> {
    let greeter = GreeterServer::new(service::OverHttp2 { node: "http2".into() });
    let server = RunningServer::start(tonic::service::Routes::new(greeter)).await.unwrap();
    let channel = Channel::from_shared(server.url()).unwrap().connect().await.unwrap();
    let mut http2 = GreeterClient::new(channel);

    let (one_server, two_server) = (nats_server().await, nats_server().await);
    let one = vec![instance(&one_server, "one-1").await];
    let two = vec![instance(&two_server, "two-1").await, instance(&two_server, "two-2").await];
    let (to_one, to_two) = (client(&one_server).await, client(&two_server).await);

    let hello = || HelloRequest { name: "bench".into() };
    let payload = Bytes::from(hello().encode_to_vec());
    assert_eq!(call(&to_one, &payload).await, "one-1");
    let latency = latency_pair(
        effort,
        async || {
            http2.say_hello(hello()).await.unwrap();
        },
        async || {
            call(&to_one, &payload).await;
        },
    )
    .await;

    let per_round = (effort.messages_per_round as usize / 10).max(CALLERS);
    let throughput = throughput_pair(
        effort,
        async || round(&to_one, &payload, per_round).await,
        async || round(&to_two, &payload, per_round).await,
    )
    .await;
    let mut served = Vec::new();
    for instance in two {
        served.push(instance.stop().await.unwrap());
    }
    assert!(served.iter().all(|&n| n > 0), "both instances took calls: {served:?}");
    for instance in one {
        instance.stop().await.unwrap();
    }

    let per_second = |rate: f64| format!("{:.1} k/s", rate / 1e3);
    vec![
        Row::latency("transport: SayHello p50, NATS service vs HTTP/2", latency, Target::Report),
        Row::new(
            &format!("transport: NATS service, 2 instances vs 1 ({CALLERS} callers)"),
            per_second(throughput.raw),
            per_second(throughput.pattern),
            throughput.pattern / throughput.raw,
            Target::Report,
        )
        .with_spread(&throughput),
    ]
}

async fn nats_server() -> NatsServer {
    NatsServer::start().await.unwrap()
}

async fn client(server: &NatsServer) -> Bus {
    Bus::Nats(microkit_backend::connect(&server.url(), Default::default()).await.unwrap())
}

/// An instance on a connection of its own, as a separate process would have.
async fn instance(server: &NatsServer, node: &str) -> service::NatsInstance {
    service::serve_over_nats(&client(server).await, node).await.unwrap()
}

/// One call; the node that answered.
async fn call(bus: &Bus, payload: &Bytes) -> String {
    match bus.request(&format!("{}.{}", service::SERVICE, service::METHOD), payload.clone()).await {
        Ok(Answer::Reply(reply)) => HelloReply::decode(reply).unwrap().node,
        other => panic!("a call over NATS failed: {other:?}"),
    }
}

/// `total` calls from `CALLERS` concurrent callers; how many were answered.
async fn round(bus: &Bus, payload: &Bytes, total: usize) -> u64 {
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        let (bus, payload) = (bus.clone(), payload.clone());
        callers.spawn(async move {
            for _ in 0..total / CALLERS {
                call(&bus, &payload).await;
            }
            (total / CALLERS) as u64
        });
    }
    let answered = tokio::time::timeout(Duration::from_secs(60), callers.join_all()).await;
    answered.expect("a throughput round hung").into_iter().sum()
}
