//! The web service: plain HTTP routes, a page, and a websocket that bridges the page to the
//! Greeter's server-streaming call. It knows nothing of the gateway in front of it.

use std::sync::Arc;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use microkit::proto::greeter::GreetingsRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::registry::Registry;
use serde::{Deserialize, Serialize};

/// The most greetings one websocket may ask for: every request is bounded work.
pub const MAX_COUNT: u32 = 100;

/// The registry name of the gRPC service the websocket bridges to.
pub const GREETER: &str = "greeter";

#[derive(Clone)]
pub struct WebService {
    /// This node's id, so answers say who served them.
    pub node_id: String,
    /// Where to find the Greeter: looked up per stream, so a new node is used at once.
    pub registry: Arc<dyn Registry>,
}

/// The service's routes. A function, so tests can drive it without a socket.
pub fn router(service: WebService) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/greet", get(greet))
        .route("/stream", get(stream))
        .with_state(service)
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
    let _ = socket.send(Message::Close(Some(close))).await;
}

type Failure = (u16, String);

async fn relay(service: &WebService, socket: &mut WebSocket) -> Result<u32, Failure> {
    let request = read_request(socket).await?;
    let nodes =
        service.registry.nodes(GREETER).await.map_err(|e| (close_code::ERROR, e.to_string()))?;
    let node = nodes
        .first()
        .ok_or_else(|| (close_code::AGAIN, format!("no node for service {GREETER}")))?;
    let mut greeter =
        GreeterClient::connect(format!("http://{}", node.address)).await.map_err(|e| {
            (close_code::AGAIN, format!("{GREETER} at {} unreachable: {e}", node.address))
        })?;

    let ask = GreetingsRequest { name: request.name, count: request.count, interval_ms: 0 };
    let mut replies = greeter
        .greetings(ask)
        .await
        .map_err(|status| (close_code::ERROR, format!("{GREETER}: {}", status.message())))?
        .into_inner();
    let mut sent = 0;
    // Each reply goes out as soon as it arrives: the page shows a stream, not a batch.
    while let Some(reply) = replies
        .message()
        .await
        .map_err(|status| (close_code::ERROR, format!("{GREETER}: {}", status.message())))?
    {
        let json = serde_json::to_string(&reply).map_err(|e| (close_code::ERROR, e.to_string()))?;
        if socket.send(Message::Text(json.into())).await.is_err() {
            // The page went away; dropping `replies` cancels the gRPC call too.
            return Err((close_code::AWAY, format!("client left after {sent} messages")));
        }
        sent += 1;
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
