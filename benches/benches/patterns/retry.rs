//! Retry: a unary call through the retry example's layers, when nothing fails, vs a bare call.
//!
//! The policy and the attempt service are the example's own (`examples/retry/policy.rs`,
//! from the `retry` package's library): tower's `Retry` clones each call and
//! asks the policy after each answer, the budget takes a deposit for every call, and each
//! attempt carries the call's deadline as `grpc-timeout`, which tonic's server turns into a
//! timer around the handler. That is what a call pays for being retryable and bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use micro_benches::{Effort, Row, Target, latency_pair};
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::server::RunningServer;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tower::{Service, ServiceExt};

use crate::policy::{Call, RetryPolicy, attempt, budget};

pub async fn rows(effort: Effort) -> Vec<Row> {
    let raw_server = microkit::greeter::serve("raw").await.unwrap();
    let layered_server = microkit::greeter::serve("layered").await.unwrap();
    let mut raw = GreeterClient::new(connect(&raw_server).await);
    let policy = RetryPolicy::new(
        2,
        Duration::from_millis(1),
        Duration::from_millis(8),
        Some(budget(Duration::from_secs(10))),
    );
    let attempts = Arc::new(AtomicU32::new(0));
    let client = GreeterClient::new(connect(&layered_server).await);
    let mut layered = tower::retry::Retry::new(policy, attempt(client, attempts.clone()));
    let mut calls = 0u32;
    let hello = || HelloRequest { name: "bench".into() };
    let unary = latency_pair(
        effort,
        async || {
            raw.say_hello(hello()).await.unwrap();
        },
        async || {
            let deadline = Instant::now() + Duration::from_secs(5);
            let call = Call { request: hello(), idempotent: true, deadline };
            layered.ready().await.unwrap().call(call).await.unwrap();
            calls += 1;
        },
    )
    .await;
    // The pattern's figure is for calls that succeeded at the first attempt: no retry hid in it.
    assert_eq!(attempts.load(Ordering::SeqCst), calls, "an attempt failed and was retried");
    vec![Row::latency(
        "retry: unary p50 through retry and deadline layers",
        unary,
        Target::AtMost(1.05),
    )]
}

async fn connect(server: &RunningServer) -> Channel {
    Endpoint::from_shared(server.url()).unwrap().connect().await.unwrap()
}
