//! Tests of `dashboard.rs`.

use microkit::server::RunningServer;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use axum::body::Body;
use axum::routing::get;
use futures::stream::BoxStream;
use microkit::PATIENCE;
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
async fn connect(http: &microkit_http::Forwarder, gateway: &RunningServer) -> Events {
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
    // Served by axum itself: every server of microkit-http answers `/health/ready` with a
    // route of its own, and this node's route counts the probes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_addr = listener.local_addr().unwrap();
    let node = tokio::spawn(async move { axum::serve(listener, node).await });
    let registry = Arc::new(CountsWatches::default());
    let hello = web_node("hello", "hello-1", node_addr);
    registry.register(&hello, Duration::from_secs(60)).await.unwrap();
    let gateway = microkit_http::start(router(Gateway::new(registry.clone()))).await.unwrap();

    let http = microkit_http::Forwarder::default();
    let mut viewers = Vec::new();
    for _ in 0..20 {
        let mut events = connect(&http, &gateway).await;
        let picture = next_event(&mut events).await;
        assert!(picture.contains(r#""id":"hello-1""#) && picture.contains("ready"), "{picture}");
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
    node.abort();
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
