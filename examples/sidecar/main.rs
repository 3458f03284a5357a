//! # sidecar: any program joins through HTTP and JSON
//!
//! A sidecar stands beside a program that cannot speak the system's protocols and speaks
//! them for it. Here it is an axum server, `router` in `sidecar.rs` beside this file: it
//! takes HTTP/JSON and calls a gRPC service found in the registry (the conversion is in
//! `grpc.rs`), registers and lists plain HTTP programs, and publishes to the broker, every
//! error a JSON answer with the status that fits. `shouter` below stands in for a program in
//! another language: it registers through the sidecar, is called through it, and calls the
//! Greeter through it.
//!
//! go-micro's sidecar (`micro sidecar`, later the proxy) was, in its maintainers' words, a
//! hacked-together HTTP API: its routes and errors were never written down, and its example
//! stopped at a Python script calling one endpoint.
//!
//! ```text
//! cargo run --example sidecar                      # --backend memory|nats picks the broker
//! cargo run --example sidecar -- serve --port 8090  # the sidecar alone, for curl or scripts
//! scripts/sidecar-demo.sh                           # a Python program joins through it
//! ```
//!
//! Prints `tests/golden/sidecar.txt`; explained in `notes/sidecar.md`.

mod grpc;
mod owners;
mod sidecar;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use axum::routing::post;
use axum::{Json, Router};
use clap::Subcommand;
use http::{Method, header};
use microkit::PATIENCE;
use microkit::broker::Broker;
use microkit::http::{Forwarder, HttpServer, body_text};
use microkit::registered::Registered;
use microkit::registry::Node;
use serde_json::{Value, json};

use sidecar::Sidecar;

/// `subscriber` is another client of the broker: a service somewhere that listens.
async fn demo(server: &HttpServer, subscriber: Arc<dyn Broker>) -> anyhow::Result<()> {
    let client = Caller { http: Forwarder::new(), base: server.url() };
    println!("greeter-1 registered as greeter (gRPC); the sidecar speaks HTTP/JSON");

    println!("calls converted to gRPC:");
    client.post("/greeter/SayHello", r#"{"name":"ada"}"#).await?;
    client.post("/greeter/Greetings", r#"{"name":"bo","count":2}"#).await?;
    client.post("/greeter/CollectNames", r#"[{"name":"cy"},{"name":"di"}]"#).await?;

    println!("a plain HTTP program joins through the sidecar:");
    let shouter = HttpServer::start(shouter(client.base.clone())).await?;
    let address = shouter.addr().to_string();
    let join = json!({ "service": "shouter", "id": "shouter-1", "address": address });
    // The address and the token change every run, so they are left out of what is printed.
    let token = client.register(&join.to_string(), "{..shouter-1 and its address..}").await?;
    client.get_ids("/registry/shouter").await?;
    client.post("/shouter/upper", r#"{"text":"quiet please"}"#).await?;
    client.post("/shouter/greet", r#"{"name":"eve"}"#).await?;

    println!("another program tries to take a share of its callers:");
    let second = json!({ "service": "shouter", "id": "shouter-2", "address": address });
    let shown = "{..shouter-2, without shouter's token..}";
    client.send(Method::POST, "/registry", &second.to_string(), shown).await?;
    let evil = json!({ "service": "greeter", "id": "0-evil", "address": address });
    let shown = "{..greeter/0-evil, to take Greeter calls..}";
    client.send(Method::POST, "/registry", &evil.to_string(), shown).await?;

    println!("an asynchronous request: publish through the sidecar");
    let mut shouts = subscriber.subscribe("shouts", None).await?;
    client.post("/broker/shouts", r#"{"text":"hi all"}"#).await?;
    let message = tokio::time::timeout(PATIENCE, futures::StreamExt::next(&mut shouts))
        .await
        .context("the published message never arrived")?
        .context("the subscription ended")?;
    let content_type = message.headers.get("content-type").map_or("none", String::as_str);
    let payload = String::from_utf8_lossy(&message.payload);
    println!("  a subscriber of shouts got {payload} (content-type {content_type})");
    subscriber.drain().await?;

    println!("mistakes, answered in JSON:");
    client.post("/greeter/SayHello", r#"{"name":"#).await?;
    client.post("/greeter/SayHello", r#"{"name":5}"#).await?;
    client.post("/greeter/Greetings", r#"{"name":"bo","count":0}"#).await?;
    client.post("/greeter/Shout", "{}").await?;
    client.post("/nobody/Hello", "{}").await?;
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(sidecar::BODY_LIMIT));
    client.send(Method::POST, "/greeter/SayHello", &big, "<a 64 KiB name>").await?;
    client.post("/registry", r#"{"service":"x","id":"x-1"}"#).await?;
    client.post("/broker/no%20spaces", "{}").await?;

    println!("the program leaves:");
    let leave = "/registry/shouter/shouter-1";
    client.send_with(Method::DELETE, leave, "", "(with its token)", Some(&token)).await?;
    client.post("/shouter/upper", r#"{"text":"anyone?"}"#).await?;
    shouter.shutdown().await?;
    Ok(())
}

/// The stand-in for a program written in another language: it knows HTTP and JSON, and
/// the sidecar's URL; nothing of gRPC, the registry or Rust.
fn shouter(sidecar: String) -> Router {
    Router::new()
        .route(
            "/upper",
            post(|Json(body): Json<Value>| async move {
                let text = body["text"].as_str().unwrap_or_default().to_uppercase();
                Json(json!({ "text": text, "by": "shouter-1" }))
            }),
        )
        .route(
            "/greet",
            // It calls the Greeter through the sidecar, as any language could.
            post(move |Json(body): Json<Value>| async move {
                let request = http::Request::post(format!("{sidecar}/greeter/SayHello"))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(json!({ "name": body["name"] }).to_string()))
                    .expect("a valid request");
                let reply = match Forwarder::new().send(request).await {
                    Ok(response) => body_text(response.into_body(), 1 << 16).await,
                    Err(e) => e.to_string(),
                };
                let reply: Value = serde_json::from_str(&reply).unwrap_or(Value::String(reply));
                Json(json!({ "greeter said": reply["message"], "shouted": reply["message"].as_str().map(str::to_uppercase) }))
            }),
        )
}

/// Plays a client of the sidecar and prints each exchange on one line.
struct Caller {
    http: Forwarder,
    base: String,
}

impl Caller {
    async fn post(&self, path: &str, body: &str) -> anyhow::Result<()> {
        self.send(Method::POST, path, body, body).await
    }

    /// Sends `body`, printing `shown` in its place.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: &str,
        shown: &str,
    ) -> anyhow::Result<()> {
        self.send_with(method, path, body, shown, None).await
    }

    /// [`Caller::send`], with the service's token when one is given.
    async fn send_with(
        &self,
        method: Method,
        path: &str,
        body: &str,
        shown: &str,
        token: Option<&str>,
    ) -> anyhow::Result<()> {
        let (status, answer) = self.exchange(method.clone(), path, body, token).await?;
        let shown = if shown.is_empty() { String::new() } else { format!(" {shown}") };
        println!("  {method} {path}{shown} -> {status} {answer}");
        Ok(())
    }

    /// Registers a program, printing the answer with its token hidden; answers the token.
    async fn register(&self, body: &str, shown: &str) -> anyhow::Result<String> {
        let (status, answer) = self.exchange(Method::POST, "/registry", body, None).await?;
        let mut answer: Value = serde_json::from_str(&answer).context("a JSON answer")?;
        let token = answer["token"].as_str().context("no token in the answer")?.to_owned();
        answer["token"] = Value::from("<its token>");
        println!("  POST /registry {shown} -> {status} {answer}");
        Ok(token)
    }

    /// Lists a service's nodes, printing only their ids: addresses change every run.
    async fn get_ids(&self, path: &str) -> anyhow::Result<()> {
        let (status, answer) = self.exchange(Method::GET, path, "", None).await?;
        let nodes: Vec<Node> = serde_json::from_str(&answer).context("a node list")?;
        let ids: Vec<String> = nodes
            .iter()
            .map(|n| {
                format!("{} ({})", n.id, n.metadata.get("protocol").map_or("grpc", String::as_str))
            })
            .collect();
        println!("  GET {path} -> {status} nodes: {}", ids.join(", "));
        Ok(())
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: &str,
        token: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Body::from(body.to_owned()))?;
        let response = tokio::time::timeout(PATIENCE, self.http.send(request))
            .await
            .context("the sidecar timed out")??;
        let status = response.status().as_u16();
        Ok((status, body_text(response.into_body(), 1 << 16).await))
    }
}

// ---- The command line and the roles ------------------------------------------------------

/// `--backend`, and the role to run (none: the whole story, in this one process).
type Args = microkit::backend::Cli<Role>;

#[derive(Subcommand, Debug)]
enum Role {
    /// Run a Greeter node and the sidecar until stopped; prints the sidecar's URL first.
    Serve {
        /// The sidecar's port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 8090)]
        port: u16,
    },
}

impl microkit::backend::Roles for Role {
    const ABOUT: &'static str =
        "an HTTP/JSON sidecar: call gRPC services, register plain HTTP programs";
}

/// How long the Greeter node stays listed without a heartbeat.
const GREETER_TTL: Duration = Duration::from_secs(10);

async fn run(args: Args) -> anyhow::Result<()> {
    let backend = args.backend.connect().await?;
    tracing::info!(backend = backend.name(), "running");
    let broker = backend.broker().await?;
    let registry = backend.registry();
    let greeter = microkit::greeter::serve("greeter-1").await?;
    let greeter = Registered::new(&registry, greeter, "greeter", "greeter-1", GREETER_TTL).await?;
    let port = match args.role {
        Some(Role::Serve { port }) => port,
        None => 0,
    };
    let address = ([127, 0, 0, 1], port).into();
    let (router, tally) = counted(sidecar::router(Sidecar::new(registry, broker.clone())));
    let server = HttpServer::start_healthy_on(address, router)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;

    match args.role {
        None => demo(&server, backend.broker().await?).await?,
        Some(Role::Serve { .. }) => {
            // Armed before the ready line: a signal that follows it is a stop request.
            let stop = microkit::signal::stop_requested();
            println!("sidecar listening on {}; ctrl-c stops", server.url());
            microkit::signal::stopping(stop, "stopping").await?;
        }
    }
    // Requests in flight finish first (they may be calling the Greeter), then the Greeter
    // leaves the registry and drains, and the broker sends what it still holds.
    server.shutdown().await?;
    greeter.stop().await?;
    broker.drain().await?;
    if args.role.is_some() {
        let (answered, refused) = tally.counts();
        println!("sidecar stopped after {answered} requests ({refused} refused)");
    }
    Ok(())
}

/// How many requests the sidecar answered, and how many of them with an error status.
#[derive(Clone, Default)]
struct Tally {
    answered: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

impl Tally {
    fn counts(&self) -> (u64, u64) {
        (self.answered.load(Ordering::Relaxed), self.refused.load(Ordering::Relaxed))
    }
}

/// `router`, counting its answers into the returned tally.
fn counted(router: Router) -> (Router, Tally) {
    let tally = Tally::default();
    let count = tally.clone();
    let router =
        router.layer(axum::middleware::map_response(move |response: axum::response::Response| {
            let count = count.clone();
            async move {
                count.answered.fetch_add(1, Ordering::Relaxed);
                if response.status().is_client_error() || response.status().is_server_error() {
                    count.refused.fetch_add(1, Ordering::Relaxed);
                }
                response
            }
        }));
    (router, tally)
}

fn main() -> std::process::ExitCode {
    microkit::main(run)
}
