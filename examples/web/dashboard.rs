//! The gateway's front page: `micro web`'s dashboard, live. A browser asking for `/` gets a
//! page that opens `/events`, a server-sent event stream; every event is the whole picture
//! (each web service, its nodes, their addresses and health), sent when it changes: a
//! node joins or leaves (the registry watch says so at once) or its readiness changes (the
//! gateway probes each node's `/health/ready` every [`PROBE_PERIOD`], as a balancer does).
//! Clients that ask for plain text still get one line per service.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::ACCEPT;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures::{Stream, StreamExt};
use microkit::http::ApiError;
use serde_json::json;

use crate::gateway::{Gateway, WEB_NAMESPACE};

/// How often the gateway asks each node whether it is ready.
pub const PROBE_PERIOD: Duration = Duration::from_millis(500);

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
    let changes = gateway
        .registry
        .watch(WEB_NAMESPACE)
        .await
        .map_err(|e| ApiError::bad_gateway(format!("registry: {e}")))?;
    let start = (gateway, Some(changes), None::<String>, true);
    let snapshots =
        futures::stream::unfold(start, |(gateway, mut changes, last, first)| async move {
            let mut first = first;
            loop {
                if !first {
                    // Look again on a registry change at once, or after a probe period.
                    match changes.as_mut() {
                        Some(stream) => tokio::select! {
                            change = stream.next() => if change.is_none() { changes = None },
                            () = tokio::time::sleep(PROBE_PERIOD) => {}
                        },
                        None => tokio::time::sleep(PROBE_PERIOD).await,
                    }
                }
                first = false;
                let now = snapshot(&gateway).await;
                if last.as_deref() != Some(now.as_str()) {
                    let event = Event::default().data(now.clone());
                    return Some((Ok(event), (gateway, changes, Some(now), false)));
                }
            }
        });
    Ok(Sse::new(snapshots).keep_alive(KeepAlive::default()))
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
