//! The web service: plain HTTP routes, a page, and a websocket that bridges the page to the
//! Greeter's server-streaming call. It knows nothing of the gateway in front of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use http::Request;
use microkit::proto::greeter::GreetingsRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use registry::Registry;
use serde::{Deserialize, Serialize};

/// The most greetings one websocket may ask for: every request is bounded work.
pub const MAX_COUNT: u32 = 100;

/// The registry name of the gRPC service the websocket bridges to: this topic's own, since
/// other topics register greeters of their own on the same NATS.
pub const GREETER: &str = "web-greeter";

/// How long a new websocket may stay silent before the page's request arrives. The page
/// sends it the moment the socket opens, so a real client needs milliseconds; 5 s covers a
/// slow link, and a client silent for longer only holds a connection (1,000 such sockets
/// held 3,000 file descriptors of a gateway and its service until someone killed them).
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a stream may go with no message moving: no reply from the Greeter, or the page
/// taking none. Replies follow each other at once, so 30 s of nothing is a stalled Greeter
/// or a page that stopped reading, and the socket is closed rather than held for ever.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The bounds one websocket is kept within; [`Default`] is the two constants above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketTimeouts {
    pub first_message: Duration,
    pub idle: Duration,
}

impl Default for SocketTimeouts {
    fn default() -> Self {
        SocketTimeouts { first_message: FIRST_MESSAGE_TIMEOUT, idle: IDLE_TIMEOUT }
    }
}

#[derive(Clone)]
pub struct WebService {
    /// This node's id, so answers say who served them.
    pub node_id: String,
    /// Where to find the Greeter: looked up per stream, so a new node is used at once.
    pub registry: Arc<dyn Registry>,
    /// Requests answered, over the node's life: its tally when it stops.
    pub served: Arc<AtomicUsize>,
    /// How long a websocket may wait for its request, and then go without a message.
    pub timeouts: SocketTimeouts,
}

impl WebService {
    pub fn new(node_id: &str, registry: Arc<dyn Registry>) -> Self {
        let (node_id, served, timeouts) = (node_id.to_owned(), Arc::default(), Default::default());
        WebService { node_id, registry, served, timeouts }
    }
}

/// The service's routes. A function, so tests can drive it without a socket.
pub fn router(service: WebService) -> Router {
    let served = Arc::clone(&service.served);
    Router::new()
        .route("/", get(page))
        .route("/greet", get(greet))
        .route("/stream", get(stream))
        .with_state(service)
        .layer(axum::middleware::map_request(move |request: Request<Body>| {
            served.fetch_add(1, Ordering::Relaxed);
            async move { request }
        }))
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

#[derive(Deserialize)]
struct GreetQuery {
    name: Option<String>,
}

/// `GET /greet?name=ada`: the "Hello World" of go-micro's web example.
async fn greet(State(service): State<WebService>, Query(query): Query<GreetQuery>) -> String {
    let name = query.name.unwrap_or_else(|| "world".to_owned());
    format!("hello {name}, from {}", service.node_id)
}

/// What the page sends once the socket is open.
#[derive(Debug, Deserialize, Serialize)]
pub struct StreamRequest {
    pub name: String,
    pub count: u32,
}

/// `GET /stream`: the HTTP request becomes a websocket, then the bridge runs.
async fn stream(State(service): State<WebService>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| bridge(service, socket)).into_response()
}

/// One request in, one websocket message per gRPC reply out, then a close frame whose
/// reason says how it ended. Problems end the socket with a close code, never a panic.
async fn bridge(service: WebService, mut socket: WebSocket) {
    let (code, reason) = match relay(&service, &mut socket).await {
        Ok(sent) => (close_code::NORMAL, format!("{sent} messages")),
        Err((code, reason)) => {
            tracing::warn!(%reason, "websocket stream refused or failed");
            (code, reason)
        }
    };
    let close = CloseFrame { code, reason: reason.into() };
    // Bounded too: a client that reads nothing must not hold the socket by refusing the close.
    let _ =
        tokio::time::timeout(service.timeouts.idle, socket.send(Message::Close(Some(close)))).await;
}

type Failure = (u16, String);

async fn relay(service: &WebService, socket: &mut WebSocket) -> Result<u32, Failure> {
    let SocketTimeouts { first_message, idle } = service.timeouts;
    let request =
        tokio::time::timeout(first_message, read_request(socket)).await.map_err(|_| {
            (
                close_code::POLICY,
                format!("no request within {}s of opening", first_message.as_secs_f32()),
            )
        })??;
    let nodes =
        service.registry.nodes(GREETER).await.map_err(|e| (close_code::ERROR, e.to_string()))?;
    let node = nodes
        .first()
        .ok_or_else(|| (close_code::AGAIN, format!("no node for service {GREETER}")))?;
    let idle_for = || format!("{}s", idle.as_secs_f32());
    let silent = || (close_code::AGAIN, format!("{GREETER} sent nothing for {}", idle_for()));
    let ask = GreetingsRequest { name: request.name, count: request.count, interval_ms: 0 };
    let call = async {
        let address = &node.address;
        let mut greeter = GreeterClient::connect(format!("http://{address}"))
            .await
            .map_err(|e| (close_code::AGAIN, format!("{GREETER} at {address} unreachable: {e}")))?;
        greeter
            .greetings(ask)
            .await
            .map_err(|status| (close_code::ERROR, format!("{GREETER}: {}", status.message())))
    };
    let mut replies = tokio::time::timeout(idle, call).await.map_err(|_| silent())??.into_inner();
    let mut sent = 0;
    // Each reply goes out as soon as it arrives: the page shows a stream, not a batch.
    loop {
        let reply = tokio::time::timeout(idle, replies.message())
            .await
            .map_err(|_| silent())?
            .map_err(|status| (close_code::ERROR, format!("{GREETER}: {}", status.message())))?;
        let Some(reply) = reply else { break };
        let json = serde_json::to_string(&reply).map_err(|e| (close_code::ERROR, e.to_string()))?;
        match tokio::time::timeout(idle, socket.send(Message::Text(json.into()))).await {
            Ok(Ok(())) => sent += 1,
            // The page went away; dropping `replies` cancels the gRPC call too.
            Ok(Err(_)) => {
                return Err((close_code::AWAY, format!("client left after {sent} messages")));
            }
            Err(_) => {
                let reason = format!("client took no message for {}", idle_for());
                return Err((close_code::POLICY, reason));
            }
        }
    }
    Ok(sent)
}

/// Waits for the page's one request and checks it.
async fn read_request(socket: &mut WebSocket) -> Result<StreamRequest, Failure> {
    let text = loop {
        match socket.recv().await {
            Some(Ok(Message::Text(text))) => break text,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(_)) => {
                return Err((close_code::UNSUPPORTED, "send the request as text".into()));
            }
            Some(Err(e)) => return Err((close_code::PROTOCOL, e.to_string())),
            None => return Err((close_code::AWAY, "closed before asking".into())),
        }
    };
    let request: StreamRequest = serde_json::from_str(&text)
        .map_err(|e| (close_code::INVALID, format!("bad request: {e}")))?;
    if !(1..=MAX_COUNT).contains(&request.count) {
        let reason = format!("bad request: count must be 1 to {MAX_COUNT}, not {}", request.count);
        return Err((close_code::POLICY, reason));
    }
    Ok(request)
}

#[cfg(test)]
pub mod tests;
