//! The sidecar's HTTP API: how a program in any language joins the system.
//!
//! - `POST /<service>/<method>` with JSON: a call to a node of `service` found in the
//!   registry. A gRPC node gets a gRPC call (converted from and to JSON, `grpc.rs`); a
//!   plain HTTP node gets the same JSON POSTed to `/<method>`.
//! - `POST /registry`, `DELETE /registry/<service>/<id>`, `GET /registry/<service>`:
//!   register, deregister and list nodes for a program that cannot speak to the registry.
//!   A service's first registrant gets a token that every later change to it needs
//!   (`owners.rs`).
//! - `POST /broker/<topic>`: publish the body, an asynchronous request: the answer (202)
//!   means the broker has the message, not that anyone has handled it.
//!
//! Every error is JSON, `{"error": "..."}` ([`JsonError`]), naming what went wrong.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use broker::{Broker, BrokerError, Headers};
use health::Channels;
use microkit_http::Forwarder;
use registry::{MAX_TTL, Node, Registry, RegistryError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::grpc;
use crate::owners::{self, Registrations};

/// The largest request body accepted, in bytes; bigger ones get 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The metadata key that says how to call a node, and the value for plain HTTP programs.
pub const PROTOCOL: &str = "protocol";
pub const HTTP: &str = "http";

/// What every route shares: the registry and broker the sidecar speaks to for its
/// programs, and the connections it keeps to their nodes.
#[derive(Clone)]
pub struct Sidecar {
    registry: Arc<dyn Registry>,
    broker: Arc<dyn Broker>,
    /// Pooled HTTP/1.1 connections to plain HTTP programs.
    forwarder: Forwarder,
    /// One gRPC channel per node address, reused by every call instead of a new
    /// connection (and a TCP and HTTP/2 handshake) per request.
    channels: Channels,
    /// The turn of the next call: calls rotate over a service's nodes, sorted by id.
    turn: Arc<AtomicUsize>,
    /// The programs registered through this sidecar, and who owns each service name.
    held: Arc<Mutex<Registrations>>,
}

impl Sidecar {
    pub fn new(registry: Arc<dyn Registry>, broker: Arc<dyn Broker>) -> Self {
        Sidecar {
            registry,
            broker,
            forwarder: Forwarder::default(),
            channels: Channels::default(),
            turn: Arc::default(),
            held: Arc::default(),
        }
    }
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

/// `POST /<service>/<method>`: find a node, call it in its own protocol, answer JSON.
async fn call(
    State(sidecar): State<Sidecar>,
    Path((service, method)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, JsonError> {
    check_name("service", &service)?;
    check_method(&method)?;
    let body = body?;
    let nodes = sidecar.registry.nodes(&service).await?;
    // A registry cannot tell "never existed" from "all nodes gone": both are unavailable.
    if nodes.is_empty() {
        return Err(JsonError::unavailable(format!("no node for service {service:?}")));
    }
    // Round robin, as in the round-robin example: the nodes come sorted by id.
    let node = &nodes[sidecar.turn.fetch_add(1, Ordering::Relaxed) % nodes.len()];
    if is_program(node) {
        return call_http(&sidecar.forwarder, node, &method, body).await;
    }
    let json = grpc::call(&sidecar.channels, node, &method, &body).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// A plain HTTP program: the JSON goes to its `/<method>` as is, and its answer comes back.
async fn call_http(
    forwarder: &Forwarder,
    node: &Node,
    method: &str,
    body: Bytes,
) -> Result<Response, JsonError> {
    let request = Request::post("/")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a valid request");
    let response = forwarder.forward(&node.address, &format!("/{method}"), request).await;
    response.map_err(|e| JsonError::bad_gateway(format!("{}: {e:#}", node.service)))
}

/// The longest service, node id, method or topic name, in bytes. NATS carries names in
/// subjects and drops a connection whose control line passes 4 KiB: a long name must be a
/// 400 here, not a lost connection there.
pub const MAX_NAME: usize = 128;

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
/// The first registration of a service answers a token; the others must send it.
async fn register(
    State(sidecar): State<Sidecar>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, JsonError> {
    let join: Join = serde_json::from_slice(&body?)
        .map_err(|e| JsonError::bad_request(format!("bad JSON for /registry: {e}")))?;
    check_name("service", &join.service)?;
    check_name("id", &join.id)?;
    if join.service.contains('/') {
        return Err(JsonError::bad_request("a service name has no '/'"));
    }
    let address = match join.address.parse::<std::net::SocketAddr>() {
        Ok(address) => address,
        Err(e) => {
            let address = &join.address;
            return Err(JsonError::bad_request(format!("address {address:?} is not ip:port: {e}")));
        }
    };
    // The sidecar speaks for the programs of its own host, which it reaches over loopback.
    if !address.ip().is_loopback() {
        return Err(JsonError::bad_request(format!(
            "address {address} is not on loopback: a sidecar registers its own host's programs"
        )));
    }
    // The NATS registry's own limit, so a TTL that passes here passes on either backend.
    let max_ttl = MAX_TTL.as_secs();
    if !(1..=max_ttl).contains(&join.ttl_secs) {
        let ttl = join.ttl_secs;
        return Err(JsonError::bad_request(format!("ttl_secs must be 1 to {max_ttl}, not {ttl}")));
    }
    // Only the service's first registrant may add to it or renew it: anyone else's node
    // would receive a share of its callers.
    let listed = listed_ids(&sidecar, &join.service).await?;
    let ttl = Duration::from_secs(join.ttl_secs);
    let names = (join.service.as_str(), join.id.as_str());
    // exercise begins: admit the node only if its service is new, or the caller holds the service's token
    let token =
        sidecar.held.lock().unwrap().admit(names, ttl, owners::bearer(&headers), &listed)?;
    // exercise ends
    let mut node = Node::new(&join.service, &join.id, &join.address);
    node.metadata.insert(PROTOCOL.to_owned(), HTTP.to_owned());
    if let Err(e) = sidecar.registry.register(&node, ttl).await {
        sidecar.held.lock().unwrap().release(&join.service, &join.id);
        return Err(e.into());
    }
    let registered = format!("{}/{}", join.service, join.id);
    let mut answer = json!({ "registered": registered, "ttl_secs": join.ttl_secs });
    if let Some(token) = token {
        answer["token"] = Value::String(token);
    }
    Ok(Json(answer))
}

async fn listed_ids(sidecar: &Sidecar, service: &str) -> Result<Vec<String>, JsonError> {
    Ok(sidecar.registry.nodes(service).await?.into_iter().map(|n| n.id).collect())
}

/// `DELETE /registry/<service>/<id>`: a graceful leave, with the service's token.
async fn deregister(
    State(sidecar): State<Sidecar>,
    Path((service, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, JsonError> {
    check_name("service", &service)?;
    check_name("id", &id)?;
    let listed = listed_ids(&sidecar, &service).await?;
    let names = (service.as_str(), id.as_str());
    sidecar.held.lock().unwrap().may_leave(names, owners::bearer(&headers), &listed)?;
    sidecar.registry.deregister(&service, &id).await?;
    sidecar.held.lock().unwrap().release(&service, &id);
    Ok(Json(json!({ "deregistered": format!("{service}/{id}") })))
}

/// `GET /registry/<service>`: the live nodes, as JSON.
async fn list(
    State(sidecar): State<Sidecar>,
    Path(service): Path<String>,
) -> Result<Json<Vec<Node>>, JsonError> {
    check_name("service", &service)?;
    Ok(Json(sidecar.registry.nodes(&service).await?))
}

/// `POST /broker/<topic>`: the body becomes a message on `topic`, its content type a header.
async fn publish(
    State(sidecar): State<Sidecar>,
    Path(topic): Path<String>,
    request_headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), JsonError> {
    check_name("topic", &topic)?;
    let body = body?;
    let mut headers = Headers::new();
    if let Some(content_type) = request_headers.get(header::CONTENT_TYPE) {
        let content_type = content_type
            .to_str()
            .map_err(|e| JsonError::bad_request(format!("content-type: {e}")))?;
        headers.insert("content-type".to_owned(), content_type.to_owned());
    }
    let bytes = body.len();
    sidecar.broker.publish(&topic, headers, body).await?;
    // Flushed before answering, so 202 means the broker (on NATS, the server) has it.
    sidecar.broker.flush().await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "published": topic, "bytes": bytes }))))
}

/// A plain HTTP program registered through a sidecar (not a service's own node).
fn is_program(node: &Node) -> bool {
    node.metadata.get(PROTOCOL).map(String::as_str) == Some(HTTP)
}

/// Refuses an empty name or one over [`MAX_NAME`] bytes (without echoing it back).
fn check_name(what: &str, name: &str) -> Result<(), JsonError> {
    if name.is_empty() || name.len() > MAX_NAME {
        let length = name.len();
        return Err(JsonError::bad_request(format!(
            "a {what} name must be 1 to {MAX_NAME} bytes, not {length}"
        )));
    }
    Ok(())
}

/// A method becomes one segment of the path a program receives: `a b`, `..` or `x?y` would
/// change which request it gets, so only letters, digits, `-`, `_` and `.`, starting with a
/// letter or digit.
fn check_method(method: &str) -> Result<(), JsonError> {
    check_name("method", method)?;
    let plain = method.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !plain || !method.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(JsonError::bad_request(format!(
            "invalid method {method:?}: use letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(())
}

/// Every refusal of the sidecar: a status, and a message that says what went wrong (with
/// its cause), answered as `{"error": "<message>"}`. Handlers return it with `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    pub status: StatusCode,
    pub message: String,
}

impl JsonError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        JsonError { status, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for JsonError {
    fn into_response(self) -> Response {
        // An upstream that failed is worth the operator's eye; a caller's mistake is not.
        if matches!(self.status, StatusCode::BAD_GATEWAY | StatusCode::INTERNAL_SERVER_ERROR) {
            tracing::warn!(status = %self.status, "{}", self.message);
        }
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

/// An unreadable body: 413 over the limit, axum's own status and reason otherwise.
impl From<BytesRejection> for JsonError {
    fn from(rejection: BytesRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body over the {} KiB limit", BODY_LIMIT / 1024),
            ),
            status => Self::new(status, rejection.body_text()),
        }
    }
}

/// The registry is the sidecar's upstream: its failure is a bad gateway.
impl From<RegistryError> for JsonError {
    fn from(e: RegistryError) -> Self {
        Self::bad_gateway(format!("registry: {e}"))
    }
}

/// A caller's bad topic or header is a 400; a closed broker is unavailable.
impl From<BrokerError> for JsonError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::InvalidTopic(_) | BrokerError::InvalidHeader(_) => {
                Self::bad_request(e.to_string())
            }
            BrokerError::Closed => Self::unavailable(e.to_string()),
            BrokerError::Nats { .. } | BrokerError::TimedOut { .. } => {
                Self::bad_gateway(format!("broker: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests;
