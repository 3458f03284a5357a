//! gRPC: a raw tonic channel vs the same calls through wrappers on both sides (a metadata
//! interceptor and a tower layer that sees every response's end, as the wrapper example's),
//! and vs the full client stack: those wrappers over round-robin selection among three
//! registered nodes.
//!
//! The round-robin pick is the few lines of `RoundRobin::pick` in
//! `examples/round-robin/rotation.rs`, written again here (the rotation is that example's
//! own module, not part of its library), and put under the generated client as a tower
//! service the way `examples/sharding/affinity.rs` puts its router, so the wrappers stack on
//! top of it. The node list and the channels are the health lesson's `LiveNodes` and
//! `Channels`, as in both examples.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use health::{Channels, LiveNodes};
use micro_benches::{Effort, Row, Target, say_hello_pair, throughput_pair};
use microkit::greeter::HelloGreeter;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::{GreetingsRequest, HelloRequest};
use microkit::server::RunningServer;
use registry::{MemoryRegistry, Node, Registration, Registry};
use tonic::body::Body;
use tonic::service::InterceptorLayer;
use tonic::transport::{Channel, Server};
use tonic::{Request, Status};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

const SERVICE: &str = "greeter";

pub async fn rows(effort: Effort) -> Vec<Row> {
    let raw_server = microkit::greeter::serve("raw").await.unwrap();
    let wrapped_server = serve_wrapped("wrapped").await;
    let mut raw = GreeterClient::new(connect(&raw_server).await);
    let mut wrapped = GreeterClient::new(
        ServiceBuilder::new()
            .layer(CountLayer::default())
            .layer(InterceptorLayer::new(add_metadata))
            .service(connect(&wrapped_server).await),
    );

    // The full stack: the same wrappers, over a turn-taking pick among three nodes.
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let mut nodes = Vec::new();
    for name in ["greeter-a", "greeter-b", "greeter-c"] {
        let server = serve_wrapped(name).await;
        let node = Node::new(SERVICE, name, server.addr());
        let registration =
            Registration::start(registry.clone(), node, Duration::from_secs(60)).await.unwrap();
        nodes.push((server, registration));
    }
    let live = LiveNodes::watch(&registry, SERVICE).await.unwrap();
    let ids = ["greeter-a", "greeter-b", "greeter-c"];
    live.wait_for_ids(&ids, Duration::from_secs(10)).await.unwrap();
    let mut full = GreeterClient::new(
        ServiceBuilder::new()
            .layer(CountLayer::default())
            .layer(InterceptorLayer::new(add_metadata))
            .service(RoundRobin::new(live)),
    );

    let hello = || HelloRequest { name: "bench".into() };
    // The stack really takes turns: three calls, three nodes.
    let mut answered = Vec::new();
    for _ in 0..3 {
        answered.push(full.say_hello(hello()).await.unwrap().into_inner().node);
    }
    answered.sort();
    assert_eq!(answered, ids, "round robin over the three nodes");
    let full_stack = say_hello_pair(effort, &mut raw, &mut full).await;
    let unary = say_hello_pair(effort, &mut raw, &mut wrapped).await;

    let count = effort.messages_per_round;
    let greetings = move || GreetingsRequest { name: "bench".into(), count, interval_ms: 0 };
    let streaming = throughput_pair(
        effort,
        async || drain(raw.greetings(greetings()).await.unwrap().into_inner()).await,
        async || drain(wrapped.greetings(greetings()).await.unwrap().into_inner()).await,
    )
    .await;

    vec![
        Row::latency("unary p50: full client stack vs raw", full_stack, Target::AtMost(1.05)),
        Row::latency("unary p50: wrappers both sides vs raw", unary, Target::AtMost(1.05)),
        Row::throughput("server streaming: wrappers vs raw", streaming, Target::AtLeast(0.95)),
    ]
}

async fn drain(stream: tonic::Streaming<microkit::proto::greeter::HelloReply>) -> u64 {
    stream.fold(0, |n, reply| async move { n + u64::from(reply.is_ok()) }).await
}

async fn connect(server: &RunningServer) -> Channel {
    Channel::from_shared(server.url()).unwrap().connect().await.unwrap()
}

async fn serve_wrapped(name: &str) -> RunningServer {
    let layers = ServiceBuilder::new()
        .layer(CountLayer::default())
        .layer(InterceptorLayer::new(check_metadata))
        .into_inner();
    let greeter = HelloGreeter::new(name).into_service();
    RunningServer::start_with(move |incoming, stop| {
        Server::builder()
            .layer(layers)
            .add_service(greeter)
            .serve_with_incoming_shutdown(incoming, stop)
    })
    .await
    .unwrap()
}

/// Round robin under the generated client: each request goes to the next node in turn.
#[derive(Clone)]
struct RoundRobin {
    nodes: Arc<LiveNodes>,
    next: Arc<AtomicUsize>,
    channels: Channels,
}

impl RoundRobin {
    fn new(nodes: LiveNodes) -> Self {
        RoundRobin { nodes: Arc::new(nodes), next: Arc::default(), channels: Channels::default() }
    }

    /// As `examples/round-robin/main.rs` picks: the node list sorted by id, one shared counter.
    fn pick(&self) -> Result<Node, Status> {
        let nodes = self.nodes.current();
        if nodes.is_empty() {
            return Err(Status::unavailable(format!("no node of service \"{SERVICE}\"")));
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Ok(nodes[turn % nodes.len()].clone())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<http::Request<Body>> for RoundRobin {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(())) // each call readies the channel it picks
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let channel = self.pick().and_then(|node| self.channels.to(&node));
        Box::pin(async move { Ok(channel?.oneshot(request).await?) })
    }
}

fn add_metadata(mut request: Request<()>) -> Result<Request<()>, Status> {
    request
        .metadata_mut()
        .insert("x-user-name", tonic::metadata::MetadataValue::from_static("bench"));
    Ok(request)
}

fn check_metadata(request: Request<()>) -> Result<Request<()>, Status> {
    match request.metadata().get("x-user-name") {
        Some(_) => Ok(request),
        None => Err(Status::unauthenticated("no user")),
    }
}

/// Counts requests and finished responses: the shape of a metrics wrapper.
#[derive(Clone, Default)]
struct CountLayer {
    requests: Arc<AtomicU64>,
    finished: Arc<AtomicU64>,
}

impl<S> Layer<S> for CountLayer {
    type Service = Count<S>;

    fn layer(&self, inner: S) -> Count<S> {
        Count { inner, counts: self.clone() }
    }
}

#[derive(Clone)]
struct Count<S> {
    inner: S,
    counts: CountLayer,
}

impl<S, B, RB> Service<http::Request<B>> for Count<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<CountEnd<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.counts.requests.fetch_add(1, Ordering::Relaxed);
        let finished = self.counts.finished.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            Ok(response.await?.map(|inner| CountEnd { inner, finished: Some(finished) }))
        })
    }
}

pin_project_lite::pin_project! {
    struct CountEnd<B> {
        #[pin]
        inner: B,
        finished: Option<Arc<AtomicU64>>,
    }
}

impl<B: http_body::Body> http_body::Body for CountEnd<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        let ended = !matches!(&frame, Some(Ok(f)) if f.is_data());
        if ended && let Some(finished) = this.finished.take() {
            finished.fetch_add(1, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
