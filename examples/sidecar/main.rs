//! # sidecar: any program joins through HTTP and JSON
//!
//! go-micro's sidecar (`micro sidecar`, later the "proxy") let programs in other languages
//! register, call services and publish over plain HTTP. Its maintainers called it a
//! hacked-together HTTP API: its routes and errors were never written down, and its
//! example stopped at a Python script calling one endpoint.
//!
//! Here, in one process:
//! - `sidecar.rs`: the sidecar's routes (call, register, deregister, list, publish), every
//!   error a JSON answer with the status that fits (400, 404, 413, 503);
//! - `grpc.rs`: the protocol conversion, JSON to a gRPC call to the Greeter and back;
//! - this file: a Greeter node, the sidecar, and `shouter`, a stand-in for a program in
//!   another language that speaks nothing but HTTP: it registers through the sidecar, is
//!   called through it, and calls the Greeter through it.
//!
//! Run it:
//!
//! ```text
//! cargo run --example sidecar                      # --backend memory|nats picks the broker
//! cargo run --example sidecar -- serve --port 8090  # the sidecar alone, for curl or scripts
//! scripts/sidecar-demo.sh                           # a Python program joins through it
//! ```
//!
//! It prints (the golden file `tests/golden/sidecar.txt` holds exactly this):
//!
//! ```text
//! greeter-1 registered as greeter (gRPC); the sidecar speaks HTTP/JSON
//! calls converted to gRPC:
//!   POST /greeter/SayHello {"name":"ada"} -> 200 {"message":"hello ada","node":"greeter-1","seq":0}
//!   POST /greeter/Greetings {"name":"bo","count":2} -> 200 [{"message":"hello bo","node":"greeter-1","seq":1},{"message":"hello bo","node":"greeter-1","seq":2}]
//!   POST /greeter/CollectNames [{"name":"cy"},{"name":"di"}] -> 200 {"count":2,"message":"hello cy, di from greeter-1"}
//! a plain HTTP program joins through the sidecar:
//!   POST /registry {..shouter-1 and its address..} -> 200 {"registered":"shouter/shouter-1","ttl_secs":30}
//!   GET /registry/shouter -> 200 nodes: shouter-1 (http)
//!   POST /shouter/upper {"text":"quiet please"} -> 200 {"by":"shouter-1","text":"QUIET PLEASE"}
//!   POST /shouter/greet {"name":"eve"} -> 200 {"greeter said":"hello eve","shouted":"HELLO EVE"}
//! an asynchronous request: publish through the sidecar
//!   POST /broker/shouts {"text":"hi all"} -> 202 {"bytes":17,"published":"shouts"}
//!   a subscriber of shouts got {"text":"hi all"} (content-type application/json)
//! mistakes, answered in JSON:
//!   POST /greeter/SayHello {"name": -> 400 {"error":"bad JSON for greeter.SayHello: EOF while parsing a value at line 1 column 8"}
//!   POST /greeter/SayHello {"name":5} -> 400 {"error":"bad JSON for greeter.SayHello: invalid type: integer `5`, expected a string at line 1 column 9"}
//!   POST /greeter/Greetings {"name":"bo","count":0} -> 400 {"error":"bad request for greeter.Greetings: count must be 1 to 100, not 0"}
//!   POST /greeter/Shout {} -> 404 {"error":"greeter has no method \"Shout\"; it offers SayHello, Greetings, CollectNames, Chat"}
//!   POST /nobody/Hello {} -> 503 {"error":"no node for service \"nobody\""}
//!   POST /greeter/SayHello <a 64 KiB name> -> 413 {"error":"body over the 64 KiB limit"}
//!   POST /registry {"service":"x","id":"x-1"} -> 400 {"error":"bad JSON for /registry: missing field `address` at line 1 column 26"}
//!   POST /broker/no%20spaces {} -> 400 {"error":"invalid topic \"no spaces\": use dot-separated words without spaces or wildcards"}
//! the program leaves:
//!   DELETE /registry/shouter/shouter-1 -> 200 {"deregistered":"shouter/shouter-1"}
//!   POST /shouter/upper {"text":"anyone?"} -> 503 {"error":"no node for service \"shouter\""}
//! ```
//!
//! Read it beside `notes/sidecar.md`.

mod grpc;
mod sidecar;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use axum::routing::post;
use axum::{Json, Router};
use clap::{Parser, Subcommand};
use http::{Method, header};
use microkit::backend::BackendArgs;
use microkit::broker::Broker;
use microkit::http::{Forwarder, HttpServer, body_text};
use microkit::registry::{Node, Registration};
use microkit::{Out, say};
use serde_json::{Value, json};

use sidecar::Sidecar;

/// Every request of the demo gives up after this long instead of hanging.
const STEP_LIMIT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(about = "an HTTP/JSON sidecar: call gRPC services, register plain HTTP programs")]
struct Args {
    #[command(flatten)]
    backend: BackendArgs,

    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Run a Greeter node and the sidecar until ctrl-c; prints the sidecar's URL first.
    Serve {
        /// The sidecar's port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 8090)]
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
    let broker = backend.broker().await?;
    let registry = backend.registry();
    let greeter = microkit::greeter::serve("greeter-1").await?;
    let node = Node::new("greeter", "greeter-1", greeter.addr());
    let registration = Registration::start(registry.clone(), node, Duration::from_secs(10)).await?;
    let port = match args.role {
        Some(Role::Serve { port }) => port,
        None => 0,
    };
    let address = ([127, 0, 0, 1], port).into();
    let sidecar = Sidecar { registry, broker: broker.clone(), forwarder: Forwarder::new() };
    let server = HttpServer::start_on(address, sidecar::router(sidecar))
        .await
        .with_context(|| format!("cannot listen on {address}"))?;

    match args.role {
        None => demo(&server, backend.broker().await?, out).await?,
        Some(Role::Serve { .. }) => {
            say!(out, "sidecar listening on {}; ctrl-c stops", server.url());
            tokio::signal::ctrl_c().await?;
        }
    }
    server.shutdown().await?;
    broker.drain().await?;
    registration.deregister().await?;
    greeter.shutdown().await
}

/// `subscriber` is another client of the broker: a service somewhere that listens.
async fn demo(server: &HttpServer, subscriber: Arc<dyn Broker>, out: &Out) -> anyhow::Result<()> {
    let client = Caller { http: Forwarder::new(), base: server.url(), out: out.clone() };
    say!(out, "greeter-1 registered as greeter (gRPC); the sidecar speaks HTTP/JSON");

    say!(out, "calls converted to gRPC:");
    client.post("/greeter/SayHello", r#"{"name":"ada"}"#).await?;
    client.post("/greeter/Greetings", r#"{"name":"bo","count":2}"#).await?;
    client.post("/greeter/CollectNames", r#"[{"name":"cy"},{"name":"di"}]"#).await?;

    say!(out, "a plain HTTP program joins through the sidecar:");
    let shouter = HttpServer::start(shouter(client.base.clone())).await?;
    let join =
        json!({ "service": "shouter", "id": "shouter-1", "address": shouter.addr().to_string() });
    // The address changes every run, so it is left out of what is printed.
    client
        .send(Method::POST, "/registry", &join.to_string(), "{..shouter-1 and its address..}")
        .await?;
    client.get_ids("/registry/shouter").await?;
    client.post("/shouter/upper", r#"{"text":"quiet please"}"#).await?;
    client.post("/shouter/greet", r#"{"name":"eve"}"#).await?;

    say!(out, "an asynchronous request: publish through the sidecar");
    let mut shouts = subscriber.subscribe("shouts", None).await?;
    client.post("/broker/shouts", r#"{"text":"hi all"}"#).await?;
    let message = tokio::time::timeout(STEP_LIMIT, futures::StreamExt::next(&mut shouts))
        .await
        .context("the published message never arrived")?
        .context("the subscription ended")?;
    let content_type = message.headers.get("content-type").map_or("none", String::as_str);
    let payload = String::from_utf8_lossy(&message.payload);
    say!(out, "  a subscriber of shouts got {payload} (content-type {content_type})");
    subscriber.drain().await?;

    say!(out, "mistakes, answered in JSON:");
    client.post("/greeter/SayHello", r#"{"name":"#).await?;
    client.post("/greeter/SayHello", r#"{"name":5}"#).await?;
    client.post("/greeter/Greetings", r#"{"name":"bo","count":0}"#).await?;
    client.post("/greeter/Shout", "{}").await?;
    client.post("/nobody/Hello", "{}").await?;
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(sidecar::BODY_LIMIT));
    client.send(Method::POST, "/greeter/SayHello", &big, "<a 64 KiB name>").await?;
    client.post("/registry", r#"{"service":"x","id":"x-1"}"#).await?;
    client.post("/broker/no%20spaces", "{}").await?;

    say!(out, "the program leaves:");
    client.send(Method::DELETE, "/registry/shouter/shouter-1", "", "").await?;
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
    out: Out,
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
        let (status, answer) = self.exchange(method.clone(), path, body).await?;
        let shown = if shown.is_empty() { String::new() } else { format!(" {shown}") };
        say!(self.out, "  {method} {path}{shown} -> {status} {answer}");
        Ok(())
    }

    /// Lists a service's nodes, printing only their ids: addresses change every run.
    async fn get_ids(&self, path: &str) -> anyhow::Result<()> {
        let (status, answer) = self.exchange(Method::GET, path, "").await?;
        let nodes: Vec<Node> = serde_json::from_str(&answer).context("a node list")?;
        let ids: Vec<String> = nodes
            .iter()
            .map(|n| {
                format!("{} ({})", n.id, n.metadata.get("protocol").map_or("grpc", String::as_str))
            })
            .collect();
        say!(self.out, "  GET {path} -> {status} nodes: {}", ids.join(", "));
        Ok(())
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: &str,
    ) -> anyhow::Result<(u16, String)> {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))?;
        let response = tokio::time::timeout(STEP_LIMIT, self.http.send(request))
            .await
            .context("the sidecar timed out")??;
        let status = response.status().as_u16();
        Ok((status, body_text(response.into_body(), 1 << 16).await))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{Request, StatusCode};
    use futures::StreamExt;
    use microkit::broker::MemoryBroker;
    use microkit::registry::{MemoryRegistry, Registry};
    use tower::ServiceExt;

    #[tokio::test]
    async fn prints_its_golden_output() {
        let out = Out::capture();
        run(Args::parse_from(["sidecar"]), &out).await.unwrap();
        microkit::golden::assert_matches("sidecar", &out.text());
    }

    /// A sidecar router over a fresh registry, and that registry.
    fn sidecar() -> (Router, Arc<dyn Registry>) {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let broker = Arc::new(MemoryBroker::new());
        let sidecar = Sidecar { registry: registry.clone(), broker, forwarder: Forwarder::new() };
        let router = sidecar::router(sidecar);
        (router, registry)
    }

    async fn call(
        router: &Router,
        method: Method,
        path: &str,
        body: impl Into<Body>,
    ) -> (StatusCode, Value) {
        let request = Request::builder().method(method).uri(path).body(body.into()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let text = body_text(response.into_body(), 1 << 20).await;
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")))
    }

    fn error_of(answer: &Value) -> &str {
        answer["error"].as_str().unwrap_or_else(|| panic!("no error in {answer}"))
    }

    #[tokio::test]
    async fn every_greeter_method_is_converted_from_and_to_json() {
        let (router, registry) = sidecar();
        let greeter = microkit::greeter::serve("greeter-3").await.unwrap();
        registry
            .register(&Node::new("greeter", "greeter-3", greeter.addr()), STEP_LIMIT)
            .await
            .unwrap();

        let (status, reply) =
            call(&router, Method::POST, "/greeter/SayHello", r#"{"name":"ada"}"#).await;
        assert_eq!(
            (status, reply),
            (StatusCode::OK, json!({"message": "hello ada", "node": "greeter-3", "seq": 0}))
        );
        let (_, replies) =
            call(&router, Method::POST, "/greeter/Greetings", r#"{"name":"bo","count":3}"#).await;
        let seqs: Vec<u64> =
            replies.as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [1, 2, 3], "every streamed reply, in order");
        let (_, summary) =
            call(&router, Method::POST, "/greeter/CollectNames", r#"[{"name":"a"},{"name":"b"}]"#)
                .await;
        assert_eq!(summary["count"], 2);
        let (_, chat) =
            call(&router, Method::POST, "/greeter/Chat", r#"[{"name":"x"},{"name":"y"}]"#).await;
        let messages: Vec<&str> =
            chat.as_array().unwrap().iter().map(|r| r["message"].as_str().unwrap()).collect();
        assert_eq!(messages, ["hello x", "hello y"]);
        // Missing fields take their defaults, as protobuf's do.
        let (status, reply) = call(&router, Method::POST, "/greeter/SayHello", "{}").await;
        assert_eq!((status, reply["message"].as_str()), (StatusCode::OK, Some("hello ")));
        greeter.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn mistakes_get_the_status_that_fits_and_say_which() {
        let (router, registry) = sidecar();
        let greeter = microkit::greeter::serve("greeter-3").await.unwrap();
        registry
            .register(&Node::new("greeter", "greeter-3", greeter.addr()), STEP_LIMIT)
            .await
            .unwrap();

        let (status, answer) = call(&router, Method::POST, "/greeter/SayHello", "{oops").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            error_of(&answer).starts_with("bad JSON for greeter.SayHello: key must be a string"),
            "{answer}"
        );
        let (status, answer) =
            call(&router, Method::POST, "/greeter/CollectNames", r#"{"name":"a"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(error_of(&answer).contains("expected a sequence"), "{answer}");
        let (status, answer) =
            call(&router, Method::POST, "/greeter/Greetings", r#"{"count":101}"#).await;
        assert_eq!(
            (status, error_of(&answer)),
            (
                StatusCode::BAD_REQUEST,
                "bad request for greeter.Greetings: count must be 1 to 100, not 101"
            )
        );
        let (status, answer) = call(&router, Method::POST, "/greeter/Nope", "{}").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(error_of(&answer).starts_with("greeter has no method \"Nope\""), "{answer}");
        let (status, answer) = call(&router, Method::POST, "/ghost/Hello", "{}").await;
        assert_eq!(
            (status, error_of(&answer)),
            (StatusCode::SERVICE_UNAVAILABLE, "no node for service \"ghost\"")
        );
        let big = vec![b' '; sidecar::BODY_LIMIT + 1];
        let (status, answer) = call(&router, Method::POST, "/greeter/SayHello", big.clone()).await;
        assert_eq!(
            (status, error_of(&answer)),
            (StatusCode::PAYLOAD_TOO_LARGE, "body over the 64 KiB limit")
        );
        let (status, _) = call(&router, Method::POST, "/registry", big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        greeter.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_registered_node_that_is_down_is_a_bad_gateway_naming_its_address() {
        let (router, registry) = sidecar();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        registry.register(&Node::new("greeter", "greeter-0", closed), STEP_LIMIT).await.unwrap();
        let (status, answer) = call(&router, Method::POST, "/greeter/SayHello", "{}").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(error_of(&answer).contains(&closed.to_string()), "{answer}");
    }

    #[tokio::test]
    async fn registry_routes_register_list_and_deregister_http_programs() {
        let (router, _) = sidecar();
        let join = r#"{"service":"py","id":"py-1","address":"127.0.0.1:9","ttl_secs":5}"#;
        let (status, answer) = call(&router, Method::POST, "/registry", join).await;
        assert_eq!(
            (status, answer),
            (StatusCode::OK, json!({"registered": "py/py-1", "ttl_secs": 5}))
        );
        let (_, nodes) = call(&router, Method::GET, "/registry/py", Body::empty()).await;
        assert_eq!(nodes[0]["address"], "127.0.0.1:9");
        assert_eq!(nodes[0]["metadata"]["protocol"], "http");
        let (status, _) = call(&router, Method::DELETE, "/registry/py/py-1", Body::empty()).await;
        assert_eq!(status, StatusCode::OK);
        let (_, nodes) = call(&router, Method::GET, "/registry/py", Body::empty()).await;
        assert_eq!(nodes, json!([]));
    }

    #[tokio::test]
    async fn bad_registrations_are_refused_saying_why() {
        let (router, _) = sidecar();
        let cases = [
            (r#"{"service":"py","id":"py-1"}"#, "missing field `address`"),
            (r#"{"service":"py","id":"py-1","address":"nowhere"}"#, "is not ip:port"),
            (r#"{"service":"","id":"py-1","address":"127.0.0.1:9"}"#, "must be non-empty"),
            (
                r#"{"service":"py","id":"py-1","address":"127.0.0.1:9","ttl_secs":0}"#,
                "ttl_secs must be 1 to 3600",
            ),
            (
                r#"{"service":"py","id":"py-1","address":"127.0.0.1:9","colour":"red"}"#,
                "unknown field `colour`",
            ),
            ("[", "bad JSON for /registry"),
        ];
        for (body, reason) in cases {
            let (status, answer) = call(&router, Method::POST, "/registry", body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert!(error_of(&answer).contains(reason), "{body}: {answer}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_program_that_stops_re_registering_expires() {
        let (router, _) = sidecar();
        let join = r#"{"service":"py","id":"py-1","address":"127.0.0.1:9","ttl_secs":3}"#;
        call(&router, Method::POST, "/registry", join).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        call(&router, Method::POST, "/registry", join).await; // its heartbeat
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (_, nodes) = call(&router, Method::GET, "/registry/py", Body::empty()).await;
        assert_eq!(nodes.as_array().unwrap().len(), 1, "alive: it re-registered in time");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (_, nodes) = call(&router, Method::GET, "/registry/py", Body::empty()).await;
        assert_eq!(nodes, json!([]), "silent for longer than its TTL: gone");
    }

    #[tokio::test]
    async fn an_http_program_is_called_with_the_json_as_is() {
        let (router, registry) = sidecar();
        let program = HttpServer::start(shouter("http://127.0.0.1:9".into())).await.unwrap();
        let mut node = Node::new("shouter", "s-1", program.addr());
        node.metadata.insert(sidecar::PROTOCOL.into(), sidecar::HTTP.into());
        registry.register(&node, STEP_LIMIT).await.unwrap();
        let (status, answer) =
            call(&router, Method::POST, "/shouter/upper", r#"{"text":"hi"}"#).await;
        assert_eq!((status, answer), (StatusCode::OK, json!({"text": "HI", "by": "shouter-1"})));
        // Its own errors come back as its own: here axum's 404 for a route it lacks.
        let request = Request::post("/shouter/missing").body(Body::from("{}")).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        program.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn publishing_is_accepted_once_the_broker_has_it_and_reaches_subscribers() {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let broker = MemoryBroker::new();
        let mut listener =
            broker.connect_another().subscribe("orders.created", None).await.unwrap();
        let sidecar =
            Sidecar { registry, broker: Arc::new(broker.clone()), forwarder: Forwarder::new() };
        let router = sidecar::router(sidecar);

        let request = Request::post("/broker/orders.created")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"id":7}"#))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let message = tokio::time::timeout(STEP_LIMIT, listener.next()).await.unwrap().unwrap();
        assert_eq!(&message.payload[..], br#"{"id":7}"#);
        assert_eq!(message.headers["content-type"], "application/json");

        for topic in ["a%20b", "orders.*", "orders.%3E", "a..b"] {
            let (status, answer) =
                call(&router, Method::POST, &format!("/broker/{topic}"), "{}").await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{topic}");
            assert!(error_of(&answer).starts_with("invalid topic"), "{answer}");
        }
        let big = vec![b'x'; sidecar::BODY_LIMIT + 1];
        assert_eq!(
            call(&router, Method::POST, "/broker/orders", big).await.0,
            StatusCode::PAYLOAD_TOO_LARGE
        );

        broker.drain().await.unwrap();
        let (status, answer) = call(&router, Method::POST, "/broker/orders.created", "{}").await;
        assert_eq!(
            (status, error_of(&answer)),
            (StatusCode::SERVICE_UNAVAILABLE, "the broker is closed")
        );
    }
}
