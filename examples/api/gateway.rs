//! The gateway: `POST /<service>/<method>` with a JSON body, through the edge's checks, to a
//! node of `<service>` found in the registry, converted on the way in and on the way out.
//!
//! The order is the point: who is calling and whether they may (no node is touched for a
//! stranger), whether they call too often, whether the request is within bounds, whether the
//! service's breaker lets calls through, and only then the registry, reflection and the call.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prost_reflect::{DynamicMessage, ServiceDescriptor};
use registry::Registry;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::convert::{self, DynamicCodec};
use crate::edge::{Breaker, Claims, Keys, RateLimit, Transition, Verdict, json_depth};

/// The gateway's bounds and the edge's settings.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The largest JSON body accepted (413 past it).
    pub max_body: usize,
    /// The deepest a JSON body may nest (400 past it): a parser recurses once per level.
    pub max_depth: usize,
    /// How long a call may take, a stream included, from the gateway to its last reply (504).
    pub call_within: Duration,
    /// Each client's bucket: `burst` calls at once, refilled at `per_second`.
    pub burst: u32,
    pub per_second: f64,
    /// A service's breaker opens after this many failures in a row...
    pub breaker_threshold: u32,
    /// ...and lets one trial call through after this pause.
    pub breaker_pause: Duration,
}

impl Default for Settings {
    /// 64 KiB and 32 levels (far more than any message here needs), 5 s per call, 20 calls
    /// at once then 10 a second per client, and a breaker that opens after 5 failures for 5 s.
    fn default() -> Self {
        Settings {
            max_body: 64 * 1024,
            max_depth: 32,
            call_within: Duration::from_secs(5),
            burst: 20,
            per_second: 10.0,
            breaker_threshold: 5,
            breaker_pause: Duration::from_secs(5),
        }
    }
}

/// Called on every breaker transition, with the service's name.
pub type OnTransition = Box<dyn Fn(&str, Transition) + Send + Sync>;

pub struct Gateway {
    registry: Arc<dyn Registry>,
    keys: Keys,
    limit: RateLimit,
    settings: Settings,
    breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    /// Per node (its id and address) and service: a channel, and what reflection told.
    nodes: Mutex<HashMap<(String, String), Known>>,
    turn: AtomicUsize,
    on_transition: OnTransition,
    /// Calls sent on to a node (whatever it answered), and calls the gateway answered itself:
    /// refused at the edge, for no node, or by an open breaker.
    pub called: AtomicU64,
    pub refused: AtomicU64,
}

#[derive(Clone)]
struct Known {
    channel: Channel,
    services: HashMap<String, ServiceDescriptor>,
}

/// The most nodes and breakers remembered; past it the caches start again (a node's schema is
/// learned again on its next call, a breaker starts closed).
const MAX_REMEMBERED: usize = 1024;

/// A call that got no reply: gRPC's status, the HTTP status it maps to (413 for a body
/// over the bound, which gRPC has no code for), and headers to send with it.
struct Refusal {
    status: Status,
    http: StatusCode,
    headers: Vec<(header::HeaderName, HeaderValue)>,
    /// Answered by the gateway itself, no call made (no node, or an open breaker).
    uncalled: bool,
}

impl From<Status> for Refusal {
    fn from(status: Status) -> Self {
        let http = convert::http_status(status.code());
        Refusal { http, status, headers: Vec::new(), uncalled: false }
    }
}

impl Refusal {
    fn with(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl Gateway {
    pub fn new(registry: Arc<dyn Registry>, secret: &[u8], settings: Settings) -> Self {
        Gateway {
            registry,
            keys: Keys::new(secret),
            limit: RateLimit::new(settings.burst, settings.per_second),
            settings,
            breakers: Mutex::default(),
            nodes: Mutex::default(),
            turn: AtomicUsize::new(0),
            on_transition: Box::new(|_, _| {}),
            called: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Tells `on_transition` of every breaker's change of state.
    pub fn on_transition(mut self, on_transition: OnTransition) -> Self {
        self.on_transition = on_transition;
        self
    }

    /// Every path but the health routes: the handler checks method and path itself, so that
    /// nothing in them is decoded before it is checked.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new().fallback(handle).with_state(self)
    }

    /// One call, from the HTTP request to the HTTP answer.
    pub async fn call(&self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path().to_owned();
        let edge = self.edge(&parts.method, &path, &parts.headers, body).await;
        let (service, method, json) = match edge {
            Ok(passed) => passed,
            Err(refused) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                let status = &refused.status;
                tracing::info!(code = ?status.code(), "refused at the edge: {}", status.message());
                return refusal(refused);
            }
        };
        let sse = parts
            .headers
            .get(header::ACCEPT)
            .is_some_and(|a| a.as_bytes().starts_with(b"text/event-stream"));
        match self.forward(service, method, &json, sse).await {
            Ok(response) => {
                self.called.fetch_add(1, Ordering::Relaxed);
                response
            }
            Err(refused) => {
                let count = if refused.uncalled { &self.refused } else { &self.called };
                count.fetch_add(1, Ordering::Relaxed);
                refusal(refused)
            }
        }
    }

    /// The edge's checks, in order; what passes is the route and the body.
    async fn edge<'p>(
        &self,
        method: &Method,
        path: &'p str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(&'p str, &'p str, Bytes), Refusal> {
        let (service, name) = route(path).map_err(Refusal::from)?;
        if method != Method::POST {
            let refused =
                Refusal::from(Status::unimplemented(format!("{method} {path}: POST only")));
            let refused = Refusal { http: StatusCode::METHOD_NOT_ALLOWED, ..refused };
            return Err(refused.with(header::ALLOW, HeaderValue::from_static("POST")));
        }
        let claims = self.authenticate(headers)?;
        if !claims.allows(service, name) {
            let why = format!("{}'s token has no scope for {service}/{name}", claims.sub);
            return Err(Status::permission_denied(why).into());
        }
        if let Err(wait) = self.limit.take(&claims.sub, Instant::now()) {
            let why = format!(
                "{} is over the rate limit of {} a second",
                claims.sub, self.settings.per_second
            );
            return Err(
                Refusal::from(Status::resource_exhausted(why)).with(RETRY_AFTER, retry_after(wait))
            );
        }
        let json = self.read_body(headers, body).await?;
        let depth = json_depth(&json);
        if depth > self.settings.max_depth {
            let why = format!(
                "the JSON nests {depth} deep, past the bound of {}",
                self.settings.max_depth
            );
            return Err(Status::invalid_argument(why).into());
        }
        Ok((service, name, json))
    }

    /// `Authorization: Bearer <token>`, verified: the claims, or 401 saying why not.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Claims, Refusal> {
        let token = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let token = token.and_then(|v| v.strip_prefix("Bearer "));
        let now =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        let verified = match token {
            None => Err(crate::edge::TokenError::Missing),
            Some(token) => self.keys.verify(token, now),
        };
        let challenge = HeaderValue::from_static("Bearer");
        verified.map_err(|e| {
            Refusal::from(Status::unauthenticated(e.to_string()))
                .with(header::WWW_AUTHENTICATE, challenge)
        })
    }

    /// The body, at most `max_body` bytes of it: 413 past that, whether it says its length
    /// up front or not; 408 if it has not all come within the call's time.
    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, Refusal> {
        let max = self.settings.max_body;
        let too_big = || {
            let status =
                Status::resource_exhausted(format!("the body is over the bound of {max} bytes"));
            Refusal { http: StatusCode::PAYLOAD_TOO_LARGE, ..status.into() }
        };
        let declared =
            headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(too_big());
        }
        // A body that trickles in is bound by the call's time too: it holds a connection.
        let within = self.settings.call_within;
        let reading = tokio::time::timeout(within, Limited::new(body, max).collect()).await;
        let Ok(read) = reading else {
            let status = Status::deadline_exceeded(format!(
                "the body did not arrive within {} ms",
                within.as_millis()
            ));
            return Err(Refusal { http: StatusCode::REQUEST_TIMEOUT, ..status.into() });
        };
        match read {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_big()),
            Err(e) => {
                Err(Status::invalid_argument(format!("the body could not be read: {e}")).into())
            }
        }
    }

    /// Past the edge: a node, its breaker, its schema, the call.
    async fn forward(
        &self,
        service: &str,
        name: &str,
        json: &[u8],
        sse: bool,
    ) -> Result<Response<Body>, Refusal> {
        let nodes = self.registry.nodes(service).await;
        let uncalled = |status: Status| Refusal { uncalled: true, ..status.into() };
        let nodes =
            nodes.map_err(|e| uncalled(Status::unavailable(format!("the registry: {e}"))))?;
        if nodes.is_empty() {
            return Err(uncalled(Status::unavailable(format!("no node serves {service}"))));
        }
        let breaker = self.breaker(service);
        let (admitted, changed) = breaker.admit(Instant::now());
        self.tell(service, changed);
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(wait) => {
                let why =
                    format!("the circuit breaker of {service} is open: refused without a call");
                return Err(uncalled(Status::unavailable(why)).with(RETRY_AFTER, retry_after(wait)));
            }
        };
        let node = &nodes[self.turn.fetch_add(1, Ordering::Relaxed) % nodes.len()];
        let outcome = self.convert_and_call(node, service, name, json, sse).await;
        let verdict = match &outcome {
            Ok(_) => Verdict::Healthy,
            Err(r) if r.status.code() == tonic::Code::InvalidArgument => Verdict::Unjudged,
            Err(r) if failure(r.status.code()) => Verdict::Failed,
            Err(_) => Verdict::Healthy,
        };
        self.tell(service, admitted.finish(verdict));
        outcome
    }

    async fn convert_and_call(
        &self,
        node: &registry::Node,
        service: &str,
        name: &str,
        json: &[u8],
        sse: bool,
    ) -> Result<Response<Body>, Refusal> {
        let (channel, described) = self.described(node, service).await?;
        let method = convert::method(&described, name)?;
        let input = convert::from_json(method.input(), json)?;
        let codec = DynamicCodec { output: method.output() };
        let path = http::uri::PathAndQuery::try_from(format!("/{service}/{name}"))
            .map_err(|e| Status::internal(e.to_string()))?;
        let within = self.settings.call_within;
        let deadline = tokio::time::Instant::now() + within;
        let late = || {
            Status::deadline_exceeded(format!(
                "no answer within the bound of {} ms",
                within.as_millis()
            ))
        };
        let mut request = tonic::Request::new(input);
        request.set_timeout(within);
        let mut grpc = tonic::client::Grpc::new(channel);
        let call = async {
            grpc.ready().await.map_err(|e| Status::unavailable(format!("{}: {e}", node.id)))?;
            if method.is_server_streaming() {
                let replies = grpc.server_streaming(request, path, codec).await?.into_inner();
                Ok(streamed(replies, deadline, late(), sse))
            } else {
                let reply = grpc.unary(request, path, codec).await?.into_inner();
                Ok(json_response(StatusCode::OK, convert::to_json(&reply)))
            }
        };
        let answered = tokio::time::timeout_at(deadline, call).await;
        Ok(answered
            .unwrap_or_else(|_| Err(late()))
            .map_err(|status| unreached(status, &node.id))?)
    }

    /// The node's channel and its description of `service`, learned by reflection on the
    /// first call to that node (a new node, as after a deploy, is asked afresh).
    async fn described(
        &self,
        node: &registry::Node,
        service: &str,
    ) -> Result<(Channel, ServiceDescriptor), Status> {
        let key = (node.id.clone(), node.address.clone());
        let known = self.nodes.lock().unwrap().get(&key).cloned();
        let channel = match &known {
            Some(known) => {
                if let Some(described) = known.services.get(service) {
                    return Ok((known.channel.clone(), described.clone()));
                }
                known.channel.clone()
            }
            None => Endpoint::from_shared(format!("http://{}", node.address))
                .map_err(|e| {
                    Status::unavailable(format!("{} has no usable address: {e}", node.id))
                })?
                .connect_timeout(Duration::from_secs(2))
                .connect_lazy(),
        };
        let described = convert::learn(channel.clone(), service).await?;
        let mut nodes = self.nodes.lock().unwrap();
        if nodes.len() >= MAX_REMEMBERED {
            nodes.clear();
        }
        let entry = nodes
            .entry(key)
            .or_insert_with(|| Known { channel: channel.clone(), services: HashMap::new() });
        entry.services.insert(service.to_owned(), described.clone());
        Ok((channel, described))
    }

    /// The breaker of `service`, made closed on its first call.
    pub fn breaker(&self, service: &str) -> Arc<Breaker> {
        let mut breakers = self.breakers.lock().unwrap();
        if breakers.len() >= MAX_REMEMBERED && !breakers.contains_key(service) {
            breakers.clear();
        }
        let (threshold, pause) = (self.settings.breaker_threshold, self.settings.breaker_pause);
        breakers
            .entry(service.to_owned())
            .or_insert_with(|| Arc::new(Breaker::new(threshold, pause)))
            .clone()
    }

    fn tell(&self, service: &str, transition: Option<Transition>) {
        if let Some(transition) = transition {
            tracing::info!(service, "breaker {} -> {}", transition.from, transition.to);
            (self.on_transition)(service, transition);
        }
    }
}

async fn handle(State(gateway): State<Arc<Gateway>>, request: Request<Body>) -> Response<Body> {
    gateway.call(request).await
}

/// `/<package>.<Service>/<Method>`: identifiers (a letter or `_`, then letters, digits, `_`),
/// joined by dots in the service, as protobuf names are; anything else is no route (404).
pub fn route(path: &str) -> Result<(&str, &str), Status> {
    let no_route =
        || Status::not_found(format!("no route {path:?}: POST /<package.Service>/<Method>"));
    let (service, method) =
        path.strip_prefix('/').and_then(|p| p.split_once('/')).ok_or_else(no_route)?;
    let ident = |s: &str| {
        s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    if service.len() > 128 || !service.split('.').all(ident) || method.len() > 128 || !ident(method)
    {
        return Err(no_route());
    }
    Ok((service, method))
}

/// tonic reports a call that failed on the way (a refused connection, a reset) as UNKNOWN
/// "transport error" or CANCELLED, with the cause as its source; a status the node sent has
/// no source. The first kind is UNAVAILABLE, as gRPC's clients elsewhere report it.
fn unreached(status: Status, node: &str) -> Status {
    match std::error::Error::source(&status) {
        Some(cause) => {
            let causes: Vec<String> =
                std::iter::successors(Some(cause), |e| e.source()).map(|e| e.to_string()).collect();
            Status::unavailable(format!("{node} unreachable: {}", causes.join(": ")))
        }
        _ => status,
    }
}

/// The codes that say the service failed, rather than the request: they count toward
/// opening its breaker.
fn failure(code: tonic::Code) -> bool {
    use tonic::Code as G;
    matches!(code, G::Unavailable | G::DeadlineExceeded | G::Internal | G::Unknown | G::DataLoss)
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
fn retry_after(wait: Duration) -> HeaderValue {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(seconds.max(1))
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A refusal: its HTTP status, and `{"code":..,"message":..}` naming gRPC's.
fn refusal(refused: Refusal) -> Response<Body> {
    let mut response = json_response(refused.http, convert::status_json(&refused.status));
    for (name, value) in refused.headers {
        response.headers_mut().insert(name, value);
    }
    response
}

/// A server stream as newline-delimited JSON (one message a line), or as server-sent events
/// (`data: <message>` and a blank line). A failure after the first reply can no longer change
/// the HTTP status, so it comes as the last line: `{"error":{"code":..,"message":..}}`, or an
/// `error` event. The whole stream is bound by the call's deadline.
fn streamed(
    replies: tonic::Streaming<DynamicMessage>,
    deadline: tokio::time::Instant,
    late: Status,
    sse: bool,
) -> Response<Body> {
    let frame = move |json: Vec<u8>, error: bool| -> Result<Bytes, Infallible> {
        Ok(Bytes::from(match (sse, error) {
            (false, false) => [json.as_slice(), b"\n"].concat(),
            (false, true) => [br#"{"error":"#.as_slice(), &json, b"}\n"].concat(),
            (true, false) => [b"data: ".as_slice(), &json, b"\n\n"].concat(),
            (true, true) => [b"event: error\ndata: ".as_slice(), &json, b"\n\n"].concat(),
        }))
    };
    let lines = futures::stream::unfold(Some((replies, late)), move |state| async move {
        let (mut replies, late) = state?;
        match tokio::time::timeout_at(deadline, replies.message()).await {
            Ok(Ok(Some(reply))) => {
                Some((frame(convert::to_json(&reply), false), Some((replies, late))))
            }
            Ok(Ok(None)) => None,
            Ok(Err(status)) => Some((frame(convert::status_json(&status), true), None)),
            Err(_) => Some((frame(convert::status_json(&late), true), None)),
        }
    });
    let kind = if sse { "text/event-stream" } else { "application/x-ndjson" };
    let mut response = Response::new(Body::from_stream(lines));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    response
}
