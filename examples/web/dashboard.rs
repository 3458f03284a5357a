//! The gateway's front page: `micro web`'s dashboard, live. A browser asking for `/` gets a
//! page that opens `/events`, a server-sent event stream; every event is the whole picture
//! (each web service, its nodes, their addresses and health), sent when it changes: a
//! node joins or leaves (the registry watch says so at once) or its readiness changes (the
//! gateway probes each node's `/health/ready` every [`PROBE_PERIOD`], as a balancer does).
//! Clients that ask for plain text still get one line per service.
//!
//! The picture is made once per gateway, not once per viewer: one registry watch and one
//! probe loop ([`Feed`]) run while anyone is watching, and every `/events` stream is a
//! receiver of what they made. A page left open in many tabs then costs a gateway and its
//! nodes what one tab costs, plus a socket per tab, and [`MAX_VIEWERS`] bounds those.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::header::ACCEPT;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures::{Stream, StreamExt};
use microkit_http::ApiError;
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio_stream::wrappers::WatchStream;

use crate::gateway::{Gateway, WEB_NAMESPACE};

/// How often the gateway asks each node whether it is ready.
pub const PROBE_PERIOD: Duration = Duration::from_millis(500);

/// How many `/events` streams a gateway serves at once; the next is refused with 503. Each
/// is an open connection and a task, however little the shared feed makes it cost
/// otherwise; a hundred people watching one gateway's page is already a lot.
pub const MAX_VIEWERS: usize = 100;

/// The one source of the dashboard's picture, shared by every viewer of a gateway.
#[derive(Clone)]
pub struct Feed {
    /// The latest picture (`None` until the first is made); a viewer is a receiver.
    picture: watch::Sender<Option<Arc<str>>>,
    /// The loop that makes it, while anyone watches. Locked to start or end it, so a viewer
    /// that arrives as the last one leaves either keeps it running or starts a new one.
    making: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
    /// A permit per open stream, at most [`MAX_VIEWERS`].
    viewers: Arc<Semaphore>,
    limit: usize,
}

impl Feed {
    pub fn new(limit: usize) -> Self {
        Feed {
            picture: watch::Sender::new(None),
            making: Arc::default(),
            viewers: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// A viewer's stream of pictures, starting with the latest; or a 503 past the bound.
    fn view(&self, gateway: &Gateway) -> Result<impl Stream<Item = Arc<str>> + use<>, ApiError> {
        let Ok(permit) = self.viewers.clone().try_acquire_owned() else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the dashboard has its {} viewers already; try again later", self.limit),
            ));
        };
        let pictures = {
            let mut making = self.making.lock().unwrap();
            let pictures = self.picture.subscribe();
            if making.as_ref().is_none_or(|task| task.is_finished()) {
                *making = Some(tokio::spawn(make_pictures(gateway.clone(), self.clone())));
            }
            pictures
        };
        // The permit goes with the stream: a viewer that leaves frees its place.
        Ok(WatchStream::new(pictures).filter_map(move |picture| {
            let _place = &permit;
            std::future::ready(picture)
        }))
    }
}

/// The feed's loop: look again on a registry change at once, or after a probe period, and
/// tell the viewers when the picture changed. Ends when the last viewer has gone.
async fn make_pictures(gateway: Gateway, feed: Feed) {
    let mut changes = match gateway.registry.watch(WEB_NAMESPACE).await {
        Ok(changes) => Some(changes),
        Err(error) => {
            tracing::warn!(%error, "no registry watch: the dashboard looks every probe period");
            None
        }
    };
    let mut first = true;
    loop {
        if !first {
            match changes.as_mut() {
                Some(stream) => tokio::select! {
                    change = stream.next() => if change.is_none() { changes = None },
                    () = tokio::time::sleep(PROBE_PERIOD) => {}
                },
                None => tokio::time::sleep(PROBE_PERIOD).await,
            }
        }
        first = false;
        {
            // Under the lock a viewer takes to subscribe: none can arrive unseen.
            let mut making = feed.making.lock().unwrap();
            if feed.picture.receiver_count() == 0 {
                *making = None;
                feed.picture.send_replace(None); // a later viewer waits for a fresh one
                return;
            }
        }
        let now: Arc<str> = snapshot(&gateway).await.into();
        feed.picture.send_if_modified(|picture| {
            let changed = picture.as_deref() != Some(&*now);
            if changed {
                *picture = Some(now);
            }
            changed
        });
    }
}

/// `GET /`: the live page for a browser, the plain listing for anyone else.
pub async fn front(State(gateway): State<Gateway>, headers: HeaderMap) -> Response {
    let html =
        headers.get(ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| a.contains("text/html"));
    if html {
        return Html(PAGE).into_response();
    }
    crate::gateway::list(State(gateway)).await.into_response()
}

/// `GET /events`: the dashboard as a stream of snapshots, one per change.
pub async fn events(
    State(gateway): State<Gateway>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let pictures = gateway.feed.view(&gateway)?;
    let events = pictures.map(|picture| Ok(Event::default().data(&*picture)));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// Every web service, its nodes and each node's health (`ready`, `not ready`, `unreachable`).
async fn snapshot(gateway: &Gateway) -> String {
    let Ok(services) = gateway.services().await else {
        return json!({ "error": "the registry cannot be read" }).to_string();
    };
    let mut listed = Vec::new();
    for (name, nodes) in services {
        let mut shown = Vec::new();
        for node in nodes {
            let health = readiness(gateway, &node.address).await;
            shown.push(json!({ "id": node.id, "address": node.address, "health": health }));
        }
        listed.push(json!({ "name": name, "nodes": shown }));
    }
    json!({ "services": listed }).to_string()
}

async fn readiness(gateway: &Gateway, address: &str) -> &'static str {
    let Ok(request) = http::Request::get(format!("http://{address}/health/ready"))
        .body(axum::body::Body::empty())
    else {
        return "unreachable";
    };
    match tokio::time::timeout(PROBE_PERIOD, gateway.forwarder.send(request)).await {
        Ok(Ok(response)) if response.status().is_success() => "ready",
        Ok(Ok(_)) => "not ready",
        _ => "unreachable",
    }
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>services</title>
<style>body{font-family:sans-serif} td,th{padding:2px 12px;text-align:left}
.ready{color:green} .not-ready{color:#b60} .unreachable{color:#c00}</style></head>
<body><h1>services in the registry</h1>
<p id="status">connecting</p>
<table><thead><tr><th>service</th><th>node</th><th>address</th><th>health</th></tr></thead>
<tbody id="nodes"></tbody></table>
<script>
const events = new EventSource("/events");
events.onopen = () => { document.getElementById("status").textContent = "live"; };
events.onerror = () => { document.getElementById("status").textContent = "reconnecting"; };
events.onmessage = (message) => {
  const view = JSON.parse(message.data);
  const body = document.getElementById("nodes");
  body.replaceChildren();
  for (const service of view.services || []) {
    for (const node of service.nodes) {
      const row = body.insertRow();
      row.dataset.node = node.id;
      for (const text of [service.name, node.id, node.address, node.health]) {
        row.insertCell().textContent = text;
      }
      row.cells[3].className = node.health.replace(" ", "-");
    }
  }
  document.getElementById("status").textContent = "live: " + body.rows.length + " node(s)";
};
</script></body></html>
"#;

#[cfg(test)]
mod tests;
