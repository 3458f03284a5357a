//! Tests of `service.rs`, and the helpers other tests use to drive the service.

use axum::http::StatusCode;
use futures::{SinkExt, StreamExt};
use microkit::PATIENCE;
use microkit_http::body_text;
use registry::{MemoryRegistry, Node};
use tokio_tungstenite::tungstenite;
use tower::ServiceExt;

use super::*;

/// One GET through `router`: the status, and the body (or `-> <location>` for a redirect).
pub async fn call(router: Router, path: &str) -> (StatusCode, String) {
    let request = Request::get(path).body(Body::empty()).unwrap();
    let response = router.oneshot(request).await.unwrap();
    let status = response.status();
    let location = response.headers().get(http::header::LOCATION).cloned();
    let body = body_text(response.into_body(), 1 << 20).await;
    match location {
        Some(location) => (status, format!("-> {}", location.to_str().unwrap())),
        None => (status, body),
    }
}

fn registry() -> Arc<dyn Registry> {
    Arc::new(MemoryRegistry::new())
}

#[tokio::test]
async fn service_routes_answer_without_a_socket_and_are_counted() {
    let service = WebService::new("hello-9", registry());
    let served = Arc::clone(&service.served);
    let service = router(service);
    let (status, page) = call(service.clone(), "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("new WebSocket(streamUrl())"), "the page opens the websocket");
    assert_eq!(call(service.clone(), "/greet").await.1, "hello world, from hello-9");
    assert_eq!(call(service.clone(), "/greet?name=bo").await.1, "hello bo, from hello-9");
    // A plain GET is not a websocket handshake, and is refused as such.
    let (status, _) = call(service, "/stream").await;
    assert!(status.is_client_error(), "{status}");
    assert_eq!(served.load(Ordering::Relaxed), 4);
}

/// Sends `request` over the stream websocket of a fresh service; returns the texts and
/// the close frame's code and reason.
async fn stream_once(registry: Arc<dyn Registry>, request: &str) -> (Vec<String>, u16, String) {
    stream_within(WebService::new("hello-1", registry), Some(request)).await
}

/// The same with `service` as given, and the request sent only if there is one.
async fn stream_within(service: WebService, request: Option<&str>) -> (Vec<String>, u16, String) {
    let server = microkit_http::start(router(service)).await.unwrap();
    let url = format!("ws://{}/stream", server.addr());
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    if let Some(request) = request {
        socket.send(tungstenite::Message::text(request)).await.unwrap();
    }
    let mut texts = Vec::new();
    let result = tokio::time::timeout(PATIENCE, async {
        while let Some(message) = socket.next().await {
            match message.unwrap() {
                tungstenite::Message::Text(text) => texts.push(text.to_string()),
                tungstenite::Message::Close(Some(frame)) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                _ => {}
            }
        }
        panic!("no close frame")
    })
    .await
    .expect("the stream must end");
    (texts, result.0, result.1)
}

#[tokio::test]
async fn the_websocket_relays_every_reply_then_closes_normally() {
    let registry = registry();
    let greeter = microkit::greeter::serve("greeter-7").await.unwrap();
    let node = Node::new(GREETER, "greeter-7", greeter.addr());
    registry.register(&node, std::time::Duration::from_secs(60)).await.unwrap();
    let (texts, code, reason) = stream_once(registry, r#"{"name":"dee","count":4}"#).await;
    let seqs: Vec<u32> = texts
        .iter()
        .map(|t| serde_json::from_str::<microkit::proto::greeter::HelloReply>(t).unwrap().seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4], "every reply, in order, none lost");
    assert_eq!((code, reason.as_str()), (1000, "4 messages"));
    greeter.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_stream_requests_are_closed_with_a_reason() {
    let (texts, code, reason) = stream_once(registry(), "not json").await;
    assert!(texts.is_empty());
    assert_eq!(code, 1007);
    assert!(reason.starts_with("bad request: expected"), "{reason}");

    let (_, code, reason) = stream_once(registry(), r#"{"name":"a","count":0}"#).await;
    assert_eq!((code, reason.as_str()), (1008, "bad request: count must be 1 to 100, not 0"));

    // No Greeter registered: the page is told which service is missing.
    let (_, code, reason) = stream_once(registry(), r#"{"name":"a","count":2}"#).await;
    assert_eq!((code, reason.as_str()), (1013, "no node for service web-greeter"));
}

#[tokio::test]
async fn a_socket_that_never_asks_is_closed_after_the_first_message_timeout() {
    let mut service = WebService::new("hello-1", registry());
    let first_message = Duration::from_millis(300);
    service.timeouts = SocketTimeouts { first_message, idle: Duration::from_secs(60) };
    let started = std::time::Instant::now();
    let (texts, code, reason) = stream_within(service, None).await;
    assert!(started.elapsed() >= first_message, "closed before its time");
    assert!(texts.is_empty());
    assert_eq!((code, reason.as_str()), (1008, "no request within 0.3s of opening"));
}

#[tokio::test]
async fn a_greeter_that_goes_quiet_mid_stream_closes_the_socket_after_the_idle_timeout() {
    // A Greeter that accepts connections and never answers: the stream stalls at once.
    let registry = registry();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = Node::new(GREETER, "greeter-7", silent.local_addr().unwrap());
    registry.register(&node, Duration::from_secs(60)).await.unwrap();
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let mut service = WebService::new("hello-1", registry.clone());
    let idle = Duration::from_millis(300);
    service.timeouts = SocketTimeouts { first_message: Duration::from_secs(60), idle };
    let server = microkit_http::start(router(service)).await.unwrap();
    let url = format!("ws://{}/stream", server.addr());
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket.send(tungstenite::Message::text(r#"{"name":"a","count":2}"#)).await.unwrap();
    let closed = tokio::time::timeout(PATIENCE, async {
        while let Some(message) = socket.next().await {
            if let tungstenite::Message::Close(Some(frame)) = message.unwrap() {
                return (u16::from(frame.code), frame.reason.to_string());
            }
        }
        panic!("no close frame")
    })
    .await
    .expect("the stalled stream must be closed");
    assert_eq!(closed, (1013, "web-greeter sent nothing for 0.3s".to_owned()));
}
