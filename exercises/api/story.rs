//! The one-process story: calls to three services the gateway was never built for, a proto
//! that changes under it, what the edge refuses, a burst cut at the limit, a breaker that
//! opens and closes again, and the gateway's neighbours.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use api::backends::{self, CALCULATOR, STOCK, Switch};
use api::edge::{Claims, Keys};
use api::{Gateway, Settings};
use axum::body::Body;
use http::{Request, header};
use http_body_util::BodyExt;
use registry::{Registered, Registry};

use crate::roles::{GREETER, TTL};

/// The secret the story's tokens are signed with.
const SECRET: &[u8] = b"the story's secret";

/// The story's edge. The slow refill (one call every 10 s), the 250 ms bound and the 100 ms
/// pause exist to make the golden stable and the run short; the roles keep the defaults.
fn settings() -> Settings {
    Settings {
        call_within: Duration::from_millis(250),
        burst: 30,
        per_second: 0.1,
        breaker_threshold: 3,
        breaker_pause: Duration::from_millis(100),
        ..Settings::default()
    }
}

/// One process, the whole story.
pub async fn demo(registry: &Arc<dyn Registry>) -> anyhow::Result<()> {
    let greeter = Registered::new(
        registry,
        microkit::greeter::serve("greeter-1").await?,
        GREETER,
        "greeter-1",
        TTL,
    )
    .await?;
    let calc =
        Registered::new(registry, backends::calculator("calc-1").await?, CALCULATOR, "calc-1", TTL)
            .await?;
    let switch = Arc::new(Switch::default());
    let stock_1 = backends::stock_v1("stock-1", switch.clone()).await?;
    let stock_1 = Registered::new(registry, stock_1, STOCK, "stock-1", TTL).await?;
    // Transitions are printed after the line of the call that caused them.
    let transitions = Arc::new(Mutex::new(Vec::new()));
    let heard = transitions.clone();
    let hear = move |service: &str, t: api::edge::Transition| {
        heard.lock().unwrap().push(format!("  breaker of {service}: {} -> {}", t.from, t.to));
    };
    let gateway = Gateway::new(registry.clone(), SECRET, settings()).on_transition(Box::new(hear));
    let keys = Keys::new(SECRET);
    let ada = keys.sign(&claims(
        "ada",
        "greeter.v1.Greeter calc.v1.Calculator stock.v1.Stock billing.v1.Billing",
        3600,
    ));
    let bo = keys.sign(&claims("bo", "greeter.v1.Greeter/SayHello", 3600));
    let cy = keys.sign(&claims("cy", "greeter.v1.Greeter", 3600));
    let call = Caller { gateway: &gateway, transitions };

    println!("the gateway holds no proto: POST /<service>/<method> with JSON becomes a gRPC call");
    println!(
        "ada's token: greeter.v1.Greeter calc.v1.Calculator stock.v1.Stock billing.v1.Billing"
    );
    println!("bo's token: greeter.v1.Greeter/SayHello; cy's token: greeter.v1.Greeter");
    println!("calls as ada:");
    call.show(&ada, "/greeter.v1.Greeter/SayHello", r#"{"name":"ada"}"#).await?;
    call.show(&ada, "/greeter.v1.Greeter/Greetings", r#"{"name":"cy","count":3}"#).await?;
    call.show_sse(&ada, "/greeter.v1.Greeter/Greetings", r#"{"name":"di","count":2}"#).await?;
    call.show(&ada, "/calc.v1.Calculator/Add", r#"{"terms":[1,2,3]}"#).await?;
    call.show(&ada, "/calc.v1.Calculator/Count", r#"{"upTo":3}"#).await?;
    call.show(&ada, "/calc.v1.Calculator/Add", r#"{"terms":["one"]}"#).await?;
    call.show(&ada, "/greeter.v1.Greeter/Shout", r#"{"name":"ed"}"#).await?;
    call.show(&ada, "/greeter.v1.Greeter/Chat", r#"{"name":"ed"}"#).await?;
    call.show(&ada, "/billing.v1.Billing/Charge", "{}").await?;

    println!("a proto that changes while the gateway runs:");
    let asks_more = r#"{"sku":"tea","warehouse":"north"}"#;
    call.show(&ada, "/stock.v1.Stock/Get", r#"{"sku":"tea"}"#).await?;
    call.show(&ada, "/stock.v1.Stock/Get", asks_more).await?;
    let stock_2 = backends::stock_v2("stock-2", switch.clone()).await?;
    let stock_2 = Registered::new(registry, stock_2, STOCK, "stock-2", TTL).await?;
    stock_1.stop().await?;
    println!("  stock-1 (revision 1) stopped; stock-2 (revision 2) serves stock.v1.Stock");
    call.show(&ada, "/stock.v1.Stock/Get", asks_more).await?;

    println!("what the edge refuses, before any node is reached:");
    let other = Keys::new(b"another secret").sign(&claims("ada", "greeter.v1.Greeter", 3600));
    let expired = keys.sign(&claims("ada", "greeter.v1.Greeter", 0));
    let hello = r#"{"name":"ada"}"#;
    call.refused("no token", "", "/greeter.v1.Greeter/SayHello", hello).await?;
    call.refused("another secret's token", &other, "/greeter.v1.Greeter/SayHello", hello).await?;
    call.refused("an expired token", &expired, "/greeter.v1.Greeter/SayHello", hello).await?;
    call.refused("bo, Calculator/Add", &bo, "/calc.v1.Calculator/Add", r#"{"terms":[1]}"#).await?;
    call.show(&bo, "/greeter.v1.Greeter/SayHello", r#"{"name":"bo"}"#).await?;
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(70_000));
    call.refused("a body of 70 KB", &ada, "/greeter.v1.Greeter/SayHello", &big).await?;
    let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
    call.refused("JSON 40 deep", &ada, "/greeter.v1.Greeter/SayHello", &deep).await?;
    println!("  a stream that outlasts the 250 ms bound is cut:");
    call.show(
        &ada,
        "/greeter.v1.Greeter/Greetings",
        r#"{"name":"fay","count":3,"intervalMs":400}"#,
    )
    .await?;

    let mut codes = Vec::new();
    let mut retry_after = String::new();
    for _ in 0..40 {
        let (status, headers, _) =
            call.post(&cy, "/greeter.v1.Greeter/SayHello", r#"{"name":"cy"}"#, None).await?;
        codes.push(status);
        if let Some(after) = headers.get(header::RETRY_AFTER) {
            retry_after = after.to_str()?.to_owned();
        }
    }
    let (passed, cut) =
        (codes.iter().filter(|c| **c == 200).count(), codes.iter().filter(|c| **c == 429).count());
    println!("a burst of 40 calls from cy, whose bucket holds 30 and refills one every 10 s:");
    println!(
        "  {passed} answered, then {cut} refused with 429 Too Many Requests, Retry-After: {retry_after}"
    );

    println!("the breaker of stock.v1.Stock (3 failures in a row open it, for 100 ms):");
    switch.failing.store(true, Ordering::Relaxed);
    let reached = switch.reached.load(Ordering::Relaxed);
    for _ in 0..3 {
        call.show(&ada, "/stock.v1.Stock/Get", r#"{"sku":"tea"}"#).await?;
    }
    for _ in 0..2 {
        call.show(&ada, "/stock.v1.Stock/Get", r#"{"sku":"tea"}"#).await?;
    }
    let reached = switch.reached.load(Ordering::Relaxed) - reached;
    println!("  5 calls, {reached} of them reached stock-2: the open breaker answered the others");
    switch.failing.store(false, Ordering::Relaxed);
    // The pause is the point here: an open breaker waits it out, whatever happens meanwhile.
    tokio::time::sleep(settings().breaker_pause).await;
    println!("  stock-2 recovers; 100 ms later a trial call goes through:");
    call.show(&ada, "/stock.v1.Stock/Get", r#"{"sku":"tea"}"#).await?;

    println!("its neighbours:");
    println!("  a proxy forwards gRPC frames unread, to the service the path names");
    println!("  a sidecar converts HTTP/JSON for the one program beside it");
    println!("  a tunnel carries connections between two places and reads nothing in them");
    println!(
        "  this gateway is the public edge: it converts, authenticates, limits, and breaks circuits"
    );
    let called = gateway.called.load(Ordering::Relaxed);
    let refused = gateway.refused.load(Ordering::Relaxed);
    println!("the gateway called a node {called} times and answered {refused} calls itself");
    greeter.stop().await?;
    calc.stop().await?;
    stock_2.stop().await
}

fn claims(sub: &str, scope: &str, valid_s: u64) -> Claims {
    let now =
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    // An expired token (valid_s 0) expired a minute ago.
    let exp = if valid_s == 0 { now - 60 } else { now + valid_s };
    Claims { sub: sub.to_owned(), scope: scope.to_owned(), exp }
}

/// Calls the gateway as an HTTP client would, in this process (tests/api.rs does it over a
/// socket, with Python's standard library).
struct Caller<'a> {
    gateway: &'a Gateway,
    transitions: Arc<Mutex<Vec<String>>>,
}

impl Caller<'_> {
    async fn post(
        &self,
        token: &str,
        path: &str,
        body: &str,
        accept: Option<&'static str>,
    ) -> anyhow::Result<(u16, http::HeaderMap, String)> {
        let mut request = Request::post(path).header(header::CONTENT_TYPE, "application/json");
        if !token.is_empty() {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(accept) = accept {
            request = request.header(header::ACCEPT, accept);
        }
        let response = self.gateway.call(request.body(Body::from(body.to_owned()))?).await;
        let (parts, body) = response.into_parts();
        let text = String::from_utf8(body.collect().await?.to_bytes().to_vec())?;
        Ok((parts.status.as_u16(), parts.headers, text))
    }

    /// The breaker's transitions since the last call printed.
    fn transitions(&self) {
        for line in self.transitions.lock().unwrap().drain(..) {
            println!("{line}");
        }
    }

    /// `POST path body -> status reply`, a stream's replies one a line below it.
    async fn show(&self, token: &str, path: &str, body: &str) -> anyhow::Result<()> {
        let (status, headers, reply) = self.post(token, path, body, None).await?;
        let kind = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if kind == "application/json" {
            println!("  POST {path} {body} -> {status} {reply}");
        } else {
            println!("  POST {path} {body} -> {status} {kind}");
            for line in reply.lines() {
                println!("    {line}");
            }
        }
        self.transitions();
        Ok(())
    }

    /// The same call, asking for server-sent events.
    async fn show_sse(&self, token: &str, path: &str, body: &str) -> anyhow::Result<()> {
        let (status, headers, reply) =
            self.post(token, path, body, Some("text/event-stream")).await?;
        let kind = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        println!("  POST {path} {body} (Accept: {kind}) -> {status}");
        for line in reply.lines().filter(|l| !l.is_empty()) {
            println!("    {line}");
        }
        Ok(())
    }

    /// A refusal: who asked, the status and the reason.
    async fn refused(&self, who: &str, token: &str, path: &str, body: &str) -> anyhow::Result<()> {
        let (status, _, reply) = self.post(token, path, body, None).await?;
        println!("  {who}: {status} {reply}");
        Ok(())
    }
}
