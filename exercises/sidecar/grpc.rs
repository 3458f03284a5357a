//! Protocol conversion: JSON in, a gRPC call to the Greeter, JSON out.
//!
//! The sidecar can only convert what it has a schema for. Here that is the Greeter, whose
//! generated types derive serde; a general sidecar would load schemas at run time (gRPC
//! server reflection, or descriptor sets) instead of compiling them in.

use axum::http::StatusCode;
use futures::StreamExt;
use health::Channels;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::{GreetingsRequest, HelloRequest};
use registry::Node;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::sidecar::JsonError;

/// The Greeter's methods, by their proto names.
pub const METHODS: [&str; 4] = ["SayHello", "Greetings", "CollectNames", "Chat"];

/// The most replies one HTTP request may ask a stream for: every request is bounded.
pub const MAX_STREAM: u32 = 100;

/// Calls `method` on the Greeter `node` with the JSON `body`, over the node's channel.
pub async fn call(
    channels: &Channels,
    node: &Node,
    method: &str,
    body: &[u8],
) -> Result<String, JsonError> {
    let service = &node.service;
    if !METHODS.contains(&method) {
        let offered = METHODS.join(", ");
        return Err(JsonError::new(
            StatusCode::NOT_FOUND,
            format!("{service} has no method {method:?}; it offers {offered}"),
        ));
    }
    let what = format!("{service}.{method}");
    // Parse first: a caller's mistake should not cost a call.
    let request = Request::parse(method, body)
        .map_err(|(kind, detail)| JsonError::bad_request(format!("{kind} for {what}: {detail}")))?;
    let channel = channels.to(node).map_err(|e| {
        JsonError::bad_gateway(format!("bad address for {service}: {}", e.message()))
    })?;
    let mut client = GreeterClient::new(channel);
    let failed = |status: tonic::Status| from_status(&what, node, status);

    match request {
        Request::SayHello(request) => {
            json(&client.say_hello(request).await.map_err(failed)?.into_inner())
        }
        Request::Greetings(request) => {
            // A server stream becomes one JSON array: HTTP/1 request-response has no
            // natural way to hand out replies one by one (the web example's websocket does).
            let stream = client.greetings(request).await.map_err(failed)?.into_inner();
            let replies: Result<Vec<_>, _> = stream.collect::<Vec<_>>().await.into_iter().collect();
            json(&replies.map_err(failed)?)
        }
        Request::CollectNames(names) => {
            let summary =
                client.collect_names(futures::stream::iter(names)).await.map_err(failed)?;
            json(&summary.into_inner())
        }
        Request::Chat(names) => {
            // All requests are sent, then the client half-closes; the replies are collected.
            let stream =
                client.chat(futures::stream::iter(names)).await.map_err(failed)?.into_inner();
            let replies: Result<Vec<_>, _> = stream.collect::<Vec<_>>().await.into_iter().collect();
            json(&replies.map_err(failed)?)
        }
    }
}

/// A status the node answered keeps its meaning in HTTP terms; a status tonic made because
/// the node could not be reached (it carries the transport error as its source) is a bad
/// gateway naming the node's address and the cause.
fn from_status(what: &str, node: &Node, status: tonic::Status) -> JsonError {
    match std::error::Error::source(&status) {
        Some(cause) => {
            let mut reason = cause.to_string();
            let mut next = cause.source();
            while let Some(cause) = next {
                reason = format!("{reason}: {cause}");
                next = cause.source();
            }
            let service = &node.service;
            JsonError::bad_gateway(format!("{service} at {} unreachable: {reason}", node.address))
        }
        None => JsonError::new(http_status(status.code()), format!("{what}: {}", status.message())),
    }
}

/// A parsed request, one variant per method shape.
enum Request {
    SayHello(HelloRequest),
    Greetings(GreetingsRequest),
    CollectNames(Vec<HelloRequest>),
    Chat(Vec<HelloRequest>),
}

impl Request {
    /// Errors say what kind of mistake it was and the detail.
    fn parse(method: &str, body: &[u8]) -> Result<Self, (&'static str, String)> {
        Ok(match method {
            "SayHello" => Request::SayHello(from_json(body)?),
            "Greetings" => {
                let request: GreetingsRequest = from_json(body)?;
                // count 0 means "until the client leaves": never over a single HTTP request.
                if !(1..=MAX_STREAM).contains(&request.count) {
                    let count = request.count;
                    return Err((
                        "bad request",
                        format!("count must be 1 to {MAX_STREAM}, not {count}"),
                    ));
                }
                Request::Greetings(GreetingsRequest { interval_ms: 0, ..request })
            }
            "CollectNames" => Request::CollectNames(from_json(body)?),
            _ => Request::Chat(from_json(body)?),
        })
    }
}

fn from_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, (&'static str, String)> {
    serde_json::from_slice(body).map_err(|e| ("bad JSON", e.to_string()))
}

fn json(value: &impl Serialize) -> Result<String, JsonError> {
    serde_json::to_string(value)
        .map_err(|e| JsonError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// gRPC status codes as the HTTP statuses a JSON caller expects.
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    }
}
