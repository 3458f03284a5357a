//! # redirect: who redirects, and to where
//!
//! go-micro's example had an API handler answer with status 301 and a `Location` header,
//! which `micro api` turned into an HTTP redirect, if the gateway ran with a handler flag
//! the README never named. Nothing checked where the redirect pointed.
//!
//! Here the roles are split as they are in a real deployment:
//! - `service.rs`: the `links` service *decides* to redirect, and says so in its answer;
//! - `gateway.rs`: the gateway *sends* the redirect to the browser, after checking the
//!   target against an allow-list (`policy.rs`): open-redirect attempts get a 400;
//! - the client (this file) *follows* it, changing method or not as the status says.
//!
//! Run it:
//!
//! ```text
//! cargo run --example redirect                  # --backend memory|nats picks the registry
//! cargo run --example redirect -- --next '//elsewhere.example'
//! ```
//!
//! It prints (the golden file `tests/golden/redirect.txt` holds exactly this):
//!
//! ```text
//! links-1 registered as links; redirects allowed to paths and to https://docs.example.org
//! GET /links/go/intro -> 302 location: /links/pages/intro
//!   follow GET /links/pages/intro -> 200 page intro
//! GET /links/go/guide -> 301 location: /links/pages/guide-v2
//!   follow GET /links/pages/guide-v2 -> 200 page guide-v2
//! GET /links/go/upstream -> 302 location: https://docs.example.org/start
//!   (another site: not followed here)
//! POST /links/forms/old -> 307 location: /links/forms/new
//!   follow POST /links/forms/new -> 200 form received: a=1
//! POST /links/forms/legacy -> 308 location: /links/forms/new
//!   follow POST /links/forms/new -> 200 form received: a=1
//! POST /links/forms/submit -> 303 location: /links/pages/thanks
//!   follow GET /links/pages/thanks -> 200 page thanks
//! open-redirect attempts: GET /links/login?next=<target>
//!   /pages/account -> 302 location: /links/pages/account
//!   https://docs.example.org/start -> 302 location: https://docs.example.org/start
//!   https://elsewhere.example/ -> 400 refused redirect: host "elsewhere.example" is not on the allow-list
//!   //elsewhere.example -> 400 refused redirect: scheme-relative URL (//host) points at another host
//!   /\elsewhere.example -> 400 refused redirect: backslash in target (browsers read it as a slash)
//!   %2F%2Felsewhere.example -> 400 refused redirect: scheme-relative URL (//host) points at another host, after percent-decoding
//!   %252F%252Felsewhere.example -> 400 refused redirect: scheme-relative URL (//host) points at another host, after 2 rounds of percent-decoding
//!   /%5Celsewhere.example -> 400 refused redirect: backslash in target (browsers read it as a slash), after percent-decoding
//!   /\t/elsewhere.example -> 400 refused redirect: control character in target
//!   https://docs.example.org@elsewhere.example/ -> 400 refused redirect: user info in URL (the host is what follows the @)
//!   http://docs.example.org/ -> 400 refused redirect: scheme "http" is not allowed (https only)
//!   javascript:alert(1) -> 400 refused redirect: scheme "javascript" is not allowed (https only)
//!   data:text/html,hi -> 400 refused redirect: scheme "data" is not allowed (https only)
//!   elsewhere.example -> 400 refused redirect: neither a path nor an absolute URL
//! ```
//!
//! Read it beside `notes/redirect.md`.

mod gateway;
mod policy;
mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use clap::Parser;
use http::{Method, StatusCode, header};
use microkit::backend::BackendArgs;
use microkit::http::{Forwarder, HttpServer, body_text};
use microkit::registry::{Node, Registration};
use microkit::{Out, say};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use gateway::Gateway;
use policy::AllowList;

/// The one outside host the gateway may send browsers to.
const ALLOWED_HOST: &str = "docs.example.org";

/// Every request of the demo gives up after this long instead of hanging.
const STEP_LIMIT: Duration = Duration::from_secs(10);

/// Targets a visitor could put into `/links/login?next=...`: two fair, the rest attacks.
const LOGIN_TARGETS: [&str; 14] = [
    "/pages/account",
    "https://docs.example.org/start",
    "https://elsewhere.example/",
    "//elsewhere.example",
    "/\\elsewhere.example",
    "%2F%2Felsewhere.example",
    "%252F%252Felsewhere.example",
    "/%5Celsewhere.example",
    "/\t/elsewhere.example",
    "https://docs.example.org@elsewhere.example/",
    "http://docs.example.org/",
    "javascript:alert(1)",
    "data:text/html,hi",
    "elsewhere.example",
];

#[derive(Parser, Debug)]
#[command(about = "a gateway that turns a service's redirect answer into an HTTP redirect, safely")]
struct Args {
    #[command(flatten)]
    backend: BackendArgs,

    /// Also try this `next=` target through the gateway (after the built-in ones).
    #[arg(long)]
    next: Option<String>,
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
    let links = HttpServer::start(service::router()).await?;
    let node = Node::new("links", "links-1", links.addr());
    let registration = Registration::start(registry.clone(), node, Duration::from_secs(10)).await?;
    let allow = Arc::new(AllowList::new(&[ALLOWED_HOST]));
    let gateway = HttpServer::start(gateway::router(Gateway {
        registry,
        allow,
        forwarder: Forwarder::new(),
    }))
    .await?;
    say!(
        out,
        "links-1 registered as links; redirects allowed to paths and to https://{ALLOWED_HOST}"
    );

    let client = Client { http: Forwarder::new(), gateway: gateway.addr(), out: out.clone() };
    client.visit(Method::GET, "/links/go/intro", "").await?;
    client.visit(Method::GET, "/links/go/guide", "").await?;
    client.visit(Method::GET, "/links/go/upstream", "").await?;
    client.visit(Method::POST, "/links/forms/old", "a=1").await?;
    client.visit(Method::POST, "/links/forms/legacy", "a=1").await?;
    client.visit(Method::POST, "/links/forms/submit", "a=1").await?;

    say!(out, "open-redirect attempts: GET /links/login?next=<target>");
    for target in LOGIN_TARGETS.iter().copied().chain(args.next.as_deref()) {
        let path = format!("/links/login?next={}", utf8_percent_encode(target, NON_ALPHANUMERIC));
        let (status, location, body) = client.send(Method::GET, &path, "").await?;
        let outcome = match location {
            Some(location) => format!("location: {location}"),
            None => body,
        };
        say!(out, "  {} -> {} {outcome}", shown(target), status.as_u16());
    }

    registration.deregister().await?;
    gateway.shutdown().await?;
    links.shutdown().await?;
    Ok(())
}

/// The target as typed, with control characters written as escapes (`\t`).
fn shown(target: &str) -> String {
    target
        .chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

/// Plays the browser: sends a request through the gateway and follows one redirect.
struct Client {
    http: Forwarder,
    gateway: SocketAddr,
    out: Out,
}

impl Client {
    async fn visit(&self, method: Method, path: &str, body: &str) -> anyhow::Result<()> {
        let (status, location, text) = self.send(method.clone(), path, body).await?;
        let Some(location) = location else {
            say!(self.out, "{method} {path} -> {} {text}", status.as_u16());
            return Ok(());
        };
        say!(self.out, "{method} {path} -> {} location: {location}", status.as_u16());
        if !location.starts_with('/') {
            say!(self.out, "  (another site: not followed here)");
            return Ok(());
        }
        // What a browser does next depends on the status, not on the service.
        let (method, body) = match status {
            // 307 and 308 promise the same method and body.
            StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT => (method, body),
            // 303 means "now GET this"; browsers treat 301 and 302 after a POST the same way.
            _ => (Method::GET, ""),
        };
        let (status, _, text) = self.send(method.clone(), &location, body).await?;
        say!(self.out, "  follow {method} {location} -> {} {text}", status.as_u16());
        Ok(())
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: &str,
    ) -> anyhow::Result<(StatusCode, Option<String>, String)> {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.gateway))
            .body(Body::from(body.to_owned()))?;
        let response = tokio::time::timeout(STEP_LIMIT, self.http.send(request))
            .await
            .context("the gateway timed out")??;
        let status = response.status();
        let location = response
            .headers()
            .get(header::LOCATION)
            .map(|l| l.to_str().unwrap_or("<not text>").to_owned());
        let text = body_text(response.into_body(), 64 * 1024).await;
        Ok((status, location, text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use axum::{Json, Router};
    use microkit::registry::{MemoryRegistry, Registry};
    use tower::ServiceExt;

    #[tokio::test]
    async fn prints_its_golden_output() {
        let out = Out::capture();
        run(Args::parse_from(["redirect"]), &out).await.unwrap();
        microkit::golden::assert_matches("redirect", &out.text());
    }

    #[tokio::test]
    async fn the_next_flag_is_tried_too() {
        let out = Out::capture();
        run(Args::parse_from(["redirect", "--next", "//x.example"]), &out).await.unwrap();
        assert!(out.text().ends_with("  //x.example -> 400 refused redirect: scheme-relative URL (//host) points at another host\n"), "{}", out.text());
    }

    /// Answers: status, `Location` if any, body.
    async fn call(
        router: &Router,
        method: Method,
        path: &str,
    ) -> (StatusCode, Option<String>, String) {
        let request =
            http::Request::builder().method(method).uri(path).body(Body::from("a=1")).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let location =
            response.headers().get(header::LOCATION).map(|l| l.to_str().unwrap().to_owned());
        (status, location, body_text(response.into_body(), 1 << 16).await)
    }

    #[tokio::test]
    async fn the_service_answers_redirects_as_json_and_pages_as_text() {
        let links = service::router();
        let (status, _, body) = call(&links, Method::GET, "/go/intro").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, r#"{"redirect":{"status":302,"location":"/pages/intro"}}"#)
        );
        assert_eq!(call(&links, Method::GET, "/go/nope").await.0, StatusCode::NOT_FOUND);
        let (_, _, body) = call(&links, Method::GET, "/login?next=%2F%2Fx").await;
        assert!(body.contains(r#""location":"//x""#), "the service passes next on as is: {body}");
        assert!(call(&links, Method::POST, "/forms/old").await.2.contains("307"));
        assert!(call(&links, Method::POST, "/forms/legacy").await.2.contains("308"));
        assert!(call(&links, Method::POST, "/forms/submit").await.2.contains("303"));
        assert_eq!(call(&links, Method::POST, "/forms/new").await.2, "form received: a=1");
        assert_eq!(call(&links, Method::GET, "/pages/x").await.2, "page x");
    }

    /// A gateway in front of `service` registered as `name`, to drive with `oneshot`.
    async fn gateway_for(name: &str, service: Router) -> (Router, HttpServer) {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let server = HttpServer::start(service).await.unwrap();
        registry
            .register(&Node::new(name, "n-1", server.addr()), Duration::from_secs(60))
            .await
            .unwrap();
        let allow = Arc::new(AllowList::new(&[ALLOWED_HOST]));
        (gateway::router(Gateway { registry, allow, forwarder: Forwarder::new() }), server)
    }

    #[tokio::test]
    async fn the_gateway_turns_answers_into_redirects_with_the_status_kept() {
        let (gateway, _links) = gateway_for("links", service::router()).await;
        let cases = [
            (Method::GET, "/links/go/intro", StatusCode::FOUND, "/links/pages/intro"),
            (
                Method::GET,
                "/links/go/guide",
                StatusCode::MOVED_PERMANENTLY,
                "/links/pages/guide-v2",
            ),
            (
                Method::GET,
                "/links/go/upstream",
                StatusCode::FOUND,
                "https://docs.example.org/start",
            ),
            (Method::POST, "/links/forms/old", StatusCode::TEMPORARY_REDIRECT, "/links/forms/new"),
            (
                Method::POST,
                "/links/forms/legacy",
                StatusCode::PERMANENT_REDIRECT,
                "/links/forms/new",
            ),
            (Method::POST, "/links/forms/submit", StatusCode::SEE_OTHER, "/links/pages/thanks"),
        ];
        for (method, path, status, location) in cases {
            let answer = call(&gateway, method, path).await;
            assert_eq!((answer.0, answer.1.as_deref()), (status, Some(location)), "{path}");
        }
        // Answers that are not redirects pass through unchanged.
        assert_eq!(call(&gateway, Method::GET, "/links/pages/intro").await.2, "page intro");
        assert_eq!(call(&gateway, Method::GET, "/links/go/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn every_open_redirect_attempt_is_refused_with_400_and_no_location() {
        let (gateway, _links) = gateway_for("links", service::router()).await;
        for target in &LOGIN_TARGETS[2..] {
            let path =
                format!("/links/login?next={}", utf8_percent_encode(target, NON_ALPHANUMERIC));
            let (status, location, body) = call(&gateway, Method::GET, &path).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{target:?}");
            assert_eq!(location, None, "{target:?}");
            assert!(body.starts_with("refused redirect: "), "{body}");
        }
    }

    #[tokio::test]
    async fn unknown_services_and_bad_redirect_answers_are_the_gateways_errors() {
        let odd = Router::new()
            .route(
                "/bad-status",
                get(|| async {
                    Json(serde_json::json!({"redirect": {"status": 200, "location": "/x"}}))
                }),
            )
            .route("/plain-json", get(|| async { Json(serde_json::json!({"message": "hi"})) }));
        let (gateway, _odd) = gateway_for("odd", odd).await;
        let (status, _, body) = call(&gateway, Method::GET, "/odd/bad-status").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::BAD_GATEWAY, "odd asked for a redirect with status 200")
        );
        assert_eq!(call(&gateway, Method::GET, "/odd/plain-json").await.2, r#"{"message":"hi"}"#);
        let (status, _, body) = call(&gateway, Method::GET, "/missing/x").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "no node for service \"missing\"")
        );
    }
}
