//! Tracing and metrics: unary calls through the trace example's layers (`ServerLayer` and
//! `RedLayer` on the server, `ClientLayer` on the client) vs a raw tonic channel, with the
//! head sampler the example recommends for a service under load (`sampler(0.1)`: a tenth
//! of new traces kept, whole) and spans leaving through the SDK's batch processor, as with
//! OTLP. A second row keeps every trace (the story's 1.0), for reference.

use micro_benches::{Effort, Row, Target, say_hello_pair};
use microkit::greeter::HelloGreeter;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::server::RunningServer;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use tonic::transport::{Channel, Server};
use tower::{Layer, ServiceBuilder};

use crate::metrics::RedLayer;
use crate::propagation::{ClientLayer, ServerLayer, sampler};

/// Where the batches go: nowhere, so the figure is the cost inside the process.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

fn tracer(ratio: f64) -> (SdkTracerProvider, SdkTracer) {
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler(ratio))
        .with_batch_exporter(Discard)
        .build();
    let tracer = provider.tracer("bench");
    (provider, tracer)
}

async fn serve_traced(tracer: &SdkTracer) -> RunningServer {
    let red = RedLayer::grpc("greeter", &["greeter.v1.Greeter/SayHello"]);
    let layers = ServiceBuilder::new().layer(ServerLayer(tracer.clone())).layer(red);
    let greeter = HelloGreeter::new("traced").into_service();
    RunningServer::start_with(move |incoming, stop| {
        Server::builder()
            .layer(layers)
            .add_service(greeter)
            .serve_with_incoming_shutdown(incoming, stop)
    })
    .await
    .unwrap()
}

async fn connect(server: &RunningServer) -> Channel {
    Channel::from_shared(server.url()).unwrap().connect().await.unwrap()
}

pub async fn rows(effort: Effort) -> Vec<Row> {
    let raw_server = microkit::greeter::serve("raw").await.unwrap();
    let mut raw = GreeterClient::new(connect(&raw_server).await);
    let mut rows = Vec::new();
    for (ratio, pattern, target) in [
        (0.1, "unary p50: trace + metrics layers (sampled 0.1) vs raw", Target::AtMost(1.10)),
        (1.0, "unary p50: trace + metrics layers (every trace) vs raw", Target::Report),
    ] {
        let (provider, tracer) = tracer(ratio);
        let server = serve_traced(&tracer).await;
        let mut traced = GreeterClient::new(ClientLayer(tracer).layer(connect(&server).await));
        let figures = say_hello_pair(effort, &mut raw, &mut traced).await;
        rows.push(Row::latency(pattern, figures, target));
        server.shutdown().await.unwrap();
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
    // The layers really counted: the scrape has the calls.
    let scrape = crate::metrics::recorder().render();
    assert!(scrape.contains("requests_total{service=\"greeter\""), "{scrape}");
    rows
}
