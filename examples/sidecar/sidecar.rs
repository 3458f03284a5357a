//! The sidecar's HTTP API: how a program in any language joins the system.
//!
//! - `POST /<service>/<method>` with JSON: a call to a node of `service` found in the
//!   registry. A gRPC node gets a gRPC call (converted from and to JSON, `grpc.rs`); a
//!   plain HTTP node gets the same JSON POSTed to `/<method>`.
//! - `POST /registry`, `DELETE /registry/<service>/<id>`, `GET /registry/<service>`:
//!   register, deregister and list nodes for a program that cannot speak to the registry.
//! - `POST /broker/<topic>`: publish the body, an asynchronous request: the answer (202)
//!   means the broker has the message, not that anyone has handled it.
//!
//! Every error is JSON, `{"error": "..."}`, naming what went wrong.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use microkit::broker::{Broker, BrokerError, Headers};
use microkit::http::Forwarder;
use microkit::registry::{Node, Registry};
use serde::Deserialize;
use serde_json::json;

use crate::grpc;

/// The largest request body accepted, in bytes; bigger ones get 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The metadata key that says how to call a node, and the value for plain HTTP programs.
pub const PROTOCOL: &str = "protocol";
pub const HTTP: &str = "http";

#[derive(Clone)]
pub struct Sidecar {
    pub registry: Arc<dyn Registry>,
    pub broker: Arc<dyn Broker>,
    pub forwarder: Forwarder,
}

pub fn router(sidecar: Sidecar) -> Router {
    Router::new()
        .route("/registry", post(register))
        .route("/registry/{service}", get(list))
        .route("/registry/{service}/{id}", delete(deregister))
        .route("/broker/{topic}", post(publish))
        .route("/{service}/{method}", post(call))
        // The limit applies to every body extractor: `Bytes` answers 413 past it.
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(sidecar)
}

/// A JSON error answer.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// The body, or the status and message to answer with instead: 413 over the limit.
fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, (StatusCode, String)> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            let message = format!("body over the {} KiB limit", BODY_LIMIT / 1024);
            (StatusCode::PAYLOAD_TOO_LARGE, message)
        }
        status => (status, rejection.body_text()),
    })
}

/// `POST /<service>/<method>`: find a node, call it in its own protocol, answer JSON.
async fn call(
    State(sidecar): State<Sidecar>,
    Path((service, method)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match read_body(body) {
        Ok(body) => body,
        Err((status, message)) => return error(status, message),
    };
    let nodes = match sidecar.registry.nodes(&service).await {
        Ok(nodes) => nodes,
        Err(e) => return error(StatusCode::BAD_GATEWAY, format!("registry: {e}")),
    };
    // A registry cannot tell "never existed" from "all nodes gone": both are unavailable.
    let Some(node) = nodes.first() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, format!("no node for service {service:?}"));
    };
    if node.metadata.get(PROTOCOL).map(String::as_str) == Some(HTTP) {
        return call_http(&sidecar.forwarder, node, &method, body).await;
    }
    match grpc::call(&service, &node.address, &method, &body).await {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err((status, message)) => error(status, message),
    }
}

/// A plain HTTP program: the JSON goes to its `/<method>` as is, and its answer comes back.
async fn call_http(forwarder: &Forwarder, node: &Node, method: &str, body: Bytes) -> Response {
    let request = Request::post("/")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a valid request");
    match forwarder.forward(&node.address, &format!("/{method}"), request).await {
        Ok(response) => response,
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("{}: {e}", node.service)),
    }
}

/// What a program sends to join.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Join {
    service: String,
    id: String,
    /// `host:port` where the program listens for HTTP.
    address: String,
    /// The program must register again within this many seconds, or it is dropped.
    #[serde(default = "default_ttl")]
    ttl_secs: u64,
}

fn default_ttl() -> u64 {
    30
}

/// `POST /registry`: registers a plain HTTP program. Its heartbeat is its own job: it
/// POSTs again before its TTL runs out, because only it knows that it is still alive.
async fn register(State(sidecar): State<Sidecar>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match read_body(body) {
        Ok(body) => body,
        Err((status, message)) => return error(status, message),
    };
    let join: Join = match serde_json::from_slice(&body) {
        Ok(join) => join,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad JSON for /registry: {e}")),
    };
    if join.service.is_empty() || join.id.is_empty() || join.service.contains('/') {
        return error(
            StatusCode::BAD_REQUEST,
            "service and id must be non-empty, service without '/'",
        );
    }
    if join.address.parse::<std::net::SocketAddr>().is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("address {:?} is not ip:port", join.address),
        );
    }
    if !(1..=3600).contains(&join.ttl_secs) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("ttl_secs must be 1 to 3600, not {}", join.ttl_secs),
        );
    }
    let mut node = Node::new(&join.service, &join.id, &join.address);
    node.metadata.insert(PROTOCOL.to_owned(), HTTP.to_owned());
    match sidecar.registry.register(&node, Duration::from_secs(join.ttl_secs)).await {
        Ok(()) => Json(json!({ "registered": format!("{}/{}", join.service, join.id), "ttl_secs": join.ttl_secs }))
            .into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("registry: {e}")),
    }
}

/// `DELETE /registry/<service>/<id>`: a graceful leave.
async fn deregister(
    State(sidecar): State<Sidecar>,
    Path((service, id)): Path<(String, String)>,
) -> Response {
    match sidecar.registry.deregister(&service, &id).await {
        Ok(()) => Json(json!({ "deregistered": format!("{service}/{id}") })).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("registry: {e}")),
    }
}

/// `GET /registry/<service>`: the live nodes, as JSON.
async fn list(State(sidecar): State<Sidecar>, Path(service): Path<String>) -> Response {
    match sidecar.registry.nodes(&service).await {
        Ok(nodes) => Json(nodes).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("registry: {e}")),
    }
}

/// `POST /broker/<topic>`: the body becomes a message on `topic`, its content type a header.
async fn publish(
    State(sidecar): State<Sidecar>,
    Path(topic): Path<String>,
    request_headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match read_body(body) {
        Ok(body) => body,
        Err((status, message)) => return error(status, message),
    };
    let mut headers = Headers::new();
    if let Some(content_type) =
        request_headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
    {
        headers.insert("content-type".to_owned(), content_type.to_owned());
    }
    let bytes = body.len();
    // Flushed before answering, so 202 means the broker (on NATS, the server) has it.
    let published = match sidecar.broker.publish(&topic, headers, body).await {
        Ok(()) => sidecar.broker.flush().await,
        Err(e) => Err(e),
    };
    match published {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({ "published": topic, "bytes": bytes })))
            .into_response(),
        Err(e @ (BrokerError::InvalidTopic(_) | BrokerError::InvalidHeader(_))) => {
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e @ BrokerError::Closed) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("broker: {e}")),
    }
}
