//! Tests of `gateway.rs`.

use std::time::Duration;

use axum::http::StatusCode;
use registry::MemoryRegistry;

use super::*;
use crate::service::tests::call;
use crate::service::{GREETER, WebService};

const TTL: Duration = Duration::from_secs(60);

fn registry() -> Arc<dyn Registry> {
    Arc::new(MemoryRegistry::new())
}

#[tokio::test]
async fn the_gateway_lists_forwards_and_forgets() {
    let registry = registry();
    let gateway = router(Gateway::new(registry.clone()));
    assert_eq!(call(gateway.clone(), "/").await.1, "no web services registered\n");

    let service = WebService::new("hello-1", registry.clone());
    let hello = microkit_http::start(crate::service::router(service)).await.unwrap();
    registry.register(&web_node("hello", "hello-1", hello.addr()), TTL).await.unwrap();
    // A node of another registry name is not a web service, and is not listed.
    registry.register(&Node::new(GREETER, "greeter-1", "127.0.0.1:1"), TTL).await.unwrap();

    assert_eq!(call(gateway.clone(), "/").await.1, "hello: 1 node(s) -> /hello/\n");
    assert_eq!(call(gateway.clone(), "/hello/greet?name=cy").await.1, "hello cy, from hello-1");
    assert_eq!(
        call(gateway.clone(), "/hello").await,
        (StatusCode::PERMANENT_REDIRECT, "-> /hello/".into())
    );
    let (status, page) = call(gateway.clone(), "/hello/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<title>greetings over a websocket</title>"));
    let (status, body) = call(gateway.clone(), "/greeter/").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    registry.deregister("web", "hello-1").await.unwrap();
    let (status, body) = call(gateway.clone(), "/hello/greet").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_FOUND, "no web service named \"hello\" is registered")
    );
    hello.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_registered_node_that_is_down_is_a_bad_gateway_naming_it() {
    let registry = registry();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    registry.register(&web_node("ghost", "ghost-1", closed), TTL).await.unwrap();
    let (status, body) = call(router(Gateway::new(registry)), "/ghost/x").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains(&closed.to_string()), "{body}");
}

#[tokio::test]
async fn requests_rotate_over_the_nodes_of_a_service() {
    let registry = registry();
    let mut servers = Vec::new();
    for id in ["hello-1", "hello-2"] {
        let service = WebService::new(id, registry.clone());
        let server = microkit_http::start(crate::service::router(service)).await.unwrap();
        registry.register(&web_node("hello", id, server.addr()), TTL).await.unwrap();
        servers.push(server);
    }
    let gateway = Gateway::new(registry);
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(call(router(gateway.clone()), "/hello/greet?name=x").await.1);
    }
    let from: Vec<&str> = answers.iter().map(|a| a.rsplit(' ').next().unwrap()).collect();
    assert_eq!(from, ["hello-1", "hello-2", "hello-1", "hello-2"]);
    assert_eq!(gateway.forwarded(), 4);
}
#[tokio::test]
async fn the_trailing_slash_redirect_never_points_at_another_host() {
    let gateway = router(Gateway::new(registry()));
    for (path, refusal) in [
        ("/%2Fevil.example", "scheme-relative URL"),
        ("/%5Cevil.example", "backslash"),
        ("/%252Fevil.example", "scheme-relative URL"),
        ("/evil%0D%0ALocation:%20x", "control character"),
        ("/%2E%2E", "`..` in the path"),
    ] {
        let (status, body) = call(gateway.clone(), path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(body.starts_with("refused redirect: ") && body.contains(refusal), "{body}");
    }
    assert_eq!(
        call(gateway, "/hello%20world").await,
        (StatusCode::PERMANENT_REDIRECT, "-> /hello%20world/".into())
    );
}

#[tokio::test]
async fn the_node_gets_the_path_as_the_client_sent_it() {
    let registry = registry();
    let echo = Router::new().fallback(|uri: Uri| async move { uri.to_string() });
    let echo = microkit_http::start(echo).await.unwrap();
    registry.register(&web_node("echo", "echo-1", echo.addr()), TTL).await.unwrap();
    let gateway = router(Gateway::new(registry));
    for (path, seen) in [
        ("/echo/a%20b", "/a%20b"),
        ("/echo/a%3Fb?x=%26", "/a%3Fb?x=%26"),
        ("/echo/a%23b/c", "/a%23b/c"),
        ("/echo/?q=/x", "/?q=/x"),
    ] {
        assert_eq!(call(gateway.clone(), path).await, (StatusCode::OK, seen.into()), "{path}");
    }
}

const SHORT: SpliceTimeouts =
    SpliceTimeouts { first_byte: Duration::from_millis(200), idle: Duration::from_millis(300) };

#[tokio::test]
async fn a_spliced_client_that_says_nothing_is_cut_after_the_first_byte_timeout() {
    let (client, _client_far) = tokio::io::duplex(64);
    let (node, mut node_far) = tokio::io::duplex(64);
    let started = std::time::Instant::now();
    // The node speaking does not count: the client's first byte is what is awaited.
    node_far.write_all(b"hello").await.unwrap();
    assert_eq!(splice(client, node, SHORT).await, Ended::NoFirstByte);
    assert!(started.elapsed() >= SHORT.first_byte);
    assert!(started.elapsed() < SHORT.idle, "the first-byte bound, not the idle one");
}

#[tokio::test]
async fn a_spliced_connection_carries_bytes_both_ways_then_is_cut_when_idle() {
    let (client, mut client_far) = tokio::io::duplex(64);
    let (node, mut node_far) = tokio::io::duplex(64);
    let spliced = tokio::spawn(splice(client, node, SHORT));
    let mut buffer = [0u8; 4];
    // Traffic for longer than either bound keeps it open.
    for turn in 0..4 {
        if turn > 0 {
            tokio::time::sleep(SHORT.idle / 2).await;
        }
        client_far.write_all(b"ping").await.unwrap();
        node_far.read_exact(&mut buffer).await.unwrap();
        assert_eq!(&buffer, b"ping");
        node_far.write_all(b"pong").await.unwrap();
        client_far.read_exact(&mut buffer).await.unwrap();
        assert_eq!(&buffer, b"pong");
    }
    let quiet = std::time::Instant::now();
    assert_eq!(spliced.await.unwrap(), Ended::Idle);
    // The gateway's clock started when it passed the pong on, a moment before this one.
    let waited = quiet.elapsed() + Duration::from_millis(50);
    assert!(waited >= SHORT.idle, "cut only once nothing moved for the idle timeout");
    // Both far ends see the cut.
    assert_eq!(client_far.read(&mut buffer).await.unwrap(), 0);
    assert_eq!(node_far.read(&mut buffer).await.unwrap(), 0);
}

#[tokio::test]
async fn when_the_node_closes_the_client_is_let_go_too() {
    let (client, mut client_far) = tokio::io::duplex(64);
    let (node, node_far) = tokio::io::duplex(64);
    let spliced = tokio::spawn(splice(client, node, SpliceTimeouts::default()));
    client_far.write_all(b"hi").await.unwrap();
    drop(node_far);
    assert_eq!(spliced.await.unwrap(), Ended::NodeClosed);
    let mut buffer = [0u8; 4];
    assert_eq!(client_far.read(&mut buffer).await.unwrap(), 0, "the client's half is closed");
}
