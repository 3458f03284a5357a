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
use axum::http::{Request, Uri};
use axum::response::{Redirect, Response};
use axum::routing::{any, get};
use microkit::http::{ApiError, Forwarder};
use microkit::registry::{Node, Registry};

use crate::policy::AllowList;

/// Web services register under this one registry name, each node labelled with its own
/// service name, so a gateway can find them all with one lookup (go-micro put them under
/// the `go.micro.web.` prefix for the same reason).
pub const WEB_NAMESPACE: &str = "web";

/// The metadata key that holds a web node's service name.
pub const NAME_KEY: &str = "name";

#[derive(Clone)]
pub struct Gateway {
    pub registry: Arc<dyn Registry>,
    pub forwarder: Forwarder,
    /// Spreads requests over a service's nodes, one after another; so it also counts them.
    pub next: Arc<AtomicUsize>,
    /// The gateway's own redirect (`/<service>` to `/<service>/`) copies the request's
    /// path into `Location`, so it passes the redirect example's checks (paths only).
    pub redirects: Arc<AllowList>,
}

impl Gateway {
    pub fn new(registry: Arc<dyn Registry>) -> Self {
        let redirects = Arc::new(AllowList::new(&[]));
        Gateway { registry, forwarder: Forwarder::new(), next: Arc::default(), redirects }
    }

    /// Discovery: every registered web service with its nodes, by name, as the registry
    /// holds them now. Asked on every request, so a node that joins or leaves counts at once.
    pub(crate) async fn services(&self) -> Result<BTreeMap<String, Vec<Node>>, ApiError> {
        let nodes = self
            .registry
            .nodes(WEB_NAMESPACE)
            .await
            .map_err(|e| ApiError::bad_gateway(format!("registry: {e}")))?;
        let mut services: BTreeMap<String, Vec<Node>> = BTreeMap::new();
        for node in nodes {
            if let Some(name) = node.metadata.get(NAME_KEY) {
                services.entry(name.clone()).or_default().push(node);
            }
        }
        Ok(services)
    }

    /// Forwarding: picks a node of `service` in turn and passes the request on, with
    /// `/<service>` cut off the path, which stays as the client sent it (still
    /// percent-encoded: decoded, `%3F` would become a query and `%23` would cut the path).
    async fn forward(&self, service: &str, request: Request<Body>) -> Result<Response, ApiError> {
        let services = self.services().await?;
        let nodes = services.get(service).ok_or_else(|| {
            ApiError::not_found(format!("no web service named {service:?} is registered"))
        })?;
        let node = &nodes[self.next.fetch_add(1, Ordering::Relaxed) % nodes.len()];
        let path_and_query = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let path = path_and_query[1..].find('/').map_or("/", |slash| &path_and_query[slash + 1..]);
        let path = path.to_owned();
        tracing::debug!(%service, node = %node.id, %path, "forwarding");
        self.forwarder
            .forward(&node.address, &path, request)
            .await
            .map_err(|e| ApiError::bad_gateway(format!("{service}: {e}")))
    }

    /// Requests passed on to a node, over the gateway's life.
    pub fn forwarded(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }
}

/// A web node as the registry holds it.
pub fn web_node(name: &str, id: &str, address: impl ToString) -> Node {
    let mut node = Node::new(WEB_NAMESPACE, id, address);
    node.metadata.insert(NAME_KEY.to_owned(), name.to_owned());
    node.metadata.insert("protocol".to_owned(), "http".to_owned());
    node
}

/// The gateway's routes: the live page at `/` (`dashboard.rs`) and its `/events`, everything
/// else proxied by its first segment.
pub fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/", get(crate::dashboard::front))
        .route("/events", get(crate::dashboard::events))
        .route("/{service}", any(proxy_root))
        .route("/{service}/", any(proxy_index))
        .route("/{service}/{*rest}", any(proxy))
        .with_state(gateway)
}

/// `GET /` for a client that is not a browser: one line per web service.
pub(crate) async fn list(State(gateway): State<Gateway>) -> Result<String, ApiError> {
    let services = gateway.services().await?;
    if services.is_empty() {
        return Ok("no web services registered\n".into());
    }
    Ok(services
        .iter()
        .map(|(name, nodes)| format!("{name}: {} node(s) -> /{name}/\n", nodes.len()))
        .collect())
}

/// `/<service>` becomes `/<service>/`, so the page's relative links (its websocket)
/// resolve under the service's prefix rather than the gateway's root. The target is made
/// from the request, so it is checked as any redirect target is: `/%2Fevil.example` must
/// not become `//evil.example/`, another host to a browser.
async fn proxy_root(State(gateway): State<Gateway>, uri: Uri) -> Result<Redirect, ApiError> {
    let target = format!("{}/", uri.path());
    gateway
        .redirects
        .check(&target)
        .map_err(|refusal| ApiError::bad_request(format!("refused redirect: {refusal}")))?;
    Ok(Redirect::permanent(&target))
}

async fn proxy_index(
    State(gateway): State<Gateway>,
    Path(service): Path<String>,
    request: Request<Body>,
) -> Result<Response, ApiError> {
    gateway.forward(&service, request).await
}

async fn proxy(
    State(gateway): State<Gateway>,
    Path((service, _)): Path<(String, String)>,
    request: Request<Body>,
) -> Result<Response, ApiError> {
    gateway.forward(&service, request).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::StatusCode;
    use microkit::http::HttpServer;
    use microkit::registry::MemoryRegistry;

    use super::*;
    use crate::service::tests::call;
    use crate::service::{GREETER, WebService};

    const TTL: Duration = Duration::from_secs(60);

    fn registry() -> Arc<dyn Registry> {
        Arc::new(MemoryRegistry::new())
    }

    #[tokio::test]
    async fn the_gateway_lists_forwards_and_forgets() {
        let registry = registry();
        let gateway = router(Gateway::new(registry.clone()));
        assert_eq!(call(gateway.clone(), "/").await.1, "no web services registered\n");

        let service = WebService::new("hello-1", registry.clone());
        let hello = HttpServer::start(crate::service::router(service)).await.unwrap();
        registry.register(&web_node("hello", "hello-1", hello.addr()), TTL).await.unwrap();
        // A node of another registry name is not a web service, and is not listed.
        registry.register(&Node::new(GREETER, "greeter-1", "127.0.0.1:1"), TTL).await.unwrap();

        assert_eq!(call(gateway.clone(), "/").await.1, "hello: 1 node(s) -> /hello/\n");
        assert_eq!(call(gateway.clone(), "/hello/greet?name=cy").await.1, "hello cy, from hello-1");
        assert_eq!(
            call(gateway.clone(), "/hello").await,
            (StatusCode::PERMANENT_REDIRECT, "-> /hello/".into())
        );
        let (status, page) = call(gateway.clone(), "/hello/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("<title>greetings over a websocket</title>"));
        let (status, body) = call(gateway.clone(), "/greeter/").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

        registry.deregister("web", "hello-1").await.unwrap();
        let (status, body) = call(gateway.clone(), "/hello/greet").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::NOT_FOUND, "no web service named \"hello\" is registered")
        );
        hello.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_registered_node_that_is_down_is_a_bad_gateway_naming_it() {
        let registry = registry();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        registry.register(&web_node("ghost", "ghost-1", closed), TTL).await.unwrap();
        let (status, body) = call(router(Gateway::new(registry)), "/ghost/x").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(body.contains(&closed.to_string()), "{body}");
    }

    #[tokio::test]
    async fn requests_rotate_over_the_nodes_of_a_service() {
        let registry = registry();
        let mut servers = Vec::new();
        for id in ["hello-1", "hello-2"] {
            let service = WebService::new(id, registry.clone());
            let server = HttpServer::start(crate::service::router(service)).await.unwrap();
            registry.register(&web_node("hello", id, server.addr()), TTL).await.unwrap();
            servers.push(server);
        }
        let gateway = Gateway::new(registry);
        let mut answers = Vec::new();
        for _ in 0..4 {
            answers.push(call(router(gateway.clone()), "/hello/greet?name=x").await.1);
        }
        let from: Vec<&str> = answers.iter().map(|a| a.rsplit(' ').next().unwrap()).collect();
        assert_eq!(from, ["hello-1", "hello-2", "hello-1", "hello-2"]);
        assert_eq!(gateway.forwarded(), 4);
    }
    #[tokio::test]
    async fn the_trailing_slash_redirect_never_points_at_another_host() {
        let gateway = router(Gateway::new(registry()));
        for (path, refusal) in [
            ("/%2Fevil.example", "scheme-relative URL"),
            ("/%5Cevil.example", "backslash"),
            ("/%252Fevil.example", "scheme-relative URL"),
            ("/evil%0D%0ALocation:%20x", "control character"),
            ("/%2E%2E", "`..` in the path"),
        ] {
            let (status, body) = call(gateway.clone(), path).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
            assert!(body.starts_with("refused redirect: ") && body.contains(refusal), "{body}");
        }
        assert_eq!(
            call(gateway, "/hello%20world").await,
            (StatusCode::PERMANENT_REDIRECT, "-> /hello%20world/".into())
        );
    }

    #[tokio::test]
    async fn the_node_gets_the_path_as_the_client_sent_it() {
        let registry = registry();
        let echo = Router::new().fallback(|uri: Uri| async move { uri.to_string() });
        let echo = HttpServer::start(echo).await.unwrap();
        registry.register(&web_node("echo", "echo-1", echo.addr()), TTL).await.unwrap();
        let gateway = router(Gateway::new(registry));
        for (path, seen) in [
            ("/echo/a%20b", "/a%20b"),
            ("/echo/a%3Fb?x=%26", "/a%3Fb?x=%26"),
            ("/echo/a%23b/c", "/a%23b/c"),
            ("/echo/?q=/x", "/?q=/x"),
        ] {
            assert_eq!(call(gateway.clone(), path).await, (StatusCode::OK, seen.into()), "{path}");
        }
    }
}
