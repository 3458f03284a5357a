//! # event: an HTTP request becomes a CloudEvent, and a consumer that was down misses nothing
//!
//! An event says what happened, who made it and when (CloudEvents 1.0: id, source, type,
//! time). `http.rs` turns `POST /user/login` into one, or answers 400 naming the problem.
//! The lesson is in `bus.rs`: [`bus::EventBus`] publishes each event once for two kinds of
//! consumer, a plain subscription (at-most-once) and a [`bus::Durable`] consumer of a
//! stream (at-least-once: JetStream on NATS). The story stops both, posts two logins,
//! starts both again, and counts who lost what.
//!
//! go-micro's example published the POST on a topic and stopped there: a subscriber that
//! was down never heard of the event, and nothing said so.
//!
//! Run it alone, or its roles across terminals on one NATS server (`nats-server -js`, and
//! `NATS_URL` set in each):
//!
//! ```text
//! cargo run --example event                       # NATS (JetStream) if installed
//! cargo run --example event -- --backend memory   # the stream lives in memory
//! cargo run --example event -- audit              # the durable consumer; stop it, restart it
//! cargo run --example event -- serve --listen 127.0.0.1:8080
//! curl -i -d '{"user":"ada","method":"password"}' http://127.0.0.1:8080/user/login
//! ```
//!
//! Prints `tests/golden/event.txt`; explained in `notes/event.md`.

mod bus;
mod http;
mod roles;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use clap::Subcommand;
use cloudevents::{AttributesReader, Event};
use microkit::PATIENCE;
use microkit::backend::Backend;
use microkit::broker::Handler;
use tower::ServiceExt;

use bus::{Durable, EventBus};

/// The durable consumer's name: the stream keeps its position under it.
const AUDIT: &str = "audit";

/// The plain subscriber: records users, and keeps the first event for a closer look.
struct Notifier {
    users: tokio::sync::watch::Sender<Vec<String>>,
    first: Arc<Mutex<Option<Event>>>,
    handler: Handler,
}

impl Notifier {
    async fn start(bus: &EventBus) -> anyhow::Result<Notifier> {
        let users = tokio::sync::watch::Sender::new(Vec::new());
        let first = Arc::new(Mutex::new(None));
        let subscription = bus.subscribe().await?;
        let handler = subscription.handle({
            let (users, first) = (users.clone(), first.clone());
            move |message| {
                if let Some(event) = bus::decode(&message.payload) {
                    users.send_modify(|users| users.push(user_of(&event)));
                    first.lock().unwrap().get_or_insert(event);
                }
                std::future::ready(())
            }
        });
        Ok(Notifier { users, first, handler })
    }

    /// Waits (capped) until the notifier has `count` users, and returns them.
    async fn users(&self, count: usize) -> anyhow::Result<Vec<String>> {
        let mut users = self.users.subscribe();
        let got = tokio::time::timeout(PATIENCE, users.wait_for(|users| users.len() >= count));
        match got.await {
            Ok(users) => Ok(users?.clone()),
            Err(_) => {
                let got = self.users.borrow().len();
                anyhow::bail!("the notifier got {got} of {count} events within {PATIENCE:?}")
            }
        }
    }
}

/// Takes `count` users from the durable consumer (waiting at most PATIENCE for them).
async fn take_users(consumer: &Durable, count: usize) -> anyhow::Result<Vec<String>> {
    let mut users = Vec::new();
    consumer.take(count, PATIENCE, |event| users.extend(event.as_ref().map(user_of))).await?;
    anyhow::ensure!(users.len() == count, "the durable consumer got {} of {count}", users.len());
    Ok(users)
}

/// The `user` in an event's JSON data, or `?`.
fn user_of(event: &Event) -> String {
    match event.data() {
        Some(cloudevents::Data::Json(json)) => json["user"].as_str().unwrap_or("?").to_owned(),
        _ => "?".to_owned(),
    }
}

/// Sends one request through the router (no socket: the same code `serve` runs), prints
/// the request and the answer, and returns the answer's status.
async fn post(router: &Router, path: &str, body: &str) -> anyhow::Result<StatusCode> {
    let request = axum::http::Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))?;
    let response = router.clone().oneshot(request).await?;
    let status = response.status();
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024).await?;
    let reason = status.canonical_reason().unwrap_or("");
    if status.is_success() {
        println!("POST {path} {body} -> {} {reason}", status.as_u16());
    } else {
        let text = String::from_utf8_lossy(&text);
        println!("POST {path} {body} -> {} {reason}: {text}", status.as_u16());
    }
    Ok(status)
}

async fn login(router: &Router, user: &str, method: &str) -> anyhow::Result<StatusCode> {
    let body = format!(r#"{{"user":"{user}","method":"{method}"}}"#);
    post(router, "/user/login", &body).await
}

/// Who got which login: each consumer's users before both were stopped, and after they
/// came back.
#[derive(Debug, PartialEq)]
struct Told {
    notifier: (Vec<String>, Vec<String>),
    audit: (Vec<String>, Vec<String>),
    /// Deliveries the durable consumer dropped: an event it had already handled.
    duplicates: u64,
}

impl Told {
    /// The story's last lines: who got what after the restart, and who lost what.
    fn print_outcome(&self) {
        let ((seen_by_notifier, notified), (seen_by_audit, audited)) =
            (&self.notifier, &self.audit);
        let missed =
            ["ken", "margaret"].iter().filter(|user| !notified.contains(&user.to_string()));
        println!(
            "notifier got: {} (the {} events published while it was down are gone: at-most-once)",
            notified.join(", "),
            missed.count()
        );
        println!(
            "audit got: {} (the stream kept what it missed: at-least-once)",
            audited.join(", ")
        );
        let total = 6;
        let lost_by_notifier = total - seen_by_notifier.len() - notified.len();
        let lost_by_audit = total - seen_by_audit.len() - audited.len();
        println!(
            "lost: notifier {lost_by_notifier} of {total} events, audit {lost_by_audit} of {total}"
        );
        println!(
            "duplicates: audit dropped {} (a delivery of an event id it had handled)",
            self.duplicates
        );
    }
}

/// The default run, printed as it happens.
async fn run_all_here(backend: &Backend) -> anyhow::Result<Told> {
    let bus = Arc::new(EventBus::connect(backend).await?);
    // A clean slate: a durable consumer left by an earlier run on the same server resumes
    // otherwise, which is the point of it, but not of this demo.
    bus.forget(AUDIT).await?;
    let notifier = Notifier::start(&bus).await?;
    let audit = bus.durable(AUDIT).await?;
    let router = http::router(bus.clone());

    login(&router, "ada", "password").await?;
    login(&router, "grace", "passkey").await?;
    post(&router, "/user/login", r#"{"user":"linus""#).await?;
    post(&router, "/user/login", r#"{"method":"password"}"#).await?;
    let legacy = r#"{"specversion":"1.0","id":"legacy-1","source":"/legacy"}"#;
    post(&router, "/events", legacy).await?;
    let sso = r#"{"specversion":"1.0","id":"sso-7","source":"/sso","type":"com.example.user.logged_in","data":{"user":"barbara","method":"sso"}}"#;
    post(&router, "/events", sso).await?;

    let seen_by_notifier = notifier.users(3).await?;
    let seen_by_audit = take_users(&audit, 3).await?;
    if let Some(first) = notifier.first.lock().unwrap().as_ref() {
        println!(
            "first event: specversion {}, type {}, source {}, datacontenttype {}, {}, {}",
            first.specversion(),
            first.ty(),
            first.source(),
            first.datacontenttype().unwrap_or("(none)"),
            if first.id().is_empty() { "NO id" } else { "an id" },
            if first.time().is_some() { "a time" } else { "NO time" },
        );
    }
    println!("notifier (plain subscription): {}", seen_by_notifier.join(", "));
    println!("audit (durable consumer): {}", seen_by_audit.join(", "));

    // Both go down: the subscription is removed, the durable consumer is just not asked.
    notifier.handler.stop().await;
    drop(audit);
    println!("both consumers stopped");
    login(&router, "ken", "password").await?;
    login(&router, "margaret", "passkey").await?;

    let notifier = Notifier::start(&bus).await?;
    let audit = bus.durable(AUDIT).await?;
    println!("both consumers started again");
    login(&router, "dennis", "password").await?;

    // The notifier's first event after its return is dennis: per-publisher order means
    // ken and margaret, had they been delivered at all, would have come first.
    let notified = notifier.users(1).await?;
    let audited = take_users(&audit, 3).await?;
    notifier.handler.stop().await;
    let told = Told {
        notifier: (seen_by_notifier, notified),
        audit: (seen_by_audit, audited),
        duplicates: audit.duplicates(),
    };
    told.print_outcome();
    Ok(told)
}

/// `--backend`, and the role to run (none: the whole story, in this one process).
type Args = microkit::backend::Cli<Role>;

#[derive(Subcommand, Debug)]
enum Role {
    /// Serves POST /user/login and POST /events until stopped (SIGTERM, SIGINT, SIGHUP).
    Serve {
        /// Where to listen (port 0: any free port, printed on start).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// The durable consumer "audit": prints each login until stopped. Stop it, post some
    /// logins, start it again: it prints what it missed.
    Audit,
}

impl microkit::backend::Roles for Role {
    const ABOUT: &'static str =
        "HTTP to CloudEvents; at-most-once vs a durable (at-least-once) consumer";
}

fn main() -> std::process::ExitCode {
    microkit::main(run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let backend = args.backend.connect().await?;
    let Some(role) = args.role else {
        return run_all_here(&backend).await.map(drop);
    };
    backend.require_shared_nats("the serve and audit roles")?;
    let bus = Arc::new(EventBus::connect(&backend).await?);
    match role {
        Role::Serve { listen } => roles::serve(bus, listen).await,
        Role::Audit => roles::audit(&bus).await,
    }
}

#[cfg(test)]
mod tests;
