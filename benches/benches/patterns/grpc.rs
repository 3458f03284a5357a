//! gRPC: a raw tonic channel vs the same calls through wrappers on both sides (a metadata
//! interceptor and a tower layer that sees every response's end, as the wrapper example's).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use futures::StreamExt;
use futures::future::BoxFuture;
use micro_benches::{Effort, Row, Target, latency_pair, throughput_pair};
use microkit::greeter::HelloGreeter;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::{GreetingsRequest, HelloRequest};
use microkit::server::RunningServer;
use tonic::service::InterceptorLayer;
use tonic::transport::{Channel, Server};
use tonic::{Request, Status};
use tower::{Layer, Service, ServiceBuilder};

pub async fn rows(effort: Effort) -> Vec<Row> {
    let raw_server = microkit::greeter::serve("raw").await.unwrap();
    let wrapped_server = serve_wrapped().await;
    let mut raw = GreeterClient::new(connect(&raw_server).await);
    let mut wrapped = GreeterClient::new(
        ServiceBuilder::new()
            .layer(CountLayer::default())
            .layer(InterceptorLayer::new(add_metadata))
            .service(connect(&wrapped_server).await),
    );

    let hello = || HelloRequest { name: "bench".into() };
    let unary = latency_pair(
        effort,
        async || {
            raw.say_hello(hello()).await.unwrap();
        },
        async || {
            wrapped.say_hello(hello()).await.unwrap();
        },
    )
    .await;

    let count = effort.messages_per_round;
    let greetings = move || GreetingsRequest { name: "bench".into(), count, interval_ms: 0 };
    let streaming = throughput_pair(
        effort,
        async || drain(raw.greetings(greetings()).await.unwrap().into_inner()).await,
        async || drain(wrapped.greetings(greetings()).await.unwrap().into_inner()).await,
    )
    .await;

    vec![
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

async fn serve_wrapped() -> RunningServer {
    let layers = ServiceBuilder::new()
        .layer(CountLayer::default())
        .layer(InterceptorLayer::new(check_metadata))
        .into_inner();
    let greeter = HelloGreeter::new("wrapped").into_service();
    RunningServer::start_with(move |incoming, stop| {
        Server::builder()
            .layer(layers)
            .add_service(greeter)
            .serve_with_incoming_shutdown(incoming, stop)
    })
    .await
    .unwrap()
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
