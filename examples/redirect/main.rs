//! # redirect: who redirects, and to where
//!
//! A redirect has three parties. The `links` service *decides* to redirect and says so in
//! its answer (`service.rs`); the gateway *sends* the redirect to the browser (`gateway.rs`),
//! but only after checking the target; the client *follows* it, keeping or changing the
//! method as the status says (this file). The lesson is that check, the allow-list in
//! `policy.rs`: paths on this site and https URLs of listed hosts pass, and every
//! open-redirect form (`//host`, `/\host`, percent-encoded, with user info) gets a 400.
//!
//! go-micro's example had an API handler answer 301 with a `Location`, which `micro api`
//! turned into a redirect given a handler flag its README never named; nothing checked
//! where the redirect pointed.
//!
//! Run it:
//!
//! ```text
//! cargo run --example redirect                  # --backend memory|nats picks the registry
//! cargo run --example redirect -- --next '//elsewhere.example'
//! ```
//!
//! Prints `tests/golden/redirect.txt`; explained in `notes/redirect.md`.

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
use microkit::PATIENCE;
use microkit::backend::BackendArgs;
use microkit::http::{Forwarder, HttpServer, body_text};
use microkit::registered::Registered;
use microkit::registry::Registry;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use gateway::Gateway;
use policy::AllowList;

/// The one outside host the gateway may send browsers to.
const ALLOWED_HOST: &str = "docs.example.org";

/// How long the `links` node stays listed without a heartbeat.
const TTL: Duration = Duration::from_secs(10);

/// Targets a visitor could put into `/links/login?next=...`: the first three fair (one not
/// ASCII, which leaves percent-encoded), the rest attacks.
const LOGIN_TARGETS: [&str; 15] = [
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

/// How many of [`LOGIN_TARGETS`] are fair.
#[cfg(test)]
const FAIR: usize = 3;

/// What the one-process run saw, for the tests to check.
#[derive(Debug, PartialEq, Eq)]
struct Story {
    /// Each visit's first answer, and the answer to following it (when it stays here).
    visits: Vec<(Answer, Option<Answer>)>,
    /// Each `next=` target tried, with the gateway's answer.
    attempts: Vec<(String, Answer)>,
}

/// The service and the gateway in one process; the client visits redirecting routes, then
/// tries every `next=` target (and `extra`, from `--next`) on the login route.
async fn demo(registry: Arc<dyn Registry>, extra: Option<&str>) -> anyhow::Result<Story> {
    let server = HttpServer::start_healthy(service::router()).await?;
    let links = Registered::new(&registry, server, "links", "links-1", TTL).await?;
    let allow = Arc::new(AllowList::new(&[ALLOWED_HOST]));
    let gateway = Gateway { registry, allow, forwarder: Forwarder::new() };
    let gateway = HttpServer::start_healthy(gateway::router(gateway)).await?;
    println!(
        "links-1 registered as links; redirects allowed to paths and to https://{ALLOWED_HOST}"
    );

    let client = Client { http: Forwarder::new(), gateway: gateway.addr() };
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
struct Answer {
    status: StatusCode,
    location: Option<String>,
    body: String,
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

#[derive(Parser, Debug)]
#[command(about = "a gateway that turns a service's redirect answer into an HTTP redirect, safely")]
struct Args {
    #[command(flatten)]
    backend: BackendArgs,

    /// Also try this `next=` target through the gateway (after the built-in ones).
    #[arg(long)]
    next: Option<String>,
}

fn main() -> std::process::ExitCode {
    microkit::main(run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let backend = args.backend.connect().await?;
    tracing::info!(backend = backend.name(), "running");
    demo(backend.registry(), args.next.as_deref()).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use microkit::registry::MemoryRegistry;

    /// Status and `Location` of an answer, the part a browser acts on.
    fn seen(answer: &Answer) -> (u16, Option<&str>) {
        (answer.status.as_u16(), answer.location.as_deref())
    }

    #[tokio::test]
    async fn the_client_follows_each_redirect_as_its_status_says() {
        let story = demo(Arc::new(MemoryRegistry::new()), None).await.unwrap();
        let visits: Vec<_> = story
            .visits
            .iter()
            .map(|(first, then)| {
                (seen(first), then.as_ref().map(|a| (a.status.as_u16(), a.body.as_str())))
            })
            .collect();
        assert_eq!(
            visits,
            [
                ((302, Some("/links/pages/intro")), Some((200, "page intro"))),
                ((301, Some("/links/pages/guide-v2")), Some((200, "page guide-v2"))),
                ((302, Some("https://docs.example.org/start")), None),
                // 307 and 308 keep the POST and its body; 303 turns it into a GET.
                ((307, Some("/links/forms/new")), Some((200, "form received: a=1"))),
                ((308, Some("/links/forms/new")), Some((200, "form received: a=1"))),
                ((303, Some("/links/pages/thanks")), Some((200, "page thanks"))),
            ]
        );
    }

    #[tokio::test]
    async fn only_the_fair_login_targets_redirect_and_the_next_flag_is_tried_last() {
        let story = demo(Arc::new(MemoryRegistry::new()), Some("//x.example")).await.unwrap();
        let (fair, attacks) = story.attempts.split_at(FAIR);
        assert_eq!(seen(&fair[0].1), (302, Some("/links/pages/account")));
        assert_eq!(seen(&fair[1].1), (302, Some("https://docs.example.org/start")));
        assert_eq!(seen(&fair[2].1), (302, Some("/links/pages/%E6%97%A5%E6%9C%AC")));
        assert_eq!(attacks.len(), LOGIN_TARGETS.len() - FAIR + 1);
        for (target, answer) in attacks {
            assert_eq!(seen(answer), (400, None), "{target:?}");
            assert!(answer.body.starts_with("refused redirect: "), "{target:?}: {}", answer.body);
        }
        let (target, answer) = attacks.last().unwrap();
        assert_eq!(target, "//x.example");
        assert_eq!(
            answer.body,
            "refused redirect: scheme-relative URL (//host) points at another host"
        );
    }
}
