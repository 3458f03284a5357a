//! The wrappers: one log layer and one auth interceptor on each side, stacked with tower's
//! `ServiceBuilder`, outermost first.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use microkit::greeter::HelloGreeter;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::server::RunningServer;
use tokio::sync::watch;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::{Interceptor, InterceptorLayer, Routes};
use tonic::transport::Channel;
use tonic::{Request, Status};
use tower::{Layer, Service, ServiceBuilder};

// ---- the stacks, outermost first ----

/// The server's stack: go-micro's `micro.WrapHandler(log, auth)`.
pub async fn start_server(journal: Journal) -> std::io::Result<RunningServer> {
    let layers = ServiceBuilder::new()
        .layer(LogLayer::new("server log", &journal))
        .layer(InterceptorLayer::new(check_token(journal.clone())))
        .into_inner();
    let greeter = HelloGreeter::new("greeter-1").into_service();
    // Health and reflection sit behind the same wrappers: here a probe needs the token too.
    let health = microkit::health::Health::new(&[microkit::greeter::GREETER]);
    let routes = health.mount(Routes::new(greeter));
    let server = RunningServer::start_with(move |incoming, stop| {
        microkit::server::builder()
            .layer(layers)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, stop)
    })
    .await?;
    Ok(server.with_health(health))
}

/// The client's stack: go-micro's `micro.WrapClient(log, auth)`.
pub fn client_with_token(
    channel: Channel,
    journal: &Journal,
    token: String,
) -> GreeterClient<Log<InterceptedService<Channel, impl Interceptor + Clone>>> {
    let stack = ServiceBuilder::new()
        .layer(LogLayer::new("client log", journal))
        .layer(InterceptorLayer::new(add_token(token, journal.clone())))
        .service(channel);
    GreeterClient::new(stack)
}

/// The same client stack without its auth wrapper: no token goes out.
pub fn client_without_token(channel: Channel, journal: &Journal) -> GreeterClient<Log<Channel>> {
    GreeterClient::new(
        ServiceBuilder::new().layer(LogLayer::new("client log", journal)).service(channel),
    )
}

// ---- the log wrapper: a full tower layer ----

/// A full tower layer: unlike an interceptor it sees the request, the response head and,
/// by wrapping the response body, the end of the response (for a stream, after its last
/// message). The same code serves the client and the server.
#[derive(Clone)]
pub struct LogLayer {
    name: &'static str,
    journal: Journal,
}

impl LogLayer {
    fn new(name: &'static str, journal: &Journal) -> Self {
        LogLayer { name, journal: journal.clone() }
    }
}

impl<S> Layer<S> for LogLayer {
    type Service = Log<S>;

    fn layer(&self, inner: S) -> Log<S> {
        Log { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct Log<S> {
    inner: S,
    layer: LogLayer,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Log<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<NoticeEnd<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let LogLayer { name, journal } = self.layer.clone();
        journal.note(0, format!("{name}: request {}", request.uri().path()));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // A refused call is "trailers-only": its status is already in the head.
            let status = match response.headers().get("grpc-status") {
                Some(code) => format!("grpc-status {}", code.to_str().unwrap_or("?")),
                None => "grpc-status in trailers".to_owned(),
            };
            journal.note(0, format!("{name}: response head, {status}"));
            // A trailers-only answer ended with its head: no end is left to wait for.
            let pending = response.headers().get("grpc-status").is_none().then_some(journal);
            Ok(response.map(|body| NoticeEnd { inner: body, end: End { name, journal: pending } }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that notes its end: when the trailers go by, or when it is dropped
    /// before them.
    pub struct NoticeEnd<B> {
        #[pin]
        inner: B,
        end: End,
    }
}

/// A response's end, noted once. Noting it only when the trailers pass would miss every call
/// that never gets them: a client that drops a stream, a deadline that fires, a connection
/// that breaks. The body is dropped then, so `Drop` notes those ends as "cancelled", and a
/// duration or an in-flight count built on this end cannot leak on exactly those calls.
struct End {
    name: &'static str,
    journal: Option<Journal>,
}

impl End {
    fn note(&mut self, how: &str) {
        if let Some(journal) = self.journal.take() {
            journal.note(0, format!("{}: response end{how}", self.name));
        }
    }
}

impl Drop for End {
    fn drop(&mut self) {
        self.note(" (cancelled)");
    }
}

impl<B: Body> Body for NoticeEnd<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        let ended = match &frame {
            Some(Ok(frame)) => frame.is_trailers(),
            Some(Err(_)) | None => true,
        };
        if ended {
            this.end.note("");
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---- the auth wrapper: a tonic interceptor on each side ----

/// The one token the server accepts. A real service would verify a signed token instead.
pub const TOKEN: &str = "let-me-in";

/// Why a token can be refused before it is sent: gRPC's rule for a text metadata value
/// (`ASCII-Value` in its spec of gRPC over HTTP/2), stricter than HTTP/2's. tonic's parser
/// follows HTTP's: it lets bytes above 127 through, which the server's `to_str()` cannot read
/// (`é` would arrive as no token at all), a tab, and a trailing space a receiver may strip.
const PRINTABLE_ASCII: &str =
    "a metadata value must be printable ASCII (0x20 to 0x7E), with no space at its end";

/// The `authorization` value for `token`, or a refusal that names the rule it breaks.
pub fn bearer(token: &str) -> Result<MetadataValue<Ascii>, Status> {
    let header = format!("Bearer {token}");
    let grpc_ascii = header.bytes().all(|b| (b' '..=b'~').contains(&b)) && !header.ends_with(' ');
    match header.parse() {
        Ok(value) if grpc_ascii => Ok(value),
        _ => Err(Status::invalid_argument(format!("token {token:?} not sent: {PRINTABLE_ASCII}"))),
    }
}

/// A tonic interceptor is the simplest wrapper: it sees (and may change or refuse) the
/// request's metadata, never the response. This one adds the bearer token.
fn add_token(token: String, journal: Journal) -> impl Interceptor + Clone {
    move |mut request: Request<()>| {
        request.metadata_mut().insert("authorization", bearer(&token)?);
        journal.note(1, "client auth: token added");
        Ok(request)
    }
}

/// The server half: refuses a call before it reaches the handler.
pub fn check_token(journal: Journal) -> impl Interceptor + Clone {
    move |request: Request<()>| {
        // exercise begins: judge the call by its `authorization` metadata: the bearer token, or why there is none
        let verdict = match request.metadata().get("authorization").map(|v| v.to_str()) {
            None => Err(Refusal::NoToken),
            Some(Err(_)) => Err(Refusal::Unreadable),
            Some(Ok(header)) => match header.strip_prefix("Bearer ") {
                Some(TOKEN) => Ok(()),
                Some(_) => Err(Refusal::WrongToken),
                None => Err(Refusal::NoToken),
            },
        };
        // exercise ends
        match verdict {
            Ok(()) => {
                journal.note(1, "server auth: token accepted");
                Ok(request)
            }
            Err(refusal) => {
                journal.note(1, format!("server auth: {}, refused", refusal.noted()));
                Err(Status::unauthenticated(refusal.told()))
            }
        }
    }
}

/// Why the server's auth wrapper turned a call away.
#[derive(Clone, Copy)]
enum Refusal {
    NoToken,
    Unreadable,
    WrongToken,
}

impl Refusal {
    /// What the server's journal notes.
    fn noted(self) -> &'static str {
        match self {
            Refusal::NoToken => "no token",
            Refusal::Unreadable => "unreadable token",
            Refusal::WrongToken => "wrong token",
        }
    }

    /// What the caller is told, in the `Unauthenticated` status.
    fn told(self) -> &'static str {
        match self {
            Refusal::NoToken => "missing bearer token",
            Refusal::Unreadable => "authorization header not printable ASCII",
            Refusal::WrongToken => "invalid bearer token",
        }
    }
}

/// What one side's wrappers noted during a call, with the depth of each wrapper. A `watch`,
/// so a test can wait for a note that comes after the call (the server's end of a stream the
/// client cancelled).
#[derive(Clone, Default)]
pub struct Journal(pub watch::Sender<Vec<Note>>);

/// One wrapper's note, and how deep that wrapper sits in its stack.
#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    /// 0 is the outermost wrapper.
    pub depth: usize,
    pub what: String,
}

/// Indented by depth, so the nesting of the wrappers shows.
impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", "  ".repeat(self.depth), self.what)
    }
}

impl Journal {
    fn note(&self, depth: usize, what: impl Into<String>) {
        self.0.send_modify(|notes| notes.push(Note { depth, what: what.into() }));
    }

    pub fn take(&self) -> Vec<Note> {
        self.0.send_replace(Vec::new())
    }
}
