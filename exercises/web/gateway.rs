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
use axum::http::{Request, StatusCode, Uri};
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
        let (forwarder, sockets) = (Forwarder::default(), SpliceTimeouts::default());
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
            .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("registry: {e}")))?;
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
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no web service named {service:?} is registered"),
            )
        })?;
        let node = &nodes[self.next.fetch_add(1, Ordering::Relaxed) % nodes.len()];
        let path_and_query = request.uri().path_and_query().map_or("/", |p| p.as_str());
        // EXERCISE: cut `/<service>` off the path, and leave the rest exactly as the client sent it
        // Check it with `scripts/exercise.sh web`; `scripts/exercise.sh web hint` helps.
        let path = path_and_query; // the service's name left on the path
        // END OF EXERCISE
        let path = path.to_owned();
        tracing::debug!(%service, node = %node.id, %path, "forwarding");
        if request.headers().contains_key(http::header::UPGRADE) {
            return self.forward_upgrade(&node.address, &path, request).await;
        }
        self.forwarder
            .forward(&node.address, &path, request)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("{service}: {e:#}")))
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
        parts.uri = format!("http://{address}{path}").parse().map_err(|e| {
            ApiError::new(StatusCode::BAD_GATEWAY, format!("bad node address {address:?}: {e}"))
        })?;
        // The client names the node itself; credentials for this hop stay here.
        parts.headers.remove(http::header::HOST);
        parts.headers.remove(http::header::PROXY_AUTHORIZATION);
        let mut response = self
            .forwarder
            .send(Request::from_parts(parts, body))
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
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
    gateway.redirects.check(&target).map_err(|refusal| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("refused redirect: {refusal}"))
    })?;
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
mod tests;
