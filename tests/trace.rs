//! The trace example as processes: its spans received over OTLP by a collector of the
//! test's own, a caller's `traceparent` continued, the `/metrics` scrape parsed, and the
//! four services as four processes over a private NATS making one trace.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{example, run_within, text};
use microkit::PATIENCE;
use microkit::server::RunningServer;
use microkit_testing::NatsServer;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, Lines};
use tokio::process::Child;

/// A span as the collector received it, with the service its resource names.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    name: String,
    kind: &'static str,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

/// An OTLP/gRPC trace receiver on a free port: what a collector such as Jaeger runs.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let attributes = resource_spans.resource.map(|r| r.attributes).unwrap_or_default();
            let service = attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(name) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                received.push(Received {
                    service: service.clone(),
                    kind: ["?", "internal", "server", "client", "producer", "consumer"]
                        [span.kind.clamp(0, 5) as usize],
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn receiver() -> (RunningServer, Receiver) {
    let receiver = Receiver::default();
    let service = TraceServiceServer::new(receiver.clone());
    let server = RunningServer::start_with(move |incoming, stop| {
        microkit::server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop)
    })
    .await
    .unwrap();
    (server, receiver)
}

/// Each span as `service kind name <- parent's service kind name` (the root: `<- caller`
/// when its parent came from outside, `<- none` when it starts the trace).
fn edges(spans: &[Received]) -> BTreeSet<String> {
    let label = |s: &Received| format!("{} {} {}", s.service, s.kind, s.name);
    spans
        .iter()
        .map(|span| {
            let parent = spans.iter().find(|p| p.span_id == span.parent_span_id);
            let parent = match parent {
                Some(parent) => label(parent),
                None if span.parent_span_id.is_empty() => "none".to_owned(),
                None => "caller".to_owned(),
            };
            format!("{} <- {parent}", label(span))
        })
        .collect()
}

/// The seven spans of one request through every hop, each under the right parent.
fn one_request(root_parent: &str) -> BTreeSet<String> {
    let call = "greeter.v1.Greeter/SayHello";
    [
        format!("gateway server GET /hello <- {root_parent}"),
        format!("gateway client {call} <- gateway server GET /hello"),
        format!("greeter server {call} <- gateway client {call}"),
        format!("greeter client {call} <- greeter server {call}"),
        format!("directory server {call} <- greeter client {call}"),
        format!("greeter producer publish greeted <- greeter server {call}"),
        "audit consumer process greeted <- greeter producer publish greeted".to_owned(),
    ]
    .into_iter()
    .collect()
}

fn by_trace(spans: &[Received]) -> BTreeMap<String, Vec<Received>> {
    let mut traces: BTreeMap<String, Vec<Received>> = BTreeMap::new();
    for span in spans {
        traces.entry(span.trace_id.clone()).or_default().push(span.clone());
    }
    traces
}

#[tokio::test]
async fn the_story_exports_every_span_over_otlp_with_one_trace_id_per_request() {
    let (server, receiver) = receiver().await;
    let mut story = example("trace");
    story.env("MICRO_BACKEND", "memory").env("OTEL_EXPORTER_OTLP_ENDPOINT", server.url());
    let output = run_within(story, Duration::from_secs(30)).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    // The story's exit waits for the last batch to be sent.
    let spans = receiver.0.lock().unwrap().clone();
    let traces = by_trace(&spans);
    // Propagated: one trace of seven. Broken: the gateway's lone span, and the greeter's
    // orphan of five. The refused call: three.
    let mut sizes: Vec<usize> = traces.values().map(Vec::len).collect();
    sizes.sort();
    assert_eq!(sizes, [1, 3, 5, 7], "spans per trace id: {traces:#?}");
    let whole = traces.values().find(|t| t.len() == 7).unwrap();
    assert_eq!(edges(whole), one_request("none"));
    let orphan = traces.values().find(|t| t.len() == 5).unwrap();
    assert!(
        edges(orphan).contains("greeter server greeter.v1.Greeter/SayHello <- none"),
        "without the gateway's client layer the greeter starts a trace: {:#?}",
        edges(orphan)
    );
}

/// A made-up context from a caller outside: trace id and parent span id.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn four_processes_over_nats_make_one_trace_continuing_the_callers() {
    let nats = NatsServer::start().await.expect("this test needs nats-server");
    let (collector, receiver) = receiver().await;
    let start = |role: &str| {
        let mut command = example("trace");
        command
            .arg(role)
            .env("NATS_URL", nats.url())
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url())
            .stdout(Stdio::piped());
        command.spawn().unwrap()
    };
    let mut roles = Vec::new();
    for role in ["directory", "greeter", "audit", "gateway"] {
        let mut child = start(role);
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = next_line(&mut stdout).await;
        roles.push((role, child, stdout, ready));
    }
    let gateway = roles[3].3.strip_prefix("gateway listening on ").unwrap().to_owned();

    // The gateway finds the greeter, and the greeter the directory, through the registry:
    // probe (untraced by the caller, so in traces of their own) until a call goes through.
    let http = microkit_http::Forwarder::default();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while get(&http, &format!("{gateway}/hello?name=probe"), None).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the services never found each other");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let (status, body) = get(&http, &format!("{gateway}/hello?name=ada"), Some(&traceparent)).await;
    assert_eq!((status, body.as_str()), (200, "hello ada"));

    let (status, scrape) = get(&http, &format!("{gateway}/metrics"), None).await;
    assert_eq!(status, 200);
    let hello = r#"{service="gateway",method="GET /hello"}"#;
    let value = |name: &str| -> u64 {
        let prefix = format!("{name}{hello} ");
        let line = scrape.lines().find_map(|l| l.strip_prefix(&prefix));
        line.unwrap_or_else(|| panic!("no {prefix} in {scrape}")).trim().parse().unwrap()
    };
    let requests = value("requests_total");
    assert!(requests >= 2, "the probes and the traced call: {requests}");
    assert_eq!(value("request_duration_seconds_count"), requests, "every request timed");

    // A stop request: each role flushes its spans before it exits.
    for (role, child, _, _) in &mut roles {
        terminate(child);
        let status = tokio::time::timeout(PATIENCE, child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "{role} stopped with {status}");
    }
    let spans = receiver.0.lock().unwrap().clone();
    let traced: Vec<Received> = spans.into_iter().filter(|s| s.trace_id == TRACE_ID).collect();
    assert_eq!(edges(&traced), one_request("caller"), "the trace the caller started");
    let root = traced.iter().find(|s| s.kind == "server" && s.service == "gateway").unwrap();
    assert_eq!(root.parent_span_id, CALLER_SPAN);
}

async fn next_line(lines: &mut Lines<BufReader<impl AsyncRead + Unpin>>) -> String {
    let line = tokio::time::timeout(PATIENCE, lines.next_line()).await;
    line.expect("a role said nothing").unwrap().expect("a role exited")
}

async fn get(
    http: &microkit_http::Forwarder,
    url: &str,
    traceparent: Option<&str>,
) -> (u16, String) {
    let mut request = http::Request::get(url);
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = http.send(request.body(axum::body::Body::empty()).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    (status, microkit_http::body_text(response.into_body(), 1 << 20).await)
}

/// Sends SIGTERM to this child, and only to it.
fn terminate(child: &Child) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success(), "kill -TERM {pid} failed");
}

/// The port a gRPC service serves `/metrics` on speaks HTTP/1.1 alone: a client that opens
/// HTTP/2 streams there and reads none of their replies gets no stream to hold.
#[tokio::test]
async fn metrics_of_a_grpc_service_refuse_http2_and_answer_http1() {
    let nats = NatsServer::start().await.expect("this test needs nats-server");
    let mut command = example("trace");
    command.arg("directory").env("NATS_URL", nats.url()).stdout(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = next_line(&mut stdout).await;
    let url = ready.split("metrics on http://").nth(1).expect("a metrics address");
    let addr: std::net::SocketAddr = url.trim_end_matches("/metrics").parse().unwrap();

    let mut h2 = common::hostile::H2::connect(addr).await.unwrap();
    let spoken = tokio::time::timeout(PATIENCE, h2.sync(|_| {})).await;
    assert_eq!(spoken, Ok(false), "the metrics port answered a PING over HTTP/2");
    let answer = common::hostile::http_get(addr, "/metrics", PATIENCE).await;
    assert_eq!(answer.as_deref(), Some("HTTP/1.1 200 OK"));

    terminate(&child);
    let status = tokio::time::timeout(PATIENCE, child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "directory stopped with {status}");
}
