//! The one-process story: a request followed through all four services and printed as a
//! tree, the same request through a gateway with no trace layer on its client, and the RED
//! metrics scraped from `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use microkit::PATIENCE;
use microkit_http::Forwarder;
use registry::Registry;

use crate::metrics::{self, Counts};
use crate::services;
use crate::telemetry::{Telemetry, Tree, trees};

/// Every span one traced request makes: two per gRPC or HTTP hop, two for the broker.
const SPANS_PER_REQUEST: usize = 7;

/// One process, the whole story.
pub async fn demo(
    registry: &Arc<dyn Registry>,
    backend: &microkit_backend::Backend,
    telemetry: &Telemetry,
    ttl: Duration,
) -> anyhow::Result<()> {
    let spans = telemetry.collected().expect("the story keeps its spans");
    let directory = services::directory(registry, &telemetry.tracer("directory")?, ttl).await?;
    let greeter =
        services::greeter(registry, broker::on(backend).await?, &telemetry.tracer("greeter")?, ttl)
            .await?;
    let audit = services::audit(broker::on(backend).await?, &telemetry.tracer("audit")?).await?;
    let gateway_tracer = telemetry.tracer("gateway")?;
    let gateway = services::gateway(registry, &gateway_tracer, true, 0).await?;
    let unpropagated = services::gateway(registry, &gateway_tracer, false, 0).await?;

    let http = Forwarder::default();
    println!("GET /hello?name=ada: {}", get(&http, gateway.addr(), "/hello?name=ada", None).await?);
    let traced = spans.take(SPANS_PER_REQUEST, PATIENCE).await?;
    print_traces("every hop propagates the context", &trees(&traced));

    println!();
    println!(
        "GET /hello?name=bob through a gateway whose gRPC client has no trace layer: {}",
        get(&http, unpropagated.addr(), "/hello?name=bob", None).await?
    );
    let broken = spans.take(SPANS_PER_REQUEST - 1, PATIENCE).await?;
    print_traces("the greeter saw no traceparent and started a trace of its own", &trees(&broken));

    println!();
    println!("GET /hello?name=: {}", get(&http, gateway.addr(), "/hello?name=", None).await?);
    spans.take(3, PATIENCE).await?; // the gateway's two spans and the greeter's refusal
    let scraped = metrics::parse(&get(&http, gateway.addr(), "/metrics", None).await?);
    println!("scraped from /metrics: requests, errors and timed requests per service and method");
    for ((service, method), red) in &scraped {
        let Counts { requests, errors, timed } = red;
        println!("  {service:<9} {method:<27} {requests:>2} {errors:>2} {timed:>2}");
    }

    unpropagated.shutdown().await?;
    gateway.shutdown().await?;
    println!("audit handled {} greetings", audit.stop().await);
    greeter.stop().await?;
    directory.stop().await?;
    Ok(())
}

fn print_traces(what: &str, trees: &[Tree]) {
    let ids: std::collections::HashSet<_> = trees.iter().map(|t| t.trace_id).collect();
    let spans: usize = trees.iter().map(Tree::len).sum();
    let traces =
        if ids.len() == 1 { "1 trace".to_owned() } else { format!("{} traces", ids.len()) };
    println!("{what}: {traces}, {spans} spans");
    for tree in trees {
        for line in tree.lines() {
            println!("  {line}");
        }
    }
}

/// `GET path` on `addr`, with a `traceparent` of the caller's if given: the body, or the status.
async fn get(
    http: &Forwarder,
    addr: SocketAddr,
    path: &str,
    traceparent: Option<&str>,
) -> anyhow::Result<String> {
    let mut request = http::Request::get(format!("http://{addr}{path}"));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = http.send(request.body(Body::empty())?).await?;
    let status = response.status();
    let body = microkit_http::body_text(response.into_body(), 1 << 20).await;
    Ok(if status.is_success() { body } else { format!("{status}: {body}") })
}
