//! The gateway: what `micro web` was. It lists the web services it finds in the registry
//! and passes `/<service>/...` on to one of that service's nodes.
//!
//! It holds no list of its own: a service appears here by registering, and disappears by
//! deregistering (or by missing its heartbeats). That is the whole of "joining discovery".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get};
use microkit::http::Forwarder;
use microkit::registry::{Node, Registry};

/// Web services register under this one registry name, each node labelled with its own
/// service name, so a gateway can find them all with one lookup (go-micro put them under
/// the `go.micro.web.` prefix for the same reason).
pub const WEB_NAMESPACE: &str = "web";

/// The metadata key that holds a web node's service name.
pub const NAME_KEY: &str = "name";

/// A web node as the registry holds it.
pub fn web_node(name: &str, id: &str, address: impl ToString) -> Node {
    let mut node = Node::new(WEB_NAMESPACE, id, address);
    node.metadata.insert(NAME_KEY.to_owned(), name.to_owned());
    node.metadata.insert("protocol".to_owned(), "http".to_owned());
    node
}

#[derive(Clone)]
pub struct Gateway {
    pub registry: Arc<dyn Registry>,
    pub forwarder: Forwarder,
    /// Spreads requests over a service's nodes, one after another.
    pub next: Arc<AtomicUsize>,
}

impl Gateway {
    pub fn new(registry: Arc<dyn Registry>) -> Self {
        Gateway { registry, forwarder: Forwarder::new(), next: Arc::default() }
    }

    /// Every registered web service with its nodes, by name.
    async fn services(&self) -> Result<BTreeMap<String, Vec<Node>>, String> {
        let nodes = self.registry.nodes(WEB_NAMESPACE).await.map_err(|e| e.to_string())?;
        let mut services: BTreeMap<String, Vec<Node>> = BTreeMap::new();
        for node in nodes {
            if let Some(name) = node.metadata.get(NAME_KEY) {
                services.entry(name.clone()).or_default().push(node);
            }
        }
        Ok(services)
    }
}

/// The gateway's routes: the listing at `/`, everything else proxied by its first segment.
pub fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/", get(list))
        .route("/{service}", any(proxy_root))
        .route("/{service}/", any(proxy_index))
        .route("/{service}/{*rest}", any(proxy))
        .with_state(gateway)
}

/// `GET /`: one line per web service, the dashboard of `micro web` in plain text.
async fn list(State(gateway): State<Gateway>) -> Response {
    match gateway.services().await {
        Ok(services) if services.is_empty() => "no web services registered\n".into_response(),
        Ok(services) => services
            .iter()
            .map(|(name, nodes)| format!("{name}: {} node(s) -> /{name}/\n", nodes.len()))
            .collect::<String>()
            .into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("registry: {e}\n")).into_response(),
    }
}

/// `/<service>` becomes `/<service>/`, so the page's relative links (its websocket)
/// resolve under the service's prefix rather than the gateway's root.
async fn proxy_root(Path(service): Path<String>) -> Redirect {
    Redirect::permanent(&format!("/{service}/"))
}

async fn proxy_index(
    State(gateway): State<Gateway>,
    Path(service): Path<String>,
    request: Request<Body>,
) -> Response {
    forward(gateway, service, String::new(), request).await
}

async fn proxy(
    State(gateway): State<Gateway>,
    Path((service, rest)): Path<(String, String)>,
    request: Request<Body>,
) -> Response {
    forward(gateway, service, rest, request).await
}

/// Picks a node of `service` and passes the request on, with `/<service>` cut off the path.
async fn forward(
    gateway: Gateway,
    service: String,
    rest: String,
    request: Request<Body>,
) -> Response {
    let services = match gateway.services().await {
        Ok(services) => services,
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("registry: {e}\n")).into_response(),
    };
    let Some(nodes) = services.get(&service) else {
        let message = format!("no web service named {service:?} is registered\n");
        return (StatusCode::NOT_FOUND, message).into_response();
    };
    let node = &nodes[gateway.next.fetch_add(1, Ordering::Relaxed) % nodes.len()];
    let mut path = format!("/{rest}");
    if let Some(query) = request.uri().query() {
        path = format!("{path}?{query}");
    }
    tracing::debug!(%service, node = %node.id, %path, "forwarding");
    match gateway.forwarder.forward(&node.address, &path, request).await {
        Ok(response) => response,
        Err(e) => (StatusCode::BAD_GATEWAY, format!("{service}: {e}\n")).into_response(),
    }
}
