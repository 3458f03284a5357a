//! The story the default run tells: the `links` service and the gateway in one process,
//! and a client that visits redirecting routes, then tries every `next=` target.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use http::{Method, StatusCode, header};
use microkit::PATIENCE;
use microkit_http::{Forwarder, body_text};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use registry::Registered;
use registry::Registry;

use crate::gateway::{self, Gateway};
use crate::service;
use redirect::AllowList;

/// The one outside host the gateway may send browsers to.
const ALLOWED_HOST: &str = "docs.example.org";

/// How long the `links` node stays listed without a heartbeat.
const TTL: Duration = Duration::from_secs(10);

/// Targets a visitor could put into `/links/login?next=...`: the first three fair (one not
/// ASCII, which leaves percent-encoded), the rest attacks.
pub const LOGIN_TARGETS: [&str; 15] = [
    "/pages/account",
    "https://docs.example.org/start",
    "/pages/日本",
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

/// What the one-process run saw, for the tests to check.
#[derive(Debug, PartialEq, Eq)]
pub struct Story {
    /// Each visit's first answer, and the answer to following it (when it stays here).
    pub visits: Vec<(Answer, Option<Answer>)>,
    /// Each `next=` target tried, with the gateway's answer.
    pub attempts: Vec<(String, Answer)>,
}

/// The service and the gateway in one process; the client visits redirecting routes, then
/// tries every `next=` target (and `extra`, from `--next`) on the login route.
pub async fn demo(registry: Arc<dyn Registry>, extra: Option<&str>) -> anyhow::Result<Story> {
    let server = microkit_http::start(service::router()).await?;
    let links = Registered::new(&registry, server, "links", "links-1", TTL).await?;
    let allow = Arc::new(AllowList::new(&[ALLOWED_HOST]));
    let gateway = Gateway { registry, allow, forwarder: Forwarder::default() };
    let gateway = microkit_http::start(gateway::router(gateway)).await?;
    println!(
        "links-1 registered as links; redirects allowed to paths and to https://{ALLOWED_HOST}"
    );

    let client = Client { http: Forwarder::default(), gateway: gateway.addr() };
    let mut visits = Vec::new();
    for (method, path) in [
        (Method::GET, "/links/go/intro"),
        (Method::GET, "/links/go/guide"),
        (Method::GET, "/links/go/upstream"),
        (Method::POST, "/links/forms/old"),
        (Method::POST, "/links/forms/legacy"),
        (Method::POST, "/links/forms/submit"),
    ] {
        visits.push(client.visit(method, path, "a=1").await?);
    }

    println!("open-redirect attempts: GET /links/login?next=<target>");
    let mut attempts = Vec::new();
    for target in LOGIN_TARGETS.iter().copied().chain(extra) {
        let path = format!("/links/login?next={}", utf8_percent_encode(target, NON_ALPHANUMERIC));
        let answer = client.send(Method::GET, &path, "").await?;
        let outcome = match &answer.location {
            Some(location) => format!("location: {location}"),
            None => answer.body.clone(),
        };
        println!("  {} -> {} {outcome}", shown(target), answer.status.as_u16());
        attempts.push((target.to_owned(), answer));
    }

    links.stop().await?;
    gateway.shutdown().await?;
    Ok(Story { visits, attempts })
}

/// The target as typed, with control characters written as escapes (`\t`).
fn shown(target: &str) -> String {
    target
        .chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

/// One answer as the browser sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub location: Option<String>,
    pub body: String,
}

/// Plays the browser: sends a request through the gateway and follows one redirect.
struct Client {
    http: Forwarder,
    gateway: SocketAddr,
}

impl Client {
    /// Sends `method path` (with `body` if it is a POST) and follows a redirect that stays
    /// on this site, as a browser would.
    async fn visit(
        &self,
        method: Method,
        path: &str,
        body: &str,
    ) -> anyhow::Result<(Answer, Option<Answer>)> {
        let body = if method == Method::POST { body } else { "" };
        let first = self.send(method.clone(), path, body).await?;
        let status = first.status.as_u16();
        let Some(location) = first.location.clone() else {
            println!("{method} {path} -> {status} {}", first.body);
            return Ok((first, None));
        };
        println!("{method} {path} -> {status} location: {location}");
        if !location.starts_with('/') {
            println!("  (another site: not followed here)");
            return Ok((first, None));
        }
        // What a browser does next depends on the status, not on the service.
        let (method, body) = match first.status {
            // 307 and 308 promise the same method and body.
            StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT => (method, body),
            // 303 means "now GET this"; browsers treat 301 and 302 after a POST the same way.
            _ => (Method::GET, ""),
        };
        let then = self.send(method.clone(), &location, body).await?;
        println!("  follow {method} {location} -> {} {}", then.status.as_u16(), then.body);
        Ok((first, Some(then)))
    }

    async fn send(&self, method: Method, path: &str, body: &str) -> anyhow::Result<Answer> {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.gateway))
            .body(Body::from(body.to_owned()))?;
        let response = tokio::time::timeout(PATIENCE, self.http.send(request))
            .await
            .context("the gateway timed out")??;
        let status = response.status();
        let location = response
            .headers()
            .get(header::LOCATION)
            .map(|l| l.to_str().unwrap_or("<not text>").to_owned());
        let body = body_text(response.into_body(), 64 * 1024).await;
        Ok(Answer { status, location, body })
    }
}
