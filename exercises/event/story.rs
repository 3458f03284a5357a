//! The default run, printed as it happens: two consumers get the first logins, both are
//! stopped, two more logins are posted, both start again, and the outcome counts who lost
//! what. The requests go through the same router `serve` puts on a socket.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use broker::Handler;
use cloudevents::{AttributesReader, Event};
use microkit::PATIENCE;
use microkit_backend::Backend;
use tower::ServiceExt;

use crate::bus::{self, Durable, EventBus};
use crate::http;

/// The durable consumer's name: the stream keeps its position under it.
pub const AUDIT: &str = "audit";

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
pub fn user_of(event: &Event) -> String {
    match event.data() {
        Some(cloudevents::Data::Json(json)) => json["user"].as_str().unwrap_or("?").to_owned(),
        _ => "?".to_owned(),
    }
}

/// Sends one request through the router (no socket: the same code `serve` runs), prints
/// the request and the answer, and returns the answer's status.
pub async fn post(router: &Router, path: &str, body: &str) -> anyhow::Result<StatusCode> {
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

pub async fn login(router: &Router, user: &str, method: &str) -> anyhow::Result<StatusCode> {
    let body = format!(r#"{{"user":"{user}","method":"{method}"}}"#);
    post(router, "/user/login", &body).await
}

/// Who got which login.
#[derive(Debug, PartialEq)]
pub struct Told {
    pub notifier: Got,
    pub audit: Got,
    /// Deliveries the durable consumer dropped: an event it had already handled.
    pub duplicates: u64,
}

/// One consumer's users before both consumers were stopped, and after they came back.
#[derive(Debug, PartialEq)]
pub struct Got {
    pub before: Vec<String>,
    pub after: Vec<String>,
}

impl Told {
    /// The story's last lines: who got what after the restart, and who lost what.
    fn print_outcome(&self) {
        let Got { before: seen_by_notifier, after: notified } = &self.notifier;
        let Got { before: seen_by_audit, after: audited } = &self.audit;
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
pub async fn run_all_here(backend: &Backend) -> anyhow::Result<Told> {
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
        notifier: Got { before: seen_by_notifier, after: notified },
        audit: Got { before: seen_by_audit, after: audited },
        duplicates: audit.duplicates(),
    };
    told.print_outcome();
    Ok(told)
}
