//! The four services one request crosses: the `gateway` (HTTP) calls the `greeter` (gRPC),
//! which calls the `directory` (gRPC) and publishes `greeted`, which `audit` handles. Each
//! is built the same way whether the story runs them together or the roles one per process:
//! the layers of `propagation.rs` and `metrics.rs` on each, nothing traced by hand.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::get;
use broker::{Broker, Handler};
use bytes::Bytes;
use health::{Channels, LiveNodes};
use http::StatusCode;
use microkit::greeter::HelloGreeter;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::greeter_server::{Greeter, GreeterServer};
use microkit::proto::greeter::{HelloReply, HelloRequest};
use microkit::server::RunningServer;
use microkit_http::ApiError;
use opentelemetry_sdk::trace::SdkTracer;
use registry::Registered;
use registry::Registry;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tower::{Layer as _, ServiceBuilder};

use crate::metrics::RedLayer;
use crate::propagation::{ClientLayer, ServerLayer, TracedBroker};

pub const TOPIC: &str = "greeted";

/// The greeter's name in the registry. Other topics register greeters too, and the notes
/// run them all against one NATS: a plain `greeter` here would pick up whichever topic's
/// node the registry lists first. Spans and metrics still say `greeter`: they name the
/// role inside this trace, not a registry entry.
pub const GREETER: &str = "trace-greeter";

/// The methods of `greeter.v1.Greeter`, both gRPC servers here serve: the only values
/// their `method` label takes besides `other` (a caller can send any path).
const GREETER_METHODS: &[&str] = &[
    "greeter.v1.Greeter/SayHello",
    "greeter.v1.Greeter/Greetings",
    "greeter.v1.Greeter/CollectNames",
    "greeter.v1.Greeter/Chat",
];

/// A gRPC server with both layers: trace outermost, so the span covers what is counted.
async fn serve_grpc<S>(
    service: &'static str,
    tracer: &SdkTracer,
    svc: S,
) -> anyhow::Result<RunningServer>
where
    S: tonic::server::NamedService
        + tower::Service<http::Request<tonic::body::Body>, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Response: axum::response::IntoResponse,
    S::Future: Send + 'static,
{
    let red = RedLayer::grpc(service, GREETER_METHODS);
    let layers = ServiceBuilder::new().layer(ServerLayer(tracer.clone())).layer(red);
    Ok(RunningServer::start_with(move |incoming, stop| {
        microkit::server::builder()
            .layer(layers)
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, stop)
    })
    .await?)
}

/// The leaf: the directory answers with the plain greeter.
pub async fn directory(
    registry: &Arc<dyn Registry>,
    tracer: &SdkTracer,
    ttl: Duration,
) -> anyhow::Result<Registered> {
    let server =
        serve_grpc("directory", tracer, HelloGreeter::new("directory").into_service()).await?;
    Ok(Registered::new(registry, server, "directory", "directory-1", ttl).await?)
}

/// The middle: asks the directory, then tells whoever listens on `greeted`.
pub async fn greeter(
    registry: &Arc<dyn Registry>,
    broker: Arc<dyn Broker>,
    tracer: &SdkTracer,
    ttl: Duration,
) -> anyhow::Result<Registered> {
    let greeter = MiddleGreeter {
        directory: LiveNodes::watch_listed(registry, "directory").await?,
        channels: Channels::default(),
        broker: TracedBroker { broker, tracer: tracer.clone() },
        tracer: tracer.clone(),
    };
    let server = serve_grpc("greeter", tracer, GreeterServer::new(greeter)).await?;
    Ok(Registered::new(registry, server, GREETER, "greeter-1", ttl).await?)
}

struct MiddleGreeter {
    directory: LiveNodes,
    channels: Channels,
    broker: TracedBroker,
    tracer: SdkTracer,
}

#[tonic::async_trait]
impl Greeter for MiddleGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let name = request.into_inner().name;
        if name.is_empty() {
            return Err(Status::invalid_argument("a name is needed"));
        }
        let channel = first_node(&self.directory, &self.channels)?;
        let mut directory = GreeterClient::new(ClientLayer(self.tracer.clone()).layer(channel));
        let reply = directory.say_hello(HelloRequest { name: name.clone() }).await?;
        self.broker
            .publish(TOPIC, Bytes::from(name))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(reply)
    }
}

/// A channel to the first node the registry lists for the service.
fn first_node(nodes: &LiveNodes, channels: &Channels) -> Result<Channel, Status> {
    let node = nodes.current().into_iter().next().ok_or_else(|| {
        Status::unavailable(format!("no node of service \"{}\" in the registry", nodes.service()))
    })?;
    channels.to(&node)
}

/// The subscriber: logs each greeting it audits.
pub async fn audit(broker: Arc<dyn Broker>, tracer: &SdkTracer) -> anyhow::Result<Handler> {
    let traced = TracedBroker { broker, tracer: tracer.clone() };
    let handler = traced
        .handle(TOPIC, Some("audit"), |message| async move {
            let name = std::str::from_utf8(&message.payload).map_err(|e| e.to_string())?;
            tracing::info!(name, "audited");
            Ok(())
        })
        .await?;
    Ok(handler)
}

/// The edge: `GET /hello?name=..` becomes a gRPC call to the greeter; `/metrics` is here
/// too. With `propagate` false its client has no trace layer: the hop the story breaks.
pub async fn gateway(
    registry: &Arc<dyn Registry>,
    tracer: &SdkTracer,
    propagate: bool,
    port: u16,
) -> anyhow::Result<RunningServer> {
    let gateway = Arc::new(Gateway {
        greeter: LiveNodes::watch_listed(registry, GREETER).await?,
        channels: Channels::default(),
        client_layer: propagate.then(|| ClientLayer(tracer.clone())),
    });
    let router = axum::Router::new()
        .route("/hello", get(hello))
        .with_state(gateway)
        .layer(
            ServiceBuilder::new()
                .layer(ServerLayer(tracer.clone()))
                .layer(RedLayer::http("gateway")),
        )
        .merge(crate::metrics::route());
    Ok(microkit_http::start_on(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        router,
        microkit::health::Health::default(),
    )
    .await?)
}

struct Gateway {
    greeter: LiveNodes,
    channels: Channels,
    client_layer: Option<ClientLayer>,
}

#[derive(serde::Deserialize)]
struct HelloQuery {
    #[serde(default)]
    name: String,
}

async fn hello(
    State(gateway): State<Arc<Gateway>>,
    Query(query): Query<HelloQuery>,
) -> Result<String, ApiError> {
    let channel = first_node(&gateway.greeter, &gateway.channels)
        .map_err(|s| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, s.message()))?;
    let service = ServiceBuilder::new().option_layer(gateway.client_layer.clone()).service(channel);
    let reply = GreeterClient::new(service).say_hello(HelloRequest { name: query.name }).await;
    match reply {
        Ok(reply) => Ok(reply.into_inner().message),
        Err(status) if status.code() == Code::InvalidArgument => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, status.message()))
        }
        Err(status) => Err(ApiError::new(StatusCode::BAD_GATEWAY, status.message())),
    }
}
