//! The lesson: the trace context crosses every hop in a layer, never in a handler.
//!
//! Each hop writes the context it runs in (trace id, its span's id, the sampled flag) into the
//! outgoing headers as W3C `traceparent` (and `tracestate`), and the next hop reads it back
//! and starts its span as a child. Three places do it, one per kind of hop: [`ServerLayer`]
//! on every HTTP and gRPC server, [`ClientLayer`] on every gRPC client, and [`TracedBroker`]
//! around the broker. A handler only calls, publishes and answers; it never sees a header.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context as Cx, Poll};

use broker::{Broker, BrokerError, Handler, Headers, Message};
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{FutureExt, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer};

/// A server hop: continue the caller's trace (a new one when the request carries none) in
/// a `server` span, and run the handler inside it so that its own calls become children.
/// One layer for axum and tonic alike: both are tower services over `http::Request`.
#[derive(Clone)]
pub struct ServerLayer(pub SdkTracer);

impl<S, B, R> tower::Service<Request<B>> for Traced<S, Server>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Cx<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let parent = TraceContextPropagator::new().extract(&Carrier(request.headers()));
        let cx = start(&self.tracer, &parent, span_name(&request), SpanKind::Server);
        let response = {
            let _inside = cx.clone().attach(); // for whatever the service does before its future
            self.inner.call(request)
        };
        Box::pin(async move {
            let result = response.with_context(cx.clone()).await;
            if let Ok(response) = &result {
                finish(&cx, failure(response));
            }
            result
        })
    }
}

/// A client hop: a `client` span under the current one, injected into the request.
#[derive(Clone)]
pub struct ClientLayer(pub SdkTracer);

impl<S, B, R> tower::Service<Request<B>> for Traced<S, Client>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Cx<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let cx = start(&self.tracer, &Context::current(), span_name(&request), SpanKind::Client);
        TraceContextPropagator::new().inject_context(&cx, &mut Carrier(request.headers_mut()));
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            match &result {
                Ok(response) => finish(&cx, failure(response)),
                Err(error) => finish(&cx, Some(error.to_string())),
            }
            result
        })
    }
}

/// The broker hop: a `producer` span whose context rides in the message headers, and a
/// `consumer` span for each message handled, continuing it.
#[derive(Clone)]
pub struct TracedBroker {
    pub broker: Arc<dyn Broker>,
    pub tracer: SdkTracer,
}

impl TracedBroker {
    pub async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), BrokerError> {
        let name = format!("publish {topic}");
        let cx = start(&self.tracer, &Context::current(), name, SpanKind::Producer);
        let mut headers = Headers::new();
        // exercise begins: carry the producer span's context in the message headers
        TraceContextPropagator::new().inject_context(&cx, &mut Carrier(&mut headers));
        // exercise ends
        let published = self.broker.publish(topic, headers, payload).await;
        finish(&cx, published.as_ref().err().map(ToString::to_string));
        published
    }

    /// Runs `handler` on each message of `topic` (in `queue`, if given) inside its span.
    pub async fn handle<F, Fut>(
        &self,
        topic: &str,
        queue: Option<&str>,
        mut handler: F,
    ) -> Result<Handler, BrokerError>
    where
        F: FnMut(Message) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let subscription = self.broker.subscribe(topic, queue).await?;
        let tracer = self.tracer.clone();
        Ok(subscription.handle(move |message| {
            let parent = TraceContextPropagator::new().extract(&Carrier(&message.headers));
            let name = format!("process {}", message.topic);
            let cx = start(&tracer, &parent, name, SpanKind::Consumer);
            let handled = handler(message).with_context(cx.clone());
            async move { finish(&cx, handled.await.err()) }
        }))
    }
}

/// Head sampling, decided once where a trace starts and carried in `traceparent`'s flags:
/// `ratio` of new traces are kept, and a continued trace follows its caller's decision
/// (`ParentBased`), so no service keeps a fragment of a trace the others dropped.
pub fn sampler(ratio: f64) -> Sampler {
    Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
}

// ---- What the three share ---------------------------------------------------------------

/// A span of `kind` under `parent`, and the context that has it as its current span.
fn start(tracer: &SdkTracer, parent: &Context, name: String, kind: SpanKind) -> Context {
    let span = tracer.span_builder(name).with_kind(kind).start_with_context(tracer, parent);
    parent.with_span(span)
}

/// Ends the context's span, marking it failed when there is a reason.
fn finish(cx: &Context, failed: Option<String>) {
    let span = cx.span();
    if let Some(reason) = failed {
        span.set_attribute(KeyValue::new("error", true));
        span.set_status(Status::error(reason));
    }
    span.end();
}

/// gRPC calls are named by their method (`greeter.v1.Greeter/SayHello`), HTTP requests by
/// method and path (`GET /hello`): a name shared by every request of its kind, no ids in it.
pub fn span_name<B>(request: &Request<B>) -> String {
    let path = request.uri().path();
    if is_grpc(request.headers()) {
        path.trim_start_matches('/').to_owned()
    } else {
        format!("{} {path}", request.method())
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Why a response failed, if it did: a gRPC status other than OK in its headers (tonic
/// answers an error with headers only), or an HTTP 5xx.
pub fn failure<R>(response: &Response<R>) -> Option<String> {
    if let Some(status) = response.headers().get("grpc-status") {
        let code = tonic::Code::from_bytes(status.as_bytes());
        return (code != tonic::Code::Ok).then(|| format!("gRPC {code:?}"));
    }
    response.status().is_server_error().then(|| format!("HTTP {}", response.status()))
}

/// The layers' service: `inner`, with the tracer and the side (`Server` or `Client`).
#[derive(Clone)]
pub struct Traced<S, Side> {
    inner: S,
    tracer: SdkTracer,
    _side: std::marker::PhantomData<Side>,
}

#[derive(Clone)]
pub struct Server;
#[derive(Clone)]
pub struct Client;

impl<S> tower::Layer<S> for ServerLayer {
    type Service = Traced<S, Server>;
    fn layer(&self, inner: S) -> Self::Service {
        Traced { inner, tracer: self.0.clone(), _side: std::marker::PhantomData }
    }
}

impl<S> tower::Layer<S> for ClientLayer {
    type Service = Traced<S, Client>;
    fn layer(&self, inner: S) -> Self::Service {
        Traced { inner, tracer: self.0.clone(), _side: std::marker::PhantomData }
    }
}

/// Headers as the propagator reads and writes them: HTTP/gRPC headers, or a message's.
struct Carrier<T>(T);

impl Extractor for Carrier<&HeaderMap> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

impl Injector for Carrier<&mut HeaderMap> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(key, value);
        }
    }
}

impl Extractor for Carrier<&Headers> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

impl Injector for Carrier<&mut Headers> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}
