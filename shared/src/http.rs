//! HTTP plumbing for the edge examples (web, redirect, sidecar): an axum server on a free
//! loopback port, and a small forwarding client for gateways that pass a request on to a
//! node found in the registry.
//!
//! What each gateway *decides* (which node, which paths, which redirects) lives in its
//! example; this module only moves bytes.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use http::header::{self, HeaderName};
use http::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// An axum server on `127.0.0.1:<free port>`, running until [`HttpServer::shutdown`].
pub struct HttpServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl HttpServer {
    /// Binds a free loopback port and serves `router` there in the background.
    pub async fn start(router: Router) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("a valid address"), router).await
    }

    /// Serves `router` on `addr` (port 0: the OS picks one).
    pub async fn start_on(addr: SocketAddr, router: Router) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let signal = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).with_graceful_shutdown(signal).await
        });
        Ok(HttpServer { addr, stop, task: Some(task) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets requests in flight finish, then returns.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => task.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for HttpServer {
    /// Dropped without `shutdown`: stop serving anyway, so no server outlives its owner.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An HTTP handler's refusal: a status and the one-line reason sent as the body.
///
/// Handlers return `Result<_, ApiError>` and use `?`, so every error path answers the
/// same way and none can forget its status. The reason is plain text; an API that speaks
/// JSON wraps it in its own type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: http::StatusCode,
    pub reason: String,
}

impl ApiError {
    pub fn new(status: http::StatusCode, reason: impl Into<String>) -> Self {
        ApiError { status, reason: reason.into() }
    }
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(http::StatusCode::BAD_REQUEST, reason)
    }
    pub fn not_found(reason: impl Into<String>) -> Self {
        Self::new(http::StatusCode::NOT_FOUND, reason)
    }
    pub fn bad_gateway(reason: impl Into<String>) -> Self {
        Self::new(http::StatusCode::BAD_GATEWAY, reason)
    }
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::new(http::StatusCode::SERVICE_UNAVAILABLE, reason)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.reason)
    }
}

impl std::error::Error for ApiError {}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        (self.status, self.reason).into_response()
    }
}

/// Why a forwarded request got no answer from the node.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("bad node address {address:?}: {reason}")]
    BadAddress { address: String, reason: String },
    #[error("node at {address} did not answer: {reason}")]
    Unreachable { address: String, reason: String },
}

/// Passes HTTP/1.1 requests on to a node (`host:port`) and hands back its answer.
///
/// One pooled client for every request, so connections to a node are reused.
#[derive(Clone)]
pub struct Forwarder {
    client: Client<HttpConnector, Body>,
}

impl Default for Forwarder {
    fn default() -> Self {
        Self::new()
    }
}

/// Headers about one hop's connection, not the message: a proxy must not pass them on
/// (RFC 9110, section 7.6.1). `host` is dropped too so the client names the node instead.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

impl Forwarder {
    pub fn new() -> Self {
        Forwarder { client: Client::builder(TokioExecutor::new()).build_http() }
    }

    /// Sends `request` to `address` with its path replaced by `path_and_query`.
    ///
    /// A websocket handshake (`Upgrade: websocket`) is passed on too: when the node agrees
    /// (101), the two upgraded connections are spliced and bytes flow both ways until
    /// either side closes. Without this a gateway silently breaks every websocket page.
    pub async fn forward(
        &self,
        address: &str,
        path_and_query: &str,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, ForwardError> {
        let upgrade = request.headers().get(header::UPGRADE).cloned();
        let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        let uri: Uri = format!("http://{address}{path_and_query}").parse().map_err(
            |e: http::uri::InvalidUri| ForwardError::BadAddress {
                address: address.to_owned(),
                reason: e.to_string(),
            },
        )?;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        for name in HOP_BY_HOP.iter().chain([&header::HOST]) {
            headers.remove(name);
        }
        if let Some(protocol) = upgrade {
            // The one hop-by-hop exchange a proxy must repeat: asking for the upgrade.
            headers.insert(header::CONNECTION, http::HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol);
        }
        let mut response = self.client.request(request).await.map_err(|e| {
            ForwardError::Unreachable { address: address.to_owned(), reason: e.to_string() }
        })?;
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_side) = client_side
        {
            let node_side = hyper::upgrade::on(&mut response);
            tokio::spawn(splice(client_side, node_side));
            // 101 keeps its Connection and Upgrade headers: they are the answer.
            return Ok(response.map(Body::new));
        }
        let (mut parts, body) = response.into_parts();
        for name in &HOP_BY_HOP {
            parts.headers.remove(name);
        }
        Ok(Response::from_parts(parts, Body::new(body)))
    }

    /// A plain request to a URL, for examples and tests that play the client.
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Body>, ForwardError> {
        let address = request.uri().authority().map(|a| a.to_string()).unwrap_or_default();
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| ForwardError::Unreachable { address, reason: e.to_string() })?;
        Ok(response.map(Body::new))
    }
}

/// Copies bytes both ways between two upgraded connections until one side closes.
async fn splice(client: hyper::upgrade::OnUpgrade, node: hyper::upgrade::OnUpgrade) {
    let (client, node) = match tokio::try_join!(client, node) {
        Ok(both) => both,
        Err(e) => return tracing::warn!("websocket upgrade through the gateway failed: {e}"),
    };
    let (mut client, mut node) = (TokioIo::new(client), TokioIo::new(node));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut node).await {
        tracing::debug!("spliced connection ended: {e}");
    }
}

/// Reads a whole body as text (lossy), capped at `limit` bytes.
pub async fn body_text(body: Body, limit: usize) -> String {
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<unreadable body: {e}>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    #[tokio::test]
    async fn forwards_path_query_and_body_and_drops_hop_by_hop_headers() {
        let node = Router::new().route(
            "/echo",
            get(|request: Request<Body>| async move {
                let seen_connection = request.headers().contains_key(header::CONNECTION);
                let host = request.headers()[header::HOST].to_str().unwrap().to_owned();
                format!("{} host-is-node={} connection={seen_connection}", request.uri(), {
                    host.starts_with("127.0.0.1:")
                })
            }),
        );
        let server = HttpServer::start(node).await.unwrap();
        let request = Request::get("http://gateway.local/svc/echo?x=1")
            .header(header::HOST, "gateway.local")
            .header(header::CONNECTION, "keep-alive")
            .body(Body::empty())
            .unwrap();
        let address = server.addr().to_string();
        let response = Forwarder::new().forward(&address, "/echo?x=1", request).await.unwrap();
        assert_eq!(response.status(), 200);
        let text = body_text(response.into_body(), 1024).await;
        assert_eq!(text, "/echo?x=1 host-is-node=true connection=false");
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_node_is_an_error_naming_it() {
        // Bind then drop: a loopback port with nothing listening.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let request = Request::get("/").body(Body::empty()).unwrap();
        let error = Forwarder::new().forward(&port.to_string(), "/", request).await.unwrap_err();
        assert!(error.to_string().contains(&port.to_string()), "{error}");
    }
}
