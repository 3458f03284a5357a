//! The api gateway (`examples/api`): a unary call as HTTP/JSON through the gateway, which
//! converts it to protobuf, calls the node and converts the reply back, vs the same call as
//! gRPC straight to the node (reported: conversion and a second hop are the lesson's price);
//! and the circuit breaker on a call's path while closed (the gateway's own lookup, admit and
//! verdict around a direct call) vs the call alone (target <= 1.02).

use std::sync::Arc;
use std::time::{Duration, Instant};

use api::edge::Verdict;
use api::{Gateway, Settings};
use axum::body::Body;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use micro_benches::{Effort, Row, Target, latency_pair};
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use registry::{MemoryRegistry, Registered, Registry};

const GREETER: &str = "greeter.v1.Greeter";
const SECRET: &[u8] = b"bench";

pub async fn rows(effort: Effort) -> Vec<Row> {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let server = microkit::greeter::serve("node-a").await.unwrap();
    let ttl = Duration::from_secs(600);
    let node = Registered::new(&registry, server, GREETER, "node-a", ttl).await.unwrap();
    // A bucket no bench run empties: the limit is not what is measured.
    let settings = Settings { burst: u32::MAX, per_second: 1e9, ..Settings::default() };
    let gateway = Arc::new(Gateway::new(registry, SECRET, settings));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = gateway.clone().router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let exp = u64::MAX / 2;
    let claims = api::edge::Claims { sub: "bench".into(), scope: GREETER.into(), exp };
    let token = format!("Bearer {}", api::edge::Keys::new(SECRET).sign(&claims));
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://{addr}/{GREETER}/SayHello");
    let through_gateway = async || {
        let request = http::Request::post(&url)
            .header("authorization", &token)
            .body(Body::from(r#"{"name":"bench"}"#))
            .unwrap();
        let response = client.request(request).await.expect("a call through the gateway");
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
    };

    let mut direct = GreeterClient::connect(format!("http://{}", node.addr())).await.unwrap();
    let hello = || HelloRequest { name: "bench".into() };
    let mut json = direct.clone();
    let gateway_pair = latency_pair(
        effort,
        async || {
            json.say_hello(hello()).await.unwrap();
        },
        through_gateway,
    )
    .await;

    let mut guarded = direct.clone();
    let breaker_pair = latency_pair(
        effort,
        async || {
            direct.say_hello(hello()).await.unwrap();
        },
        async || {
            let breaker = gateway.breaker(GREETER);
            let (admitted, _) = breaker.admit(Instant::now());
            let admitted = admitted.expect("a closed breaker");
            let ok = guarded.say_hello(hello()).await.is_ok();
            admitted.finish(if ok { Verdict::Healthy } else { Verdict::Failed });
        },
    )
    .await;
    vec![
        Row::latency(
            "api: unary p50 JSON through the gateway vs gRPC direct",
            gateway_pair,
            Target::Report,
        ),
        Row::latency(
            "api: unary p50 with a closed breaker vs none",
            breaker_pair,
            Target::AtMost(1.02),
        ),
    ]
}
