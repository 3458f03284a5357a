//! The gateway: what `micro web` was. It lists the web services it finds in the registry
//! and passes `/<service>/...` on to one of that service's nodes.
//!
//! It holds no list of its own: a service appears here by registering, and disappears by
//! deregistering (or by missing its heartbeats). That is the whole of "joining discovery".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Request, Uri};
use axum::response::{Redirect, Response};
use axum::routing::{any, get};
use hyper_util::rt::TokioIo;
use microkit_http::{ApiError, Forwarder};
use registry::{Node, Registry};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::dashboard::{Feed, MAX_VIEWERS};
// The redirect lesson's allow-list: every redirect here follows its rules.
use redirect::AllowList;

/// Web services register under this one registry name, each node labelled with its own
/// service name, so a gateway can find them all with one lookup (go-micro put them under
/// the `go.micro.web.` prefix for the same reason).
pub const WEB_NAMESPACE: &str = "web";

/// The metadata key that holds a web node's service name.
pub const NAME_KEY: &str = "name";

/// How long a websocket through the gateway may wait for the client's first byte. The
/// gateway does not know the service's protocol, so it is more patient than the service
/// behind it (5 s), whose own refusal then reaches the client first; past 10 s a silent
/// client only holds two connections of the gateway's (its own and the one to the node).
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a websocket through the gateway may go with no byte either way. Longer than the
/// service's own 30 s for the same reason; a page that wants a quiet socket open for longer
/// sends pings, which are traffic. The gateway cannot leave this bound to the node: a node
/// may have none, and a client that never closes its side would keep the gateway's half.
pub const SOCKET_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The bounds one spliced websocket is kept within; [`Default`] is the two constants above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpliceTimeouts {
    pub first_byte: Duration,
    pub idle: Duration,
}

impl Default for SpliceTimeouts {
    fn default() -> Self {
        SpliceTimeouts { first_byte: FIRST_BYTE_TIMEOUT, idle: SOCKET_IDLE_TIMEOUT }
    }
}

#[derive(Clone)]
pub struct Gateway {
    pub registry: Arc<dyn Registry>,
    pub forwarder: Forwarder,
    /// Spreads requests over a service's nodes, one after another; so it also counts them.
    pub next: Arc<AtomicUsize>,
    /// The gateway's own redirect (`/<service>` to `/<service>/`) copies the request's
    /// path into `Location`, so it passes the redirect example's checks (paths only).
    pub redirects: Arc<AllowList>,
    /// The bounds on a websocket spliced through to a node.
    pub sockets: SpliceTimeouts,
    /// The front page's live picture, made once for all its viewers.
    pub feed: Feed,
}

impl Gateway {
    pub fn new(registry: Arc<dyn Registry>) -> Self {
        let redirects = Arc::new(AllowList::new(&[]));
        let (forwarder, sockets) = (Forwarder::new(), SpliceTimeouts::default());
        let feed = Feed::new(MAX_VIEWERS);
        Gateway { registry, forwarder, next: Arc::default(), redirects, sockets, feed }
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
        if request.headers().contains_key(http::header::UPGRADE) {
            return self.forward_upgrade(&node.address, &path, request).await;
        }
        self.forwarder
            .forward(&node.address, &path, request)
            .await
            .map_err(|e| ApiError::bad_gateway(format!("{service}: {}", microkit::error_chain(&e))))
    }

    /// A websocket handshake goes to the node as it came (its `Connection: upgrade` and
    /// `Upgrade` are the one hop-by-hop exchange a proxy must repeat); when the node agrees
    /// (101), the two upgraded connections are spliced within [`SpliceTimeouts`].
    async fn forward_upgrade(
        &self,
        address: &str,
        path: &str,
        mut request: Request<Body>,
    ) -> Result<Response, ApiError> {
        let client_side = hyper::upgrade::on(&mut request);
        let (mut parts, body) = request.into_parts();
        parts.uri = format!("http://{address}{path}")
            .parse()
            .map_err(|e| ApiError::bad_gateway(format!("bad node address {address:?}: {e}")))?;
        // The client names the node itself; credentials for this hop stay here.
        parts.headers.remove(http::header::HOST);
        parts.headers.remove(http::header::PROXY_AUTHORIZATION);
        let mut response = self
            .forwarder
            .send(Request::from_parts(parts, body))
            .await
            .map_err(|e| ApiError::bad_gateway(e.to_string()))?;
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            let node_side = hyper::upgrade::on(&mut response);
            let timeouts = self.sockets;
            tokio::spawn(async move {
                match tokio::try_join!(client_side, node_side) {
                    Ok((client, node)) => {
                        let (client, node) = (TokioIo::new(client), TokioIo::new(node));
                        let ended = splice(client, node, timeouts).await;
                        tracing::debug!("websocket through the gateway ended: {ended:?}");
                    }
                    Err(e) => tracing::warn!("websocket upgrade through the gateway failed: {e}"),
                }
            });
        }
        Ok(response)
    }

    /// Requests passed on to a node, over the gateway's life.
    pub fn forwarded(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }
}

/// How a spliced connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    ClientClosed,
    NodeClosed,
    /// The client said nothing within the first-byte timeout.
    NoFirstByte,
    /// No byte moved either way (or one side stopped taking them) for the idle timeout.
    Idle,
}

/// Copies bytes both ways until either side closes or a bound runs out, then drops both:
/// a websocket has no use for a half-closed connection, and keeping the client's half
/// open after the node has gone is how a client that never closes would hold the gateway.
pub async fn splice(
    client: impl AsyncRead + AsyncWrite + Unpin,
    node: impl AsyncRead + AsyncWrite + Unpin,
    timeouts: SpliceTimeouts,
) -> Ended {
    let (mut client_in, mut client_out) = tokio::io::split(client);
    let (mut node_in, mut node_out) = tokio::io::split(node);
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let mut deadline = tokio::time::Instant::now() + timeouts.first_byte;
    let mut heard_client = false;
    loop {
        let moved = tokio::select! {
            read = client_in.read(&mut up) => match read {
                Ok(0) | Err(_) => return Ended::ClientClosed,
                Ok(n) => {
                    heard_client = true;
                    copy(&mut node_out, &up[..n], timeouts.idle, Ended::NodeClosed).await
                }
            },
            read = node_in.read(&mut down) => match read {
                Ok(0) | Err(_) => return Ended::NodeClosed,
                Ok(n) => copy(&mut client_out, &down[..n], timeouts.idle, Ended::ClientClosed).await,
            },
            () = tokio::time::sleep_until(deadline) => {
                return if heard_client { Ended::Idle } else { Ended::NoFirstByte };
            }
        };
        if let Some(ended) = moved {
            return ended;
        }
        // Bytes from the node alone do not stand in for the client's first word.
        if heard_client {
            deadline = tokio::time::Instant::now() + timeouts.idle;
        }
    }
}

/// Writes `bytes` to `to`; how the splice ends if that fails: `closed` when the write
/// fails, `Idle` when `to` takes nothing for `idle` (a peer that stopped reading).
async fn copy(
    to: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
    idle: Duration,
    closed: Ended,
) -> Option<Ended> {
    let write = async {
        to.write_all(bytes).await?;
        to.flush().await
    };
    match tokio::time::timeout(idle, write).await {
        Ok(Ok(())) => None,
        Ok(Err(_)) => Some(closed),
        Err(_) => Some(Ended::Idle),
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
    use microkit_http::HttpServer;
    use registry::MemoryRegistry;

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

    const SHORT: SpliceTimeouts =
        SpliceTimeouts { first_byte: Duration::from_millis(200), idle: Duration::from_millis(300) };

    #[tokio::test]
    async fn a_spliced_client_that_says_nothing_is_cut_after_the_first_byte_timeout() {
        let (client, _client_far) = tokio::io::duplex(64);
        let (node, mut node_far) = tokio::io::duplex(64);
        let started = std::time::Instant::now();
        // The node speaking does not count: the client's first byte is what is awaited.
        node_far.write_all(b"hello").await.unwrap();
        assert_eq!(splice(client, node, SHORT).await, Ended::NoFirstByte);
        assert!(started.elapsed() >= SHORT.first_byte);
        assert!(started.elapsed() < SHORT.idle, "the first-byte bound, not the idle one");
    }

    #[tokio::test]
    async fn a_spliced_connection_carries_bytes_both_ways_then_is_cut_when_idle() {
        let (client, mut client_far) = tokio::io::duplex(64);
        let (node, mut node_far) = tokio::io::duplex(64);
        let spliced = tokio::spawn(splice(client, node, SHORT));
        let mut buffer = [0u8; 4];
        // Traffic for longer than either bound keeps it open.
        for turn in 0..4 {
            if turn > 0 {
                tokio::time::sleep(SHORT.idle / 2).await;
            }
            client_far.write_all(b"ping").await.unwrap();
            node_far.read_exact(&mut buffer).await.unwrap();
            assert_eq!(&buffer, b"ping");
            node_far.write_all(b"pong").await.unwrap();
            client_far.read_exact(&mut buffer).await.unwrap();
            assert_eq!(&buffer, b"pong");
        }
        let quiet = std::time::Instant::now();
        assert_eq!(spliced.await.unwrap(), Ended::Idle);
        // The gateway's clock started when it passed the pong on, a moment before this one.
        let waited = quiet.elapsed() + Duration::from_millis(50);
        assert!(waited >= SHORT.idle, "cut only once nothing moved for the idle timeout");
        // Both far ends see the cut.
        assert_eq!(client_far.read(&mut buffer).await.unwrap(), 0);
        assert_eq!(node_far.read(&mut buffer).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn when_the_node_closes_the_client_is_let_go_too() {
        let (client, mut client_far) = tokio::io::duplex(64);
        let (node, node_far) = tokio::io::duplex(64);
        let spliced = tokio::spawn(splice(client, node, SpliceTimeouts::default()));
        client_far.write_all(b"hi").await.unwrap();
        drop(node_far);
        assert_eq!(spliced.await.unwrap(), Ended::NodeClosed);
        let mut buffer = [0u8; 4];
        assert_eq!(client_far.read(&mut buffer).await.unwrap(), 0, "the client's half is closed");
    }
}
