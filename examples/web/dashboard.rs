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
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use axum::body::Body;
    use axum::routing::get;
    use futures::stream::BoxStream;
    use microkit::PATIENCE;
    use microkit_http::HttpServer;
    use registry::{Change, MemoryRegistry, Node, Registry, RegistryError};
    use tower::ServiceExt;

    use super::*;
    use crate::gateway::{router, web_node};

    /// A memory registry that counts the watches it was asked for.
    #[derive(Default)]
    struct CountsWatches {
        inner: MemoryRegistry,
        watches: AtomicUsize,
    }

    #[async_trait]
    impl Registry for CountsWatches {
        async fn register(&self, node: &Node, ttl: Duration) -> Result<(), RegistryError> {
            self.inner.register(node, ttl).await
        }
        async fn deregister(&self, service: &str, id: &str) -> Result<(), RegistryError> {
            self.inner.deregister(service, id).await
        }
        async fn nodes(&self, service: &str) -> Result<Vec<Node>, RegistryError> {
            self.inner.nodes(service).await
        }
        async fn watch(&self, service: &str) -> Result<BoxStream<'static, Change>, RegistryError> {
            self.watches.fetch_add(1, Ordering::Relaxed);
            self.inner.watch(service).await
        }
    }

    type Events = BoxStream<'static, Result<axum::body::Bytes, axum::Error>>;

    /// `GET /events` on `gateway`: the status, and the stream's body.
    async fn open(gateway: axum::Router) -> (StatusCode, Events) {
        let request = http::Request::get("/events").body(Body::empty()).unwrap();
        let response = gateway.oneshot(request).await.unwrap();
        (response.status(), response.into_body().into_data_stream().boxed())
    }

    /// The same over a socket, so the server polls the stream as it would for a browser.
    async fn connect(http: &microkit_http::Forwarder, gateway: &HttpServer) -> Events {
        let url = format!("{}/events", gateway.url());
        let response = http.send(http::Request::get(url).body(Body::empty()).unwrap()).await;
        let response = response.expect("the gateway answers");
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().into_data_stream().boxed()
    }

    /// The data of the next event on a stream.
    async fn next_event(events: &mut Events) -> String {
        let next = async {
            loop {
                let chunk = events.next().await.expect("the stream goes on").unwrap();
                let text = String::from_utf8_lossy(&chunk).into_owned();
                if let Some(data) = text.strip_prefix("data: ") {
                    return data.trim_end().to_owned();
                }
            }
        };
        tokio::time::timeout(PATIENCE, next).await.expect("an event within PATIENCE")
    }

    #[tokio::test]
    async fn twenty_viewers_cost_one_registry_watch_and_one_probe_loop() {
        let probes = watch::Sender::new(0usize);
        let node = axum::Router::new().route("/health/ready", {
            let probes = probes.clone();
            get(move || {
                probes.send_modify(|n| *n += 1);
                async { "ready" }
            })
        });
        let node = HttpServer::start(node).await.unwrap();
        let registry = Arc::new(CountsWatches::default());
        let hello = web_node("hello", "hello-1", node.addr());
        registry.register(&hello, Duration::from_secs(60)).await.unwrap();
        let gateway = HttpServer::start(router(Gateway::new(registry.clone()))).await.unwrap();

        let http = microkit_http::Forwarder::new();
        let mut viewers = Vec::new();
        for _ in 0..20 {
            let mut events = connect(&http, &gateway).await;
            let picture = next_event(&mut events).await;
            assert!(
                picture.contains(r#""id":"hello-1""#) && picture.contains("ready"),
                "{picture}"
            );
            viewers.push(events);
        }
        assert_eq!(registry.watches.load(Ordering::Relaxed), 1, "one watch for every viewer");

        // One loop probes a node once per period at most, however many viewers there are:
        // five more probes take at least four periods (a loop per viewer: a fraction of one).
        let mut counted = probes.subscribe();
        let before = *counted.borrow_and_update();
        let started = tokio::time::Instant::now();
        let five_more = counted.wait_for(|n| *n >= before + 5);
        tokio::time::timeout(PATIENCE, five_more).await.expect("probes go on").unwrap();
        let took = started.elapsed();
        assert!(took >= PROBE_PERIOD * 3, "5 probes in {took:?}: more than one loop probes");
        drop(viewers);
        gateway.shutdown().await.unwrap();
        node.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_viewer_past_the_bound_is_refused_with_503_and_a_reason() {
        let mut gateway = Gateway::new(Arc::new(MemoryRegistry::new()));
        gateway.feed = Feed::new(3);
        let gateway = router(gateway);
        let mut viewers = Vec::new();
        for _ in 0..3 {
            let (status, mut events) = open(gateway.clone()).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(next_event(&mut events).await, r#"{"services":[]}"#);
            viewers.push(events);
        }
        let (status, body) = open(gateway.clone()).await;
        let body: Vec<_> = body.collect().await;
        let reason = String::from_utf8_lossy(&body[0].as_ref().unwrap()[..]).into_owned();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reason, "the dashboard has its 3 viewers already; try again later");

        // A viewer that leaves frees its place, and the next one sees the picture at once.
        viewers.pop();
        let (status, mut events) = open(gateway.clone()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(next_event(&mut events).await, r#"{"services":[]}"#);
    }
}
