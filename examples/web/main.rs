//! # web: an HTTP service that joins discovery, and a gateway that finds it
//!
//! go-micro's `web.NewService` was an HTTP server that registered itself in the registry,
//! so `micro web` could list it and proxy `/<service>/...` to it. Its example stopped at
//! a "Hello World" handler: it never showed the gateway finding the service, the service
//! leaving on shutdown, or a websocket surviving the trip through the proxy.
//!
//! Here, in one process:
//! - `service.rs`: an axum service (`hello`) with a page, a `greet` route and a websocket
//!   that bridges the page to the Greeter's server-streaming gRPC call;
//! - `gateway.rs`: the gateway, which lists the web services in the registry and forwards
//!   `/<service>/...` (websockets included) to one of their nodes;
//! - this file: registers both services, drives the gateway as a browser would, then shuts
//!   the web service down and shows the gateway forgetting it.
//!
//! Run it:
//!
//! ```text
//! cargo run --example web                        # --backend memory|nats picks the registry
//! cargo run --example web -- serve --port 8080    # then open http://127.0.0.1:8080/hello/
//!
//! # or as separate processes, over a shared NATS (nats-server -js):
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example web -- service --id hello-1
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example web -- service --id hello-2
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example web -- gateway --port 8080
//! ```
//!
//! It prints (the golden file `tests/golden/web.txt` holds exactly this):
//!
//! ```text
//! greeter-1 registered as greeter; hello-1 registered as web service hello
//! GET / -> 200
//!   hello: 1 node(s) -> /hello/
//! GET /hello/greet?name=ada -> 200
//!   hello ada, from hello-1
//! GET /nobody/greet -> 404
//!   no web service named "nobody" is registered
//! GET /hello -> 308
//!   location: /hello/
//! GET /hello/ -> 200
//!   html page: greetings over a websocket
//! websocket ws://gateway/hello/stream: 3 greetings for ada
//!   hello ada (seq 1, from greeter-1)
//!   hello ada (seq 2, from greeter-1)
//!   hello ada (seq 3, from greeter-1)
//!   closed: 1000 3 messages
//! hello-1 deregisters, then shuts down
//! GET / -> 200
//!   no web services registered
//! GET /hello/greet?name=ada -> 404
//!   no web service named "hello" is registered
//! ```
//!
//! Read it beside `notes/web.md`.

mod gateway;
mod service;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::body::Body;
use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use microkit::backend::BackendArgs;
use microkit::http::{Forwarder, HttpServer, body_text};
use microkit::registry::{Node, Registration, Registry};
use microkit::server::RunningServer;
use microkit::{Out, say};
use tokio_tungstenite::tungstenite::Message;

use gateway::{Gateway, web_node};
use service::{GREETER, StreamRequest, WebService};

/// How long a node stays listed without a heartbeat.
const TTL: Duration = Duration::from_secs(10);

/// Every network step of the demo gives up after this long instead of hanging.
const STEP_LIMIT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(about = "an HTTP service that registers itself, and a gateway that discovers it")]
struct Args {
    /// How many greetings the demo asks for over the websocket.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=service::MAX_COUNT as i64))]
    count: u32,

    #[command(flatten)]
    backend: BackendArgs,

    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Run the greeter, the web service and the gateway until ctrl-c, for a real browser.
    Serve {
        /// The gateway's port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Run one node of the web service `hello` (and a greeter beside it) until ctrl-c or
    /// SIGTERM, registered in the shared registry (needs NATS_URL).
    Service {
        /// The node's id, e.g. hello-2.
        #[arg(long, default_value = "hello-1")]
        id: String,
    },
    /// Run the gateway alone, finding web services in the shared registry (needs NATS_URL).
    Gateway {
        /// The gateway's port on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse(), &Out::stdout()).await)
}

async fn run(args: Args, out: &Out) -> anyhow::Result<()> {
    let backend = args.backend.connect().await?;
    tracing::info!(backend = backend.name(), "running");
    let registry = backend.registry();
    match args.role {
        None => {
            let mut edge = Edge::start(&registry, 0).await?;
            demo(&mut edge, args.count, out).await?;
            edge.stop().await
        }
        Some(Role::Serve { port }) => {
            let edge = Edge::start(&registry, port).await?;
            say!(out, "open {}/hello/ in a browser; ctrl-c stops", edge.gateway.url());
            microkit::signal::stop_requested().await?;
            edge.stop().await
        }
        Some(Role::Service { id }) => {
            backend.require_shared_nats("the service and gateway roles")?;
            let greeter = start_greeter(&registry, &format!("greeter-for-{id}")).await?;
            let web = start_web(&registry, &id).await?;
            say!(out, "{id} serving web service hello on {}; ctrl-c stops", web.0.url());
            microkit::signal::stop_requested().await?;
            stop_web(web).await?;
            stop_greeter(greeter).await
        }
        Some(Role::Gateway { port }) => {
            backend.require_shared_nats("the service and gateway roles")?;
            let gateway = start_gateway(&registry, port).await?;
            say!(out, "gateway on {}; ctrl-c stops", gateway.url());
            microkit::signal::stop_requested().await?;
            Ok(gateway.shutdown().await?)
        }
    }
}

type GreeterNode = (RunningServer, Registration);
type WebNode = (HttpServer, Registration);

async fn start_greeter(registry: &Arc<dyn Registry>, id: &str) -> anyhow::Result<GreeterNode> {
    let server = microkit::greeter::serve(id).await?;
    let node = Node::new(GREETER, id, server.addr());
    Ok((server, Registration::start(registry.clone(), node, TTL).await?))
}

/// The web service registers itself once it listens: `web.NewService` in go-micro.
async fn start_web(registry: &Arc<dyn Registry>, id: &str) -> anyhow::Result<WebNode> {
    let service = WebService { node_id: id.into(), registry: registry.clone() };
    let server = HttpServer::start(service::router(service)).await?;
    let node = web_node("hello", id, server.addr());
    Ok((server, Registration::start(registry.clone(), node, TTL).await?))
}

async fn start_gateway(registry: &Arc<dyn Registry>, port: u16) -> anyhow::Result<HttpServer> {
    let address = ([127, 0, 0, 1], port).into();
    HttpServer::start_on(address, gateway::router(Gateway::new(registry.clone())))
        .await
        .with_context(|| format!("cannot listen on {address}"))
}

/// A graceful stop of a web node: leave the registry first, then stop serving, so the
/// gateway stops sending requests before the node stops answering them.
async fn stop_web((server, registration): WebNode) -> anyhow::Result<()> {
    registration.deregister().await?;
    Ok(server.shutdown().await?)
}

async fn stop_greeter((server, registration): GreeterNode) -> anyhow::Result<()> {
    registration.deregister().await?;
    server.shutdown().await
}

/// The three servers of the one-process run, each registered where it belongs.
struct Edge {
    greeter: GreeterNode,
    hello: Option<WebNode>,
    gateway: HttpServer,
}

impl Edge {
    async fn start(registry: &Arc<dyn Registry>, gateway_port: u16) -> anyhow::Result<Self> {
        let greeter = start_greeter(registry, "greeter-1").await?;
        let hello = start_web(registry, "hello-1").await?;
        let gateway = start_gateway(registry, gateway_port).await?;
        Ok(Edge { greeter, hello: Some(hello), gateway })
    }

    async fn stop_hello(&mut self) -> anyhow::Result<()> {
        match self.hello.take() {
            Some(hello) => stop_web(hello).await,
            None => Ok(()),
        }
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        self.stop_hello().await?;
        self.gateway.shutdown().await?;
        stop_greeter(self.greeter).await
    }
}

async fn demo(edge: &mut Edge, count: u32, out: &Out) -> anyhow::Result<()> {
    let client = Forwarder::new();
    let gateway = edge.gateway.addr();
    say!(out, "greeter-1 registered as {GREETER}; hello-1 registered as web service hello");
    get(&client, gateway, "/", out).await?;
    get(&client, gateway, "/hello/greet?name=ada", out).await?;
    get(&client, gateway, "/nobody/greet", out).await?;
    get(&client, gateway, "/hello", out).await?;
    get(&client, gateway, "/hello/", out).await?;

    say!(out, "websocket ws://gateway/hello/stream: {count} greetings for ada");
    let (messages, closed) = websocket(&format!("ws://{gateway}/hello/stream"), count).await?;
    for message in &messages {
        say!(out, "  {message}");
    }
    say!(out, "  closed: {closed}");

    say!(out, "hello-1 deregisters, then shuts down");
    edge.stop_hello().await?;
    get(&client, gateway, "/", out).await?;
    get(&client, gateway, "/hello/greet?name=ada", out).await?;
    Ok(())
}

/// One GET through the gateway, printed as `GET path -> status: first line of the body`.
async fn get(
    client: &Forwarder,
    gateway: std::net::SocketAddr,
    path: &str,
    out: &Out,
) -> anyhow::Result<()> {
    let request = http::Request::get(format!("http://{gateway}{path}")).body(Body::empty())?;
    let response = tokio::time::timeout(STEP_LIMIT, client.send(request))
        .await
        .context("gateway timed out")??;
    let status = response.status();
    let location = response.headers().get(http::header::LOCATION).cloned();
    let content_type = response.headers().get(http::header::CONTENT_TYPE).cloned();
    let body = body_text(response.into_body(), 64 * 1024).await;
    say!(out, "GET {path} -> {}", status.as_u16());
    if let Some(location) = location {
        say!(out, "  location: {}", location.to_str().unwrap_or("<not text>"));
    } else if content_type.is_some_and(|t| t.as_bytes().starts_with(b"text/html")) {
        let title = body.split("<title>").nth(1).and_then(|t| t.split("</title>").next());
        say!(out, "  html page: {}", title.unwrap_or("<untitled>"));
    } else {
        for line in body.lines() {
            say!(out, "  {line}");
        }
    }
    Ok(())
}

/// Plays the page's part: asks for `count` greetings and collects them as they arrive.
async fn websocket(url: &str, count: u32) -> anyhow::Result<(Vec<String>, String)> {
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
    tokio::time::timeout(STEP_LIMIT, session).await.context("websocket timed out")?
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{Request, StatusCode};
    use microkit::registry::MemoryRegistry;
    use tower::ServiceExt;

    #[tokio::test]
    async fn prints_its_golden_output() {
        let out = Out::capture();
        run(Args::parse_from(["web"]), &out).await.unwrap();
        microkit::golden::assert_matches("web", &out.text());
    }

    #[test]
    fn a_count_out_of_range_is_refused_by_the_parser() {
        for count in ["0", "101", "many"] {
            assert!(Args::try_parse_from(["web", "--count", count]).is_err(), "{count}");
        }
    }

    async fn call(router: axum::Router, path: &str) -> (StatusCode, String) {
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
    async fn service_routes_answer_without_a_socket() {
        let service =
            service::router(WebService { node_id: "hello-9".into(), registry: registry() });
        let (status, page) = call(service.clone(), "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("new WebSocket(streamUrl())"), "the page opens the websocket");
        assert_eq!(call(service.clone(), "/greet").await.1, "hello world, from hello-9");
        assert_eq!(call(service.clone(), "/greet?name=bo").await.1, "hello bo, from hello-9");
        // A plain GET is not a websocket handshake, and is refused as such.
        let (status, _) = call(service, "/stream").await;
        assert!(status.is_client_error(), "{status}");
    }

    #[tokio::test]
    async fn the_gateway_lists_forwards_and_forgets() {
        let registry = registry();
        let gateway = gateway::router(Gateway::new(registry.clone()));
        assert_eq!(call(gateway.clone(), "/").await.1, "no web services registered\n");

        let service = WebService { node_id: "hello-1".into(), registry: registry.clone() };
        let hello = HttpServer::start(service::router(service)).await.unwrap();
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
            (StatusCode::NOT_FOUND, "no web service named \"hello\" is registered\n")
        );
        hello.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_registered_node_that_is_down_is_a_bad_gateway_naming_it() {
        let registry = registry();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        registry.register(&web_node("ghost", "ghost-1", closed), TTL).await.unwrap();
        let (status, body) = call(gateway::router(Gateway::new(registry)), "/ghost/x").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(body.contains(&closed.to_string()), "{body}");
    }

    #[tokio::test]
    async fn requests_rotate_over_the_nodes_of_a_service() {
        let registry = registry();
        let mut servers = Vec::new();
        for id in ["hello-1", "hello-2"] {
            let service = WebService { node_id: id.into(), registry: registry.clone() };
            let server = HttpServer::start(service::router(service)).await.unwrap();
            registry.register(&web_node("hello", id, server.addr()), TTL).await.unwrap();
            servers.push(server);
        }
        let gateway = gateway::router(Gateway::new(registry));
        let mut answers = Vec::new();
        for _ in 0..4 {
            answers.push(call(gateway.clone(), "/hello/greet?name=x").await.1);
        }
        let from: Vec<&str> = answers.iter().map(|a| a.rsplit(' ').next().unwrap()).collect();
        assert_eq!(from, ["hello-1", "hello-2", "hello-1", "hello-2"]);
    }

    /// Sends `request` over the stream websocket of a fresh service; returns the texts and
    /// the close frame's code and reason.
    async fn stream_once(registry: Arc<dyn Registry>, request: &str) -> (Vec<String>, u16, String) {
        let service = WebService { node_id: "hello-1".into(), registry };
        let server = HttpServer::start(service::router(service)).await.unwrap();
        let url = format!("ws://{}/stream", server.addr());
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        socket.send(Message::text(request)).await.unwrap();
        let mut texts = Vec::new();
        let result = tokio::time::timeout(STEP_LIMIT, async {
            while let Some(message) = socket.next().await {
                match message.unwrap() {
                    Message::Text(text) => texts.push(text.to_string()),
                    Message::Close(Some(frame)) => {
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
        registry.register(&Node::new(GREETER, "greeter-7", greeter.addr()), TTL).await.unwrap();
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
        assert_eq!((code, reason.as_str()), (1013, "no node for service greeter"));
    }
}
