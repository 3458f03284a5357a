//! The story the default run tells: browse the gateway as a browser would, stream over a
//! websocket through it, then stop the web service and see the gateway forget it.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use axum::body::Body;
use futures::{SinkExt, StreamExt};
use microkit::PATIENCE;
use microkit_http::{Forwarder, body_text};
use tokio_tungstenite::tungstenite::Message;

use crate::service::{GREETER, StreamRequest};

use crate::edge::Edge;

/// What one GET through the gateway showed: the status, and the lines printed for it.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub status: u16,
    pub lines: Vec<String>,
}

/// What the one-process run saw, for the tests to check.
#[derive(Debug, PartialEq, Eq)]
pub struct Story {
    /// Every GET, in order: the path and what it showed.
    pub gets: Vec<(String, Seen)>,
    /// The greetings that came over the websocket, and how it closed.
    pub greetings: Vec<String>,
    pub closed: String,
}

/// The story: browse the gateway as a browser would, stream over a websocket through it,
/// then stop the web service and see the gateway forget it.
pub async fn demo(edge: &mut Edge, count: u32) -> anyhow::Result<Story> {
    let client = Forwarder::default();
    let gateway = edge.gateway.addr();
    println!("greeter-1 registered as {GREETER}; hello-1 registered as web service hello");
    let mut gets = Vec::new();
    for path in ["/", "/hello/greet?name=ada", "/nobody/greet", "/hello", "/hello/"] {
        gets.push((path.to_owned(), get(&client, gateway, path).await?));
    }

    println!("websocket ws://gateway/hello/stream: {count} greetings for ada");
    let (greetings, closed) = websocket(&format!("ws://{gateway}/hello/stream"), count).await?;
    for message in &greetings {
        println!("  {message}");
    }
    println!("  closed: {closed}");

    println!("hello-1 deregisters, then shuts down");
    edge.stop_hello().await?;
    for path in ["/", "/hello/greet?name=ada"] {
        gets.push((path.to_owned(), get(&client, gateway, path).await?));
    }
    Ok(Story { gets, greetings, closed })
}

/// One GET through the gateway, printed as `GET path -> status` and a line or more: the
/// redirect's target, an HTML page's title, or the body.
pub async fn get(client: &Forwarder, gateway: SocketAddr, path: &str) -> anyhow::Result<Seen> {
    let request = http::Request::get(format!("http://{gateway}{path}")).body(Body::empty())?;
    let response = tokio::time::timeout(PATIENCE, client.send(request))
        .await
        .context("gateway timed out")??;
    let status = response.status().as_u16();
    let location = response.headers().get(http::header::LOCATION).cloned();
    let content_type = response.headers().get(http::header::CONTENT_TYPE).cloned();
    let body = body_text(response.into_body(), 64 * 1024).await;
    let lines = if let Some(location) = location {
        vec![format!("location: {}", location.to_str().unwrap_or("<not text>"))]
    } else if content_type.is_some_and(|t| t.as_bytes().starts_with(b"text/html")) {
        let title = body.split("<title>").nth(1).and_then(|t| t.split("</title>").next());
        vec![format!("html page: {}", title.unwrap_or("<untitled>"))]
    } else {
        body.lines().map(str::to_owned).collect()
    };
    println!("GET {path} -> {status}");
    for line in &lines {
        println!("  {line}");
    }
    Ok(Seen { status, lines })
}

/// Plays the page's part: asks for `count` greetings and collects them as they arrive.
pub async fn websocket(url: &str, count: u32) -> anyhow::Result<(Vec<String>, String)> {
    let session = async {
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await?;
        let request = StreamRequest { name: "ada".into(), count };
        socket.send(Message::text(serde_json::to_string(&request)?)).await?;
        let mut messages = Vec::new();
        while let Some(message) = socket.next().await {
            match message? {
                Message::Text(text) => {
                    let reply: microkit::proto::greeter::HelloReply = serde_json::from_str(&text)?;
                    messages.push(format!(
                        "{} (seq {}, from {})",
                        reply.message, reply.seq, reply.node
                    ));
                }
                Message::Close(frame) => {
                    let closed = frame
                        .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                        .unwrap_or_else(|| "without a reason".into());
                    return anyhow::Ok((messages, closed));
                }
                _ => {}
            }
        }
        bail!("the websocket ended without a close frame")
    };
    tokio::time::timeout(PATIENCE, session).await.context("websocket timed out")?
}
