//! # event: an HTTP request becomes a CloudEvent, and a consumer that was down misses nothing
//!
//! go-micro's event example turned an HTTP POST into an event published on a topic, and
//! stopped there: a subscriber that was not running when the event was published never
//! heard of it, and nothing said so. Here an axum endpoint turns `POST /user/login` into a
//! CloudEvent (spec 1.0: id, source, type, time, datacontenttype) and publishes it; bad
//! requests get a 400 with the reason and publish nothing. Two consumers take the events:
//! a plain subscriber (at-most-once, like the broker example) and a durable consumer of a
//! stream (at-least-once: JetStream on NATS). Both are stopped, two logins happen, both
//! come back: the printed lines show who lost what.
//!
//! Run it:
//!
//! ```text
//! cargo run --example event                       # NATS (JetStream) if installed
//! cargo run --example event -- --backend memory   # in-process: the stream lives in memory
//! ```
//!
//! Or across terminals, on one NATS server (`nats-server -js`, then in each terminal
//! `export NATS_URL=nats://127.0.0.1:4222`):
//!
//! ```text
//! cargo run --example event -- audit              # the durable consumer; stop it, restart it
//! cargo run --example event -- serve --listen 127.0.0.1:8080
//! curl -i -d '{"user":"ada","method":"password"}' http://127.0.0.1:8080/user/login
//! ```
//!
//! The default run prints (the golden file `tests/golden/event.txt` holds exactly this, on
//! either backend):
//!
//! ```text
//! POST /user/login {"user":"ada","method":"password"} -> 202 Accepted
//! POST /user/login {"user":"grace","method":"passkey"} -> 202 Accepted
//! POST /user/login {"user":"linus" -> 400 Bad Request: malformed JSON: EOF while parsing an object at line 1 column 15
//! POST /user/login {"method":"password"} -> 400 Bad Request: missing field `user`
//! POST /events {"specversion":"1.0","id":"legacy-1","source":"/legacy"} -> 400 Bad Request: not a CloudEvent: missing field `type`
//! POST /events {"specversion":"1.0","id":"sso-7","source":"/sso","type":"com.example.user.logged_in","data":{"user":"barbara","method":"sso"}} -> 202 Accepted
//! first event: specversion 1.0, type com.example.user.logged_in, source /user/login, datacontenttype application/json, an id, a time
//! notifier (plain subscription): ada, grace, barbara
//! audit (durable consumer): ada, grace, barbara
//! both consumers stopped
//! POST /user/login {"user":"ken","method":"password"} -> 202 Accepted
//! POST /user/login {"user":"margaret","method":"passkey"} -> 202 Accepted
//! both consumers started again
//! POST /user/login {"user":"dennis","method":"password"} -> 202 Accepted
//! notifier got: dennis (the 2 events published while it was down are gone: at-most-once)
//! audit got: ken, margaret, dennis (the stream kept what it missed: at-least-once)
//! lost: notifier 2 of 6 events, audit 0 of 6
//! ```
//!
//! Read it beside `notes/event.md`.

mod bus;
mod http;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Body;
use clap::{Parser, Subcommand};
use cloudevents::{AttributesReader, Event};
use microkit::backend::{Backend, BackendArgs};
use microkit::broker::Handler;
use microkit::{Out, say};
use tower::ServiceExt;

use bus::{Durable, EventBus};

#[derive(Parser, Debug)]
#[command(about = "HTTP to CloudEvents; at-most-once vs a durable (at-least-once) consumer")]
struct Args {
    #[command(flatten)]
    backend: BackendArgs,

    /// Run one role against a shared NATS server; without a role, everything runs here.
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Serves POST /user/login and POST /events until Ctrl-C.
    Serve {
        /// Where to listen (port 0: any free port, printed on start).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// The durable consumer "audit": prints each login until Ctrl-C. Stop it, post some
    /// logins, start it again: it prints what it missed.
    Audit,
}

/// The durable consumer's name: the stream keeps its position under it.
const AUDIT: &str = "audit";
/// Every wait is capped; this only turns a hang into an error.
const PATIENCE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse(), &Out::stdout()).await)
}

async fn run(args: Args, out: &Out) -> anyhow::Result<()> {
    let nats_url = std::env::var(microkit::backend::NATS_URL).ok().filter(|url| !url.is_empty());
    run_with(args, nats_url.as_deref(), out).await
}

/// `run`, with `NATS_URL`'s value passed in (so tests need not touch the environment).
async fn run_with(args: Args, nats_url: Option<&str>, out: &Out) -> anyhow::Result<()> {
    let Some(role) = args.role else {
        let backend = args.backend.connect_with(nats_url).await?;
        return run_all_here(&backend, out).await;
    };
    let Some(url) = nats_url else {
        bail!(
            "the serve and audit roles run in separate processes and meet on NATS: start \
             `nats-server -js` and set NATS_URL=nats://127.0.0.1:4222 in each terminal"
        );
    };
    let backend = args.backend.connect_with(Some(url)).await?;
    if matches!(backend, Backend::Memory { .. }) {
        bail!("the roles need NATS; drop --backend memory (or MICRO_BACKEND=memory)");
    }
    let bus = Arc::new(EventBus::connect(&backend).await?);
    match role {
        Role::Serve { listen } => serve(bus, listen, out).await,
        Role::Audit => audit(&bus, out).await,
    }
}

async fn serve(bus: Arc<EventBus>, listen: std::net::SocketAddr, out: &Out) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    // Print the bound address: with port 0 the system picks a free one.
    let bound = listener.local_addr()?;
    say!(out, "serving POST /user/login and POST /events on http://{bound} (Ctrl-C to stop)");
    axum::serve(listener, http::router(bus))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

async fn audit(bus: &EventBus, out: &Out) -> anyhow::Result<()> {
    let consumer = bus.durable(AUDIT).await?;
    say!(out, "audit: resuming where the last run acknowledged (Ctrl-C to stop)");
    let mut ticks = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        consumer
            .take_waiting(|event| match event {
                Some(event) => say!(out, "audit: {} at {}", user_of(&event), time_of(&event)),
                None => say!(out, "audit: skipped a payload that is not a CloudEvent"),
            })
            .await?;
    }
}

/// The `user` in an event's JSON data, or `?`.
fn user_of(event: &Event) -> String {
    match event.data() {
        Some(cloudevents::Data::Json(json)) => json["user"].as_str().unwrap_or("?").to_owned(),
        _ => "?".to_owned(),
    }
}

fn time_of(event: &Event) -> String {
    event.time().map(|time| time.to_rfc3339()).unwrap_or_else(|| "(no time)".to_owned())
}

/// Sends one request through the router (no socket: the same code `serve` runs) and prints
/// the request and the answer.
async fn post(router: &Router, path: &str, body: &str, out: &Out) -> anyhow::Result<()> {
    let request = axum::http::Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))?;
    let response = router.clone().oneshot(request).await?;
    let status = response.status();
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024).await?;
    let reason = status.canonical_reason().unwrap_or("");
    if status.is_success() {
        say!(out, "POST {path} {body} -> {} {reason}", status.as_u16());
    } else {
        let text = String::from_utf8_lossy(&text);
        say!(out, "POST {path} {body} -> {} {reason}: {text}", status.as_u16());
    }
    Ok(())
}

async fn login(router: &Router, user: &str, method: &str, out: &Out) -> anyhow::Result<()> {
    let body = format!(r#"{{"user":"{user}","method":"{method}"}}"#);
    post(router, "/user/login", &body, out).await
}

/// The plain subscriber: records users, and keeps the first event for a closer look.
struct Notifier {
    users: Arc<Mutex<Vec<String>>>,
    first: Arc<Mutex<Option<Event>>>,
    handler: Handler,
}

async fn start_notifier(bus: &EventBus) -> anyhow::Result<Notifier> {
    let users = Arc::new(Mutex::new(Vec::new()));
    let first = Arc::new(Mutex::new(None));
    let subscription = bus.subscribe().await?;
    let handler = subscription.handle({
        let (users, first) = (users.clone(), first.clone());
        move |message| {
            if let Some(event) = bus::decode(&message.payload) {
                users.lock().unwrap().push(user_of(&event));
                first.lock().unwrap().get_or_insert(event);
            }
            std::future::ready(())
        }
    });
    Ok(Notifier { users, first, handler })
}

/// Takes from the durable consumer until it has `count` users (capped by PATIENCE).
async fn take_users(consumer: &Durable, count: usize) -> anyhow::Result<Vec<String>> {
    let mut users = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while users.len() < count {
            consumer.take_waiting(|event| users.extend(event.as_ref().map(user_of))).await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        anyhow::Ok(())
    })
    .await
    .with_context(|| format!("the durable consumer got {} of {count} events", users.len()))??;
    Ok(users)
}

async fn wait_for_users(notifier: &Notifier, count: usize) -> anyhow::Result<Vec<String>> {
    let users = || notifier.users.lock().unwrap().clone();
    tokio::time::timeout(PATIENCE, async {
        while users().len() < count {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .with_context(|| format!("the notifier got {} of {count} events", users().len()))?;
    Ok(users())
}

async fn run_all_here(backend: &Backend, out: &Out) -> anyhow::Result<()> {
    let bus = Arc::new(EventBus::connect(backend).await?);
    // A clean slate: a durable consumer left by an earlier run on the same server resumes
    // otherwise, which is the point of it, but not of this demo.
    bus.forget(AUDIT).await?;
    let notifier = start_notifier(&bus).await?;
    let audit = bus.durable(AUDIT).await?;
    let router = http::router(bus.clone());

    login(&router, "ada", "password", out).await?;
    login(&router, "grace", "passkey", out).await?;
    post(&router, "/user/login", r#"{"user":"linus""#, out).await?;
    post(&router, "/user/login", r#"{"method":"password"}"#, out).await?;
    let legacy = r#"{"specversion":"1.0","id":"legacy-1","source":"/legacy"}"#;
    post(&router, "/events", legacy, out).await?;
    let sso = r#"{"specversion":"1.0","id":"sso-7","source":"/sso","type":"com.example.user.logged_in","data":{"user":"barbara","method":"sso"}}"#;
    post(&router, "/events", sso, out).await?;

    let seen_by_notifier = wait_for_users(&notifier, 3).await?;
    let seen_by_audit = take_users(&audit, 3).await?;
    if let Some(first) = notifier.first.lock().unwrap().as_ref() {
        say!(
            out,
            "first event: specversion {}, type {}, source {}, datacontenttype {}, {}, {}",
            first.specversion(),
            first.ty(),
            first.source(),
            first.datacontenttype().unwrap_or("(none)"),
            if first.id().is_empty() { "NO id" } else { "an id" },
            if first.time().is_some() { "a time" } else { "NO time" },
        );
    }
    say!(out, "notifier (plain subscription): {}", seen_by_notifier.join(", "));
    say!(out, "audit (durable consumer): {}", seen_by_audit.join(", "));

    // Both go down: the subscription is removed, the durable consumer is just not asked.
    notifier.handler.stop().await;
    drop(audit);
    say!(out, "both consumers stopped");
    login(&router, "ken", "password", out).await?;
    login(&router, "margaret", "passkey", out).await?;

    let notifier = start_notifier(&bus).await?;
    let audit = bus.durable(AUDIT).await?;
    say!(out, "both consumers started again");
    login(&router, "dennis", "password", out).await?;

    // The notifier's first event after its return is dennis: per-publisher order means
    // ken and margaret, had they been delivered at all, would have come first.
    let notified = wait_for_users(&notifier, 1).await?;
    let audited = take_users(&audit, 3).await?;
    let while_down = ["ken", "margaret"];
    let missed = while_down.iter().filter(|user| !notified.contains(&user.to_string())).count();
    say!(
        out,
        "notifier got: {} (the {missed} events published while it was down are gone: \
         at-most-once)",
        notified.join(", ")
    );
    say!(out, "audit got: {} (the stream kept what it missed: at-least-once)", audited.join(", "));
    let total = 6;
    let lost_by_notifier = total - seen_by_notifier.len() - notified.len();
    let lost_by_audit = total - seen_by_audit.len() - audited.len();
    say!(
        out,
        "lost: notifier {lost_by_notifier} of {total} events, audit {lost_by_audit} of {total}"
    );

    notifier.handler.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests;
