//! The proxy: any gRPC call in, the same call out to a node of the service its path names.
//!
//! It is compiled against no proto. A gRPC request is an HTTP/2 POST to
//! `/<package>.<Service>/<Method>`; the proxy reads that path, looks the service up in the
//! registry, takes the next node in turn and hands hyper the request to send there, headers
//! and body as they came. The reply goes back the same way: its frames stream through unread,
//! its trailers (where gRPC's status lives) after them.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use health::LiveNodes;
use http::{Request, Response, Uri, header};
use http_body::{Body as HttpBody, Frame};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use microkit::PATIENCE;
use microkit::health::Health;
use registry::{Node, Registry};
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::body::Body;
use tonic::service::Routes;
use tower::ServiceExt;

// The accept loop, beside this file.
mod server;
pub use server::ProxyServer;

/// What a path names: the service (the registry's name for it) and the method.
#[derive(Debug, PartialEq, Eq)]
pub struct Route<'a> {
    pub service: &'a str,
    pub method: &'a str,
}

/// `/<package>.<Service>/<Method>` and nothing else: two segments of letters, digits, `_`
/// and (in the service) dots. Anything else is no gRPC call: `Unimplemented`, as a gRPC
/// server answers a method it does not have.
pub fn route(path: &str) -> Result<Route<'_>, Status> {
    let malformed = || Status::unimplemented(format!("malformed gRPC path {path:?}"));
    let (service, method) =
        path.strip_prefix('/').and_then(|p| p.split_once('/')).ok_or_else(malformed)?;
    let word = |s: &str, dots: bool| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || (dots && b == b'.'))
    };
    if !word(service, true) || !word(method, false) {
        return Err(malformed());
    }
    Ok(Route { service, method })
}

/// The proxy itself: a registry, a rotation per service, one HTTP/2 client for every node.
pub struct Proxy {
    registry: Arc<dyn Registry>,
    /// Each service's rotation, made on its first call (the cell lets one caller make it
    /// while the others of that service wait, and callers of other services do not).
    services: Mutex<HashMap<String, Arc<OnceCell<Arc<Rotation>>>>>,
    /// HTTP/2 only, one pooled connection per node: a gRPC node speaks nothing else.
    client: Client<HttpConnector, Body>,
    streams: Arc<Semaphore>,
    limits: Limits,
    /// This proxy's name in the `via` header of what it forwards: a call that comes back
    /// with it has gone round a loop (the registry listing the proxy as a node).
    pseudonym: String,
    /// The proxy's own health ("" is the proxy itself), served with reflection at its address.
    pub health: Health,
    own: Routes,
    pub forwarded: AtomicU64,
    pub refused: AtomicU64,
}

impl Proxy {
    pub fn new(registry: Arc<dyn Registry>, limits: Limits) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new()).http2_only(true).build(connector);
        // A random name per proxy process, so two proxies in a chain never take each other's
        // mark for their own.
        let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let health = Health::new(&[]);
        Proxy {
            registry,
            services: Mutex::default(),
            client,
            streams: Arc::new(Semaphore::new(limits.max_streams as usize)),
            limits,
            pseudonym: format!("micro-proxy-{random:016x}"),
            own: health.mount(Routes::default()),
            health,
            forwarded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Every call goes through here: a reply from the node, or a refusal with gRPC's status.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<tonic::codegen::StdError>,
    {
        if let Ok(Route { service, .. }) = route(request.uri().path())
            && OWN_SERVICES.contains(&service)
        {
            let Ok(response) = self.own.clone().oneshot(request).await;
            return response;
        }
        match self.forward(request).await {
            Ok(response) => {
                self.forwarded.fetch_add(1, Ordering::Relaxed);
                response
            }
            Err(status) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(code = ?status.code(), "refused: {}", status.message());
                status.into_http()
            }
        }
    }

    async fn forward<B>(&self, request: Request<B>) -> Result<Response<Body>, Status>
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<tonic::codegen::StdError>,
    {
        let path = request.uri().path().to_owned();
        let Route { service, .. } = route(&path)?;
        let (mut parts, body) = request.into_parts();
        let passed = parts.headers.get_all(header::VIA).iter();
        if passed.filter_map(|v| v.to_str().ok()).any(|v| v.contains(&self.pseudonym)) {
            return Err(Status::unavailable(format!(
                "a forwarding loop: this call to {service} has already passed through this proxy \
                 (does the registry list the proxy as a node?)"
            )));
        }
        // EXERCISE: send the call to a node of the service its path names
        // Check it with `scripts/exercise.sh proxy`; `scripts/exercise.sh proxy hint` helps.
        let rotation = self.rotation("greeter.v1.Greeter").await?; // one service for all
        // END OF EXERCISE
        // The permits travel with the reply's body: a stream holds its slots until it ends.
        let share = rotation.slots.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{service} already holds its share of the proxy's streams ({} at once)",
                self.limits.per_service()
            ))
        })?;
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "the proxy carries at most {} streams at once",
                self.limits.max_streams
            ))
        })?;
        let node = rotation.pick()?;

        parts.uri = Uri::try_from(format!("http://{}{path}", node.address))
            .map_err(|e| Status::internal(format!("bad address {}: {e}", node.address)))?;
        let via = format!("2 {}", self.pseudonym).parse().expect("letters, digits and dashes");
        parts.headers.append(header::VIA, via);
        // Everything else goes as it came: metadata, `te: trailers`, `grpc-timeout`.
        let timeout = parts.headers.get("grpc-timeout").and_then(|v| v.to_str().ok());
        let (deadline, bound) = match timeout.and_then(microkit::timeout::parse) {
            Some(deadline) => (deadline, "the call's deadline"),
            None => (self.limits.answer_within, "the proxy's bound for a call with no deadline"),
        };
        let sent = self.client.request(Request::from_parts(parts, Body::new(body)));
        // The node enforces a caller's deadline too; this bound only keeps the proxy from
        // waiting on a node that never answers, and holding a slot while it waits.
        let response = tokio::time::timeout(deadline, sent)
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no answer from {} within {bound} ({deadline:?})",
                    node.id
                ))
            })?
            .map_err(|e| {
                Status::unavailable(format!("node {} of {service} unreachable: {e}", node.id))
            })?;
        Ok(response.map(|body| {
            Body::new(Passing { body, node: node.id, permits: Some((permit, share)), ended: false })
        }))
    }

    /// Waits until the proxy's view of `service` shows exactly the nodes `ids`.
    pub async fn wait_for(
        &self,
        service: &str,
        ids: &[&str],
        limit: Duration,
    ) -> anyhow::Result<()> {
        self.rotation(service).await?.nodes.wait_for_ids(ids, limit).await
    }

    /// The rotation of `service`: watched from its first call on, once the registry's nodes
    /// are in view. An unknown service is refused, not watched, so a caller cannot make the
    /// proxy watch names without end.
    async fn rotation(&self, service: &str) -> Result<Arc<Rotation>, Status> {
        let cell = {
            let mut services = self.services.lock().unwrap();
            if !services.contains_key(service) && services.len() >= self.limits.max_services {
                return Err(Status::resource_exhausted(format!(
                    "the proxy routes at most {} services",
                    self.limits.max_services
                )));
            }
            services.entry(service.to_owned()).or_default().clone()
        };
        match cell.get_or_try_init(|| self.watch(service)).await {
            Ok(rotation) => Ok(rotation.clone()),
            Err(status) => {
                self.services.lock().unwrap().remove(service);
                Err(status)
            }
        }
    }

    async fn watch(&self, service: &str) -> Result<Arc<Rotation>, Status> {
        let failed = |e: registry::RegistryError| Status::unavailable(format!("registry: {e}"));
        // Listing first: a watch costs the registry a consumer (on NATS, a JetStream consumer
        // that outlives the watch by half a minute), so a name with no node gets none.
        let listed: Vec<String> =
            self.registry.nodes(service).await.map_err(failed)?.into_iter().map(|n| n.id).collect();
        if listed.is_empty() {
            return Err(no_node(service));
        }
        let nodes = LiveNodes::watch(&self.registry, service).await.map_err(failed)?;
        // The watch reports the nodes a moment after it starts; a node that left meanwhile
        // only makes this wait end at its bound, with the nodes still there.
        let listed: Vec<&str> = listed.iter().map(String::as_str).collect();
        if let Err(e) = nodes.wait_for_ids(&listed, PATIENCE).await {
            tracing::warn!("{e}");
        }
        let slots = Arc::new(Semaphore::new(self.limits.per_service() as usize));
        Ok(Arc::new(Rotation { nodes, next: AtomicUsize::new(0), slots }))
    }
}

/// One service's nodes and its turn counter (the round-robin rotation), and its share of the
/// proxy's stream slots.
struct Rotation {
    nodes: LiveNodes,
    next: AtomicUsize,
    slots: Arc<Semaphore>,
}

impl Rotation {
    fn pick(&self) -> Result<Node, Status> {
        let nodes = self.nodes.current();
        if nodes.is_empty() {
            return Err(no_node(self.nodes.service()));
        }
        Ok(nodes[self.next.fetch_add(1, Ordering::Relaxed) % nodes.len()].clone())
    }
}

fn no_node(service: &str) -> Status {
    Status::unavailable(format!("no node of service \"{service}\" in the registry"))
}

/// The bounds that keep one caller, or one service, from taking the proxy for itself.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Streams (calls) in flight through the proxy at once, over every connection. One
    /// service may hold at most half of them, so a service whose nodes hang cannot starve
    /// the others.
    pub max_streams: u32,
    /// Streams one client connection may open at once (HTTP/2's own setting).
    pub max_streams_per_connection: u32,
    /// Services the proxy keeps watching in the registry.
    pub max_services: usize,
    /// How long the proxy waits for a node's answer (its response headers) when the call
    /// sets no deadline of its own; with a `grpc-timeout`, that bounds the wait instead.
    pub answer_within: Duration,
    /// A new connection's first request must arrive within this (preface, settings and
    /// headers alike); it is also the HTTP/2 keepalive: a ping every this long, and a peer
    /// that does not answer one within it is cut.
    pub header_timeout: Duration,
    /// How long a stop lets the calls in flight finish before it cuts them.
    pub drain_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_streams: 256,
            max_streams_per_connection: 64,
            max_services: 64,
            answer_within: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            drain_deadline: Duration::from_secs(5),
        }
    }
}

impl Limits {
    /// The streams one service may hold at once: half of all, at least one.
    pub fn per_service(&self) -> u32 {
        (self.max_streams / 2).max(1)
    }
}

/// Services the proxy answers itself, at its own address: its health, and reflection.
const OWN_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

pin_project_lite::pin_project! {
    /// A node's reply body on its way back, frame by frame. If the node goes away mid-stream
    /// the caller gets trailers saying so (`Unavailable` naming the node), never a hang.
    struct Passing {
        #[pin]
        body: hyper::body::Incoming,
        node: String,
        permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
        ended: bool,
    }
}

impl HttpBody for Passing {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        let frame = ready!(this.body.poll_frame(cx));
        match frame {
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            None => {
                *this.ended = true;
                this.permits.take(); // the stream is over: its slots are free
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                *this.ended = true;
                this.permits.take();
                tracing::info!(node = %this.node, "the node went away mid-stream: {e}");
                let status =
                    Status::unavailable(format!("node {} went away mid-stream", this.node));
                let mut trailers = status.into_http::<()>().into_parts().0.headers;
                trailers.remove(header::CONTENT_TYPE);
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
        }
    }

    /// A node that refuses a call answers "trailers-only": one HEADERS frame holding the
    /// status, with END_STREAM. Saying so here lets hyper send it on the same way; a body
    /// that claims more would go out as headers, an empty DATA frame and no trailers, which
    /// grpcio reads as UNKNOWN "Stream removed".
    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::{Route, route};

    #[test]
    fn a_grpc_path_names_a_service_and_a_method() {
        let parsed = route("/greeter.v1.Greeter/SayHello").unwrap();
        assert_eq!(parsed, Route { service: "greeter.v1.Greeter", method: "SayHello" });
        for bad in ["", "/", "/x", "x/y", "/x/", "//y", "/x/y/z", "/x y/z", "/x/y.z", "/x-y/z"] {
            let status = route(bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unimplemented, "{bad:?}");
        }
        assert!(route(&format!("/{}/M", "s".repeat(129))).is_err(), "a bound on the name");
    }
}
