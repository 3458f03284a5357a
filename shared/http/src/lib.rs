//! HTTP plumbing: an axum server on a free loopback port, and a forwarding client for the
//! gateways. What a gateway *decides* (which node, paths, redirects) lives in its example.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use http::header::{self, HeaderName};
use http::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_util::sync::CancellationToken;

use microkit::health::Health;
use microkit::server::{Incoming, Limits, RunningServer};

/// Serves `router` on a free loopback port, with `GET /health/live` and `GET /health/ready`
/// added and reporting a [`Health`] of its own, until shut down (or dropped).
///
/// hyper serves each connection, not `axum::serve`, which has no header timeout and no drain
/// deadline (see [`Limits`]). It speaks HTTP/1.1 alone, websocket upgrades included: the
/// browsers, scrapers and clients here speak it over plain HTTP, and over HTTP/2 a stranger
/// could open streams whose replies it never reads (the trace note tells what that cost).
pub async fn start(router: Router) -> std::io::Result<RunningServer> {
    start_on(LOOPBACK, router, Health::default()).await
}

/// [`start`] on `addr` (a role's fixed port; port 0: a free one), its readiness route
/// reporting `health`, which a graceful stop through `Registered` (the registry lesson)
/// turns not ready first.
pub async fn start_on(
    addr: SocketAddr,
    router: Router,
    health: Health,
) -> std::io::Result<RunningServer> {
    start_within(addr, router, health, Limits::default()).await
}

const LOOPBACK: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// Serves `router` and the health routes on `addr` within `limits` (only this crate's tests
/// shorten them).
async fn start_within(
    addr: SocketAddr,
    router: Router,
    health: Health,
    limits: Limits,
) -> std::io::Result<RunningServer> {
    let router = router.merge(health_routes(&health));
    let server = RunningServer::start_on(addr, limits, move |incoming, stop| {
        serve(incoming, router, limits, stop)
    })
    .await?;
    Ok(server.with_health(health))
}

/// The accept loop: one task per connection, each told to finish its request in flight and
/// take no more when `stop` fires; the server's drain deadline cuts what is open then.
/// Connections come through [`Incoming`], which pauses after a failed accept and closes a
/// connection that sends no complete request head within the header timeout (hyper's own
/// timer starts later, so it never saw a client that sent nothing).
async fn serve(
    mut incoming: Incoming,
    router: Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) -> Result<(), std::convert::Infallible> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let draining = CancellationToken::new();
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        let connection = tokio::select! {
            accepted = futures::StreamExt::next(&mut incoming) => match accepted {
                Some(Ok(connection)) => connection,
                // `Incoming` pauses and logs failed accepts itself; it yields no error.
                Some(Err(_)) => continue,
                None => break,
            },
            () = &mut stop => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection = builder.serve_connection(TokioIo::new(connection), service);
        let draining = draining.clone();
        connections.spawn(async move {
            let connection = connection.with_upgrades();
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = draining.cancelled() => {
                    // Finish the request in flight, take no more on this connection.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!("connection ended: {error}");
            }
        });
        // Reap finished connections so the set holds only live ones.
        while connections.try_join_next().is_some() {}
    }
    drop(incoming);
    draining.cancel();
    while connections.join_next().await.is_some() {}
    Ok(())
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

/// Passes HTTP/1.1 requests on to a node (`host:port`) and hands back its answer.
///
/// One pooled client for every request, so connections to a node are reused.
#[derive(Clone)]
pub struct Forwarder {
    client: Client<HttpConnector, Body>,
}

/// Headers about one hop's connection, not the message: a proxy must not pass them on
/// (RFC 9110, section 7.6.1, which names `Proxy-Connection`, `Keep-Alive`, `TE`,
/// `Transfer-Encoding` and `Upgrade`; `Trailer` and `Proxy-Authorization` are for this hop
/// too). Every field that `Connection` names goes with them: [`strip_hop_by_hop`].
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    // Not hop-by-hop, but the client must name the node instead of the gateway.
    "host",
];

/// Removes from `headers` the hop-by-hop fields and every field their `Connection` names
/// (`Connection: close, x-secret` takes `X-Secret` with it), as a proxy must before it
/// forwards a message either way.
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

impl Default for Forwarder {
    fn default() -> Self {
        Forwarder { client: Client::builder(TokioExecutor::new()).build_http() }
    }
}

impl Forwarder {
    /// Sends `request` to `address` with its path replaced by `path_and_query`.
    ///
    /// Plain requests only: `Upgrade` is a hop-by-hop header and is dropped, so a websocket
    /// handshake reaches the node as a plain GET. A gateway that carries websockets splices
    /// them itself, within timeouts of its own (the web example's gateway shows how).
    pub async fn forward(
        &self,
        address: &str,
        path_and_query: &str,
        mut request: Request<Body>,
    ) -> anyhow::Result<Response<Body>> {
        let uri: Uri = format!("http://{address}{path_and_query}")
            .parse()
            .with_context(|| format!("bad node address {address:?}"))?;
        *request.uri_mut() = uri;
        strip_hop_by_hop(request.headers_mut());
        let response = self
            .client
            .request(request)
            .await
            .with_context(|| format!("node at {address} did not answer"))?;
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Body::new(body)))
    }

    /// A plain request to a URL, for examples and tests that play the client. An error keeps
    /// its cause (a refused connection, a reset), so `{:#}` tells the whole story.
    pub async fn send(&self, request: Request<Body>) -> anyhow::Result<Response<Body>> {
        let address = request.uri().authority().map(|a| a.to_string()).unwrap_or_default();
        let response = self
            .client
            .request(request)
            .await
            .with_context(|| format!("{address} did not answer"))?;
        Ok(response.map(Body::new))
    }
}

/// Reads a whole body as text (lossy), capped at `limit` bytes.
pub async fn body_text(body: Body, limit: usize) -> String {
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<unreadable body: {e}>"),
    }
}

/// `GET /health/live` (200 while the process answers at all) and `GET /health/ready`
/// (200 while `health` reports serving, 503 otherwise), to merge into an axum router.
fn health_routes<S: Clone + Send + Sync + 'static>(health: &Health) -> Router<S> {
    let ready = health.subscribe();
    Router::new().route("/health/live", axum::routing::get(|| async { "live\n" })).route(
        "/health/ready",
        axum::routing::get(move || {
            let serving = *ready.borrow();
            async move {
                match serving {
                    true => (http::StatusCode::OK, "ready\n"),
                    false => (http::StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
                }
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SHORT: Limits = Limits {
        header_timeout: Duration::from_millis(300),
        drain_deadline: Duration::from_millis(300),
    };

    async fn echo_server(limits: Limits) -> RunningServer {
        let router = Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/upload", post(|body: String| async move { body.len().to_string() }));
        start_within(LOOPBACK, router, Health::default(), limits).await.unwrap()
    }

    /// Reads until the server closes the connection; fails past `limit`.
    async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> Vec<u8> {
        let mut seen = Vec::new();
        tokio::time::timeout(limit, stream.read_to_end(&mut seen))
            .await
            .expect("the server kept the connection open")
            .ok();
        seen
    }

    #[tokio::test]
    async fn a_stopping_service_is_not_ready_while_it_stays_live() {
        use registry::Registered;
        use registry::{MemoryRegistry, Registry};
        let registry: std::sync::Arc<dyn Registry> = std::sync::Arc::new(MemoryRegistry::new());
        let server = start(Router::new()).await.unwrap();
        let url = server.url();
        let node =
            Registered::new(&registry, server, "web", "w1", Duration::from_secs(5)).await.unwrap();
        let status = async |path: &str| {
            let request = Request::get(format!("{url}{path}")).body(Body::empty()).unwrap();
            Forwarder::default().send(request).await.unwrap().status().as_u16()
        };
        assert_eq!((status("/health/live").await, status("/health/ready").await), (200, 200));
        node.not_serving().await;
        assert_eq!((status("/health/live").await, status("/health/ready").await), (200, 503));
        node.deregister_and_drain().await.unwrap();
    }

    #[tokio::test]
    async fn half_sent_headers_are_cut_after_the_header_timeout() {
        let server = echo_server(SHORT).await;
        let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap(); // no blank line
        closed_within(&mut stream, Duration::from_secs(3)).await;
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_or_only_p_is_closed_after_the_header_timeout() {
        let server = echo_server(SHORT).await;
        for sent in [&b""[..], b"P", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"] {
            let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
            stream.write_all(sent).await.unwrap();
            closed_within(&mut stream, Duration::from_secs(3)).await;
        }
    }

    /// No HTTP/2 on an HTTP port: a client with prior knowledge gets no SETTINGS frame, only
    /// an HTTP/1.1 refusal or a closed connection.
    #[tokio::test]
    async fn http2_with_prior_knowledge_is_refused() {
        let server = echo_server(SHORT).await;
        let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap(); // an empty SETTINGS
        let seen = closed_within(&mut stream, Duration::from_secs(3)).await;
        assert!(seen.is_empty() || seen.starts_with(b"HTTP/1.1 4"), "answered {seen:?}");
    }

    #[tokio::test]
    async fn an_idle_kept_alive_connection_is_closed() {
        let server = echo_server(SHORT).await;
        let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let seen = closed_within(&mut stream, Duration::from_secs(3)).await;
        assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"), "answered first");
    }

    #[tokio::test]
    async fn a_stop_cuts_a_half_sent_body_at_the_drain_deadline() {
        let server = echo_server(SHORT).await;
        let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        let head = "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789";
        stream.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await; // the request is in flight
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(3), server.shutdown())
            .await
            .expect("the stop waited for a client that never finished")
            .unwrap();
        assert!(started.elapsed() >= SHORT.drain_deadline, "a request in flight gets its drain");
        closed_within(&mut stream, Duration::from_secs(1)).await;
    }

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
        let server = start(node).await.unwrap();
        let request = Request::get("http://gateway.local/svc/echo?x=1")
            .header(header::HOST, "gateway.local")
            .header(header::CONNECTION, "keep-alive")
            .body(Body::empty())
            .unwrap();
        let address = server.addr().to_string();
        let response = Forwarder::default().forward(&address, "/echo?x=1", request).await.unwrap();
        assert_eq!(response.status(), 200);
        let text = body_text(response.into_body(), 1024).await;
        assert_eq!(text, "/echo?x=1 host-is-node=true connection=false");
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn fields_named_by_connection_and_keep_alive_stop_at_the_gateway_both_ways() {
        let node = Router::new().route(
            "/echo",
            get(|request: Request<Body>| async move {
                let mut names: Vec<&str> =
                    request.headers().keys().map(|name| name.as_str()).collect();
                names.sort();
                let answer = Response::builder()
                    .header(header::CONNECTION, "x-node-internal")
                    .header("x-node-internal", "1")
                    .header("keep-alive", "timeout=5")
                    .header("x-node-public", "1");
                answer.body(Body::from(names.join(","))).unwrap()
            }),
        );
        let server = start(node).await.unwrap();
        let request = Request::get("http://gateway.local/echo")
            .header(header::CONNECTION, "keep-alive, X-Gateway-Secret")
            .header("keep-alive", "timeout=5")
            .header("x-gateway-secret", "s3cret")
            .header("x-public", "1")
            .body(Body::empty())
            .unwrap();
        let address = server.addr().to_string();
        let response = Forwarder::default().forward(&address, "/echo", request).await.unwrap();
        let mut answered: Vec<&str> = response
            .headers()
            .keys()
            .map(|name| name.as_str())
            .filter(|n| n.starts_with("x-") || *n == "keep-alive" || *n == "connection")
            .collect();
        answered.sort();
        assert_eq!(answered, ["x-node-public"], "the answer's hop-by-hop fields reach the client");
        let seen = body_text(response.into_body(), 1024).await;
        assert_eq!(seen, "host,x-public", "the node saw the gateway's hop-by-hop fields");
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_node_is_an_error_naming_it() {
        // Bind then drop: a loopback port with nothing listening.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let request = Request::get("/").body(Body::empty()).unwrap();
        let error =
            Forwarder::default().forward(&port.to_string(), "/", request).await.unwrap_err();
        assert!(error.to_string().contains(&port.to_string()), "{error}");
        // The cause is kept, so the whole story can be told.
        let chain = format!("{error:#}");
        assert!(chain.len() > error.to_string().len() && chain.contains("onnect"), "{chain}");
    }
}
