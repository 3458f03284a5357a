//! # web: an HTTP service that joins discovery, and a gateway that finds it
//!
//! An HTTP service joins discovery the way a gRPC one does: once it listens, it registers
//! itself (here under the registry name `web`, labelled `hello`) and keeps its lease alive;
//! on a graceful stop it deregisters before it stops answering. The lesson is the other
//! side, the gateway in `gateway.rs`: it holds no list of its own, asks the registry on
//! every request (`Gateway::services`), and forwards `/<service>/...` to one of the nodes
//! it found, websockets included (`Gateway::forward`); its `/` is a live page of every node
//! and its health (`dashboard.rs`). `service.rs` is the service: a page, a `greet` route and
//! a websocket bridged to the Greeter's server-streaming call.
//!
//! go-micro's `web.NewService` example stopped at a "Hello World" handler: it never showed
//! the gateway finding the service, the service leaving, or a websocket through the proxy.
//! Run it:
//!
//! ```text
//! cargo run --example web                        # --backend memory|nats picks the registry
//! cargo run --example web -- serve --port 8080    # then open http://127.0.0.1:8080/hello/
//! # or as separate processes, over a shared NATS (nats-server -js):
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example web -- service --id hello-1
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example web -- service --id hello-2
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example web -- gateway --port 8080
//! ```
//!
//! Prints `tests/golden/web.txt`; explained in `notes/web.md`.

mod dashboard;
mod gateway;
// The redirect example's allow-list, compiled here unchanged: the gateway's own redirect
// follows the same rules as any other.
#[path = "../redirect/policy.rs"]
mod policy;
mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::body::Body;
use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use microkit::PATIENCE;
use microkit::backend::BackendArgs;
use microkit::http::{Forwarder, HttpServer, body_text};
use microkit::registered::Registered;
use microkit::registry::Registry;
use microkit::server::RunningServer;
use tokio_tungstenite::tungstenite::Message;

use gateway::{Gateway, web_node};
use service::{GREETER, StreamRequest, WebService};

/// How long a node stays listed without a heartbeat.
const TTL: Duration = Duration::from_secs(10);

/// What one GET through the gateway showed: the status, and the lines printed for it.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    lines: Vec<String>,
}

/// What the one-process run saw, for the tests to check.
#[derive(Debug, PartialEq, Eq)]
struct Story {
    /// Every GET, in order: the path and what it showed.
    gets: Vec<(String, Seen)>,
    /// The greetings that came over the websocket, and how it closed.
    greetings: Vec<String>,
    closed: String,
}

/// The story: browse the gateway as a browser would, stream over a websocket through it,
/// then stop the web service and see the gateway forget it.
async fn demo(edge: &mut Edge, count: u32) -> anyhow::Result<Story> {
    let client = Forwarder::new();
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
async fn get(client: &Forwarder, gateway: SocketAddr, path: &str) -> anyhow::Result<Seen> {
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
    tokio::time::timeout(PATIENCE, session).await.context("websocket timed out")?
}

async fn start_greeter(
    registry: &Arc<dyn Registry>,
    id: &str,
) -> anyhow::Result<Registered<RunningServer>> {
    let server = microkit::greeter::serve(id).await?;
    Ok(Registered::new(registry, server, GREETER, id, TTL).await?)
}

/// The web service registers itself once it listens: `web.NewService` in go-micro. Its
/// graceful stop (`Registered::stop`) leaves the registry first, then stops serving, so the
/// gateway stops sending requests before the node stops answering them.
async fn start_web(
    registry: &Arc<dyn Registry>,
    id: &str,
) -> anyhow::Result<(Registered<HttpServer>, WebService)> {
    let service = WebService::new(id, registry.clone());
    let server = HttpServer::start_healthy(service::router(service.clone())).await?;
    let node = web_node("hello", id, server.addr());
    Ok((Registered::with_node(registry, server, node, TTL).await?, service))
}

async fn start_gateway(
    registry: &Arc<dyn Registry>,
    port: u16,
) -> anyhow::Result<(HttpServer, Gateway)> {
    let address = ([127, 0, 0, 1], port).into();
    let gateway = Gateway::new(registry.clone());
    let server = HttpServer::start_healthy_on(address, gateway::router(gateway.clone()))
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    Ok((server, gateway))
}

/// The three servers of the one-process run, each registered where it belongs.
struct Edge {
    greeter: Registered<RunningServer>,
    hello: Option<Registered<HttpServer>>,
    service: WebService,
    gateway: HttpServer,
    routes: Gateway,
}

impl Edge {
    async fn start(registry: &Arc<dyn Registry>, gateway_port: u16) -> anyhow::Result<Self> {
        let greeter = start_greeter(registry, "greeter-1").await?;
        let (hello, service) = start_web(registry, "hello-1").await?;
        let (gateway, routes) = start_gateway(registry, gateway_port).await?;
        Ok(Edge { greeter, hello: Some(hello), service, gateway, routes })
    }

    async fn stop_hello(&mut self) -> anyhow::Result<()> {
        match self.hello.take() {
            Some(hello) => hello.stop().await,
            None => Ok(()),
        }
    }

    /// Stops all three; returns how many requests the gateway forwarded and hello-1 served.
    async fn stop(mut self) -> anyhow::Result<(usize, usize)> {
        self.stop_hello().await?;
        self.gateway.shutdown().await?;
        self.greeter.stop().await?;
        Ok((self.routes.forwarded(), self.service.served.load(Ordering::Relaxed)))
    }
}

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
    /// Run the greeter, the web service and the gateway until stopped (SIGTERM, SIGINT or
    /// SIGHUP), for a real browser.
    Serve {
        /// The gateway's port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Run one node of the web service `hello` (and a greeter beside it) until stopped,
    /// registered in the shared registry (needs NATS_URL).
    Service {
        /// The node's id, e.g. hello-2.
        #[arg(long, default_value = "hello-1")]
        id: String,
        /// On a stop, how long to stay listed while reporting not ready, so balancers and
        /// the gateway's page see it before the node leaves.
        #[arg(long, default_value_t = 0)]
        grace_ms: u64,
    },
    /// Run the gateway alone until stopped, finding web services in the shared registry
    /// (needs NATS_URL).
    Gateway {
        /// The gateway's port on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

fn main() -> std::process::ExitCode {
    microkit::main(run)
}

/// Every long-running role waits the same way: the first stop request starts the graceful
/// stop, a second one exits at once. `stop` is armed before the role says it is ready, so a
/// signal that follows that line is always a stop request, never a kill.
async fn until_stopped(
    stop: impl Future<Output = std::io::Result<&'static str>>,
) -> anyhow::Result<()> {
    microkit::signal::stopping(stop, "stopping").await?;
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let backend = args.backend.connect().await?;
    tracing::info!(backend = backend.name(), "running");
    let registry = backend.registry();
    match args.role {
        None => {
            let mut edge = Edge::start(&registry, 0).await?;
            demo(&mut edge, args.count).await?;
            edge.stop().await.map(drop)
        }
        Some(Role::Serve { port }) => {
            let edge = Edge::start(&registry, port).await?;
            let stop = microkit::signal::stop_requested();
            println!("open {}/hello/ in a browser; ctrl-c stops", edge.gateway.url());
            until_stopped(stop).await?;
            let (forwarded, served) = edge.stop().await?;
            println!(
                "stopped: the gateway forwarded {forwarded} request(s), hello-1 served {served}"
            );
            Ok(())
        }
        Some(Role::Service { id, grace_ms }) => {
            backend.require_shared_nats("the service and gateway roles")?;
            let greeter = start_greeter(&registry, &format!("greeter-for-{id}")).await?;
            let (web, service) = start_web(&registry, &id).await?;
            let stop = microkit::signal::stop_requested();
            println!("{id} serving web service hello on {}; ctrl-c stops", web.server().url());
            until_stopped(stop).await?;
            web.not_serving().await;
            tokio::time::sleep(Duration::from_millis(grace_ms)).await;
            web.deregister_and_drain().await?;
            greeter.stop().await?;
            let served = service.served.load(Ordering::Relaxed);
            println!("{id} stopped: {served} request(s) served");
            Ok(())
        }
        Some(Role::Gateway { port }) => {
            backend.require_shared_nats("the service and gateway roles")?;
            let (server, gateway) = start_gateway(&registry, port).await?;
            let stop = microkit::signal::stop_requested();
            println!("gateway on {}; ctrl-c stops", server.url());
            until_stopped(stop).await?;
            server.shutdown().await?;
            println!("gateway stopped: {} request(s) forwarded", gateway.forwarded());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use microkit::registry::MemoryRegistry;

    #[test]
    fn a_count_out_of_range_is_refused_by_the_parser() {
        for count in ["0", "101", "many"] {
            assert!(Args::try_parse_from(["web", "--count", count]).is_err(), "{count}");
        }
    }

    fn seen(status: u16, lines: &[&str]) -> Seen {
        Seen { status, lines: lines.iter().map(|l| l.to_string()).collect() }
    }

    #[tokio::test]
    async fn the_story_browses_streams_and_sees_the_service_leave() {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let mut edge = Edge::start(&registry, 0).await.unwrap();
        let story = demo(&mut edge, 2).await.unwrap();
        let gets: Vec<(&str, &Seen)> = story.gets.iter().map(|(p, s)| (p.as_str(), s)).collect();
        let missing = |name| format!("no web service named \"{name}\" is registered");
        assert_eq!(
            gets,
            [
                ("/", &seen(200, &["hello: 1 node(s) -> /hello/"])),
                ("/hello/greet?name=ada", &seen(200, &["hello ada, from hello-1"])),
                ("/nobody/greet", &seen(404, &[&missing("nobody")])),
                ("/hello", &seen(308, &["location: /hello/"])),
                ("/hello/", &seen(200, &["html page: greetings over a websocket"])),
                // After hello-1 left:
                ("/", &seen(200, &["no web services registered"])),
                ("/hello/greet?name=ada", &seen(404, &[&missing("hello")])),
            ]
        );
        assert_eq!(
            story.greetings,
            ["hello ada (seq 1, from greeter-1)", "hello ada (seq 2, from greeter-1)"]
        );
        assert_eq!(story.closed, "1000 2 messages");
        // Forwarded: the greet, the page and the websocket; the last greet found no node.
        assert_eq!(edge.stop().await.unwrap(), (3, 3));
    }
}
