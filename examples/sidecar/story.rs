//! The story the default run tells: calls converted to gRPC, a plain HTTP program that
//! joins through the sidecar, a publish, and the mistakes a client can make.

use microkit::server::RunningServer;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Body;
use axum::routing::post;
use axum::{Json, Router};
use broker::Broker;
use http::{Method, header};
use microkit::PATIENCE;
use microkit_http::{Forwarder, body_text};
use registry::Node;
use serde_json::{Value, json};

use crate::sidecar;

/// `subscriber` is another client of the broker: a service somewhere that listens.
pub async fn demo(server: &RunningServer, subscriber: Arc<dyn Broker>) -> anyhow::Result<()> {
    let client = Caller { http: Forwarder::default(), base: server.url() };
    println!("greeter-1 registered as greeter (gRPC); the sidecar speaks HTTP/JSON");

    println!("calls converted to gRPC:");
    client.post("/greeter/SayHello", r#"{"name":"ada"}"#).await?;
    client.post("/greeter/Greetings", r#"{"name":"bo","count":2}"#).await?;
    client.post("/greeter/CollectNames", r#"[{"name":"cy"},{"name":"di"}]"#).await?;

    println!("a plain HTTP program joins through the sidecar:");
    let shouter = microkit_http::start(shouter(client.base.clone())).await?;
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
pub fn shouter(sidecar: String) -> Router {
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
                let reply = match Forwarder::default().send(request).await {
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
