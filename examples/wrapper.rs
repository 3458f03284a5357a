//! # wrapper: middleware around every call, on the client and on the server
//!
//! A wrapper is middleware: code every call passes through, on its way out of a client or
//! into a server. In Rust both kinds are tower layers, and one layer type works on a tonic
//! client channel and on a tonic server, for unary and streaming calls alike, because it sits
//! below gRPC, on HTTP/2 requests. Each side here stacks two: an outer [`LogLayer`] (a
//! hand-written layer that sees the request, the response head and the response end) and an
//! inner auth interceptor ([`add_token`] on the client, [`check_token`] on the server). Each
//! side keeps a [`Journal`], indented by depth, so the nesting order shows.
//!
//! go-micro's client wrapper dropped the caller's call options, and only unary calls went
//! through it: streams needed a third kind of wrapper that its example never wrote.
//!
//! Run it:
//!
//! ```text
//! cargo run --example wrapper
//! cargo run --example wrapper -- --token wrong
//! ```
//!
//! Prints `tests/golden/wrapper.txt`; explained in `notes/wrapper.md`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use clap::Parser;
use futures::StreamExt;
use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use microkit::greeter::HelloGreeter;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::{GreetingsRequest, HelloRequest};
use microkit::server::RunningServer;
use tokio::sync::watch;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::{Interceptor, InterceptorLayer, Routes};
use tonic::transport::Channel;
use tonic::{Request, Status};
use tower::{Layer, Service, ServiceBuilder};

// ---- the log wrapper: a full tower layer ----

/// A full tower layer: unlike an interceptor it sees the request, the response head and,
/// by wrapping the response body, the end of the response (for a stream, after its last
/// message). The same code serves the client and the server.
#[derive(Clone)]
struct LogLayer {
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
struct Log<S> {
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
    struct NoticeEnd<B> {
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
const TOKEN: &str = "let-me-in";

/// Why a token can be refused before it is sent: gRPC's rule for a text metadata value
/// (`ASCII-Value` in its spec of gRPC over HTTP/2), stricter than HTTP/2's. tonic's parser
/// follows HTTP's: it lets bytes above 127 through, which the server's `to_str()` cannot read
/// (`é` would arrive as no token at all), a tab, and a trailing space a receiver may strip.
const PRINTABLE_ASCII: &str =
    "a metadata value must be printable ASCII (0x20 to 0x7E), with no space at its end";

/// The `authorization` value for `token`, or a refusal that names the rule it breaks.
fn bearer(token: &str) -> Result<MetadataValue<Ascii>, Status> {
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
fn check_token(journal: Journal) -> impl Interceptor + Clone {
    move |request: Request<()>| {
        let missing = ("no token", "missing bearer token");
        let verdict = match request.metadata().get("authorization").map(|v| v.to_str()) {
            None => Err(missing),
            Some(Err(_)) => Err(("unreadable token", "authorization header not printable ASCII")),
            Some(Ok(header)) => match header.strip_prefix("Bearer ") {
                Some(TOKEN) => Ok(()),
                Some(_) => Err(("wrong token", "invalid bearer token")),
                None => Err(missing),
            },
        };
        match verdict {
            Ok(()) => {
                journal.note(1, "server auth: token accepted");
                Ok(request)
            }
            Err((note, why)) => {
                journal.note(1, format!("server auth: {note}, refused"));
                Err(Status::unauthenticated(why))
            }
        }
    }
}

/// What one side's wrappers noted during a call, with the depth of each wrapper. A `watch`,
/// so a test can wait for a note that comes after the call (the server's end of a stream the
/// client cancelled).
#[derive(Clone, Default)]
struct Journal(watch::Sender<Vec<Note>>);

/// A wrapper's depth in its stack (0 is outermost) and what it noted.
type Note = (usize, String);

impl Journal {
    fn note(&self, depth: usize, what: impl Into<String>) {
        self.0.send_modify(|notes| notes.push((depth, what.into())));
    }

    fn take(&self) -> Vec<Note> {
        self.0.send_replace(Vec::new())
    }
}

// ---- the stacks, outermost first ----

/// The server's stack: go-micro's `micro.WrapHandler(log, auth)`.
async fn start_server(journal: Journal) -> std::io::Result<RunningServer> {
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
fn client_with_token(
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
fn client_without_token(channel: Channel, journal: &Journal) -> GreeterClient<Log<Channel>> {
    GreeterClient::new(
        ServiceBuilder::new().layer(LogLayer::new("client log", journal)).service(channel),
    )
}

// ---- the story: three calls, and what the wrappers noted ----

/// A server with its stack on a free port, a channel to it, and each side's journal.
struct Demo {
    server: RunningServer,
    channel: Channel,
    client: Journal,
    server_journal: Journal,
}

/// One call's result and what each side's wrappers noted during it.
struct Traced<T> {
    client: Vec<Note>,
    server: Vec<Note>,
    result: Result<T, Status>,
}

impl Demo {
    async fn start() -> anyhow::Result<Demo> {
        let server_journal = Journal::default();
        let server = start_server(server_journal.clone()).await?;
        let channel = Channel::from_shared(server.url())?.connect().await?;
        Ok(Demo { server, channel, client: Journal::default(), server_journal })
    }

    /// Runs one call, then takes what both journals noted during it.
    async fn trace<T>(&self, call: impl Future<Output = Result<T, Status>>) -> Traced<T> {
        let result = call.await;
        Traced { client: self.client.take(), server: self.server_journal.take(), result }
    }
}

fn hello() -> HelloRequest {
    HelloRequest { name: "ada".into() }
}

/// The client's journal is printed first, but the server's happened in the middle of it:
/// between the client's `token added` and its `response head`, the request crossed the
/// network.
fn print_traced<T>(traced: &Traced<T>, ok: impl Fn(&T) -> String) {
    for (depth, what) in traced.client.iter().chain(&traced.server) {
        println!("  {}{what}", "  ".repeat(*depth));
    }
    match &traced.result {
        Ok(value) => println!("  {}", ok(value)),
        Err(status) => println!("  refused: {:?} \"{}\"", status.code(), status.message()),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let demo = Demo::start().await?;
    let mut client = client_with_token(demo.channel.clone(), &demo.client, args.token);

    println!("call 1: SayHello with a token");
    let reply = demo.trace(async { Ok(client.say_hello(hello()).await?.into_inner()) }).await;
    print_traced(&reply, |reply| format!("reply: {}", reply.message));

    println!("call 2: Greetings (server streaming, 3 replies) with a token");
    let request = GreetingsRequest { name: "ada".into(), count: 3, interval_ms: 0 };
    // The same layers wrap a stream: no separate stream wrapper is needed.
    let replies = demo
        .trace(async {
            let stream = client.greetings(request).await?.into_inner();
            Ok(stream.filter(|reply| futures::future::ready(reply.is_ok())).count().await)
        })
        .await;
    print_traced(&replies, |count| format!("replies: {count}"));

    println!("call 3: SayHello without a token");
    let mut client = client_without_token(demo.channel.clone(), &demo.client);
    let refused = demo.trace(async { Ok(client.say_hello(hello()).await?.into_inner()) }).await;
    print_traced(&refused, |reply| format!("reply: {}", reply.message));

    demo.server.shutdown().await
}

// ---- the command line ----

#[derive(Parser, Debug)]
#[command(about = "tower layers as client and server wrappers, for unary and streaming calls")]
struct Args {
    /// The token the client's auth wrapper sends (printable ASCII, as metadata must be).
    #[arg(long, default_value = TOKEN, value_parser = visible_token)]
    token: String,
}

fn visible_token(token: &str) -> Result<String, String> {
    bearer(token).map(|_| token.to_owned()).map_err(|status| status.message().to_owned())
}

fn main() -> std::process::ExitCode {
    microkit::main(run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use microkit::proto::greeter::HelloReply;
    use tonic::Response;

    /// One SayHello against a fresh demo: through the full client stack with `Some(token)`,
    /// through the stack without its auth wrapper with `None`.
    async fn hello_with(token: Option<&str>) -> Traced<Response<HelloReply>> {
        let demo = Demo::start().await.unwrap();
        let traced = match token {
            Some(token) => {
                let mut client =
                    client_with_token(demo.channel.clone(), &demo.client, token.into());
                demo.trace(client.say_hello(hello())).await
            }
            None => {
                let mut client = client_without_token(demo.channel.clone(), &demo.client);
                demo.trace(client.say_hello(hello())).await
            }
        };
        demo.server.shutdown().await.unwrap();
        traced
    }

    /// What one side's journal holds for a call that passed both of its wrappers.
    fn passed(side: &str, method: &str) -> Vec<Note> {
        let auth = if side == "client" { "token added" } else { "token accepted" };
        vec![
            (0, format!("{side} log: request /greeter.v1.Greeter/{method}")),
            (1, format!("{side} auth: {auth}")),
            (0, format!("{side} log: response head, grpc-status in trailers")),
            (0, format!("{side} log: response end")),
        ]
    }

    fn refused(traced: Traced<Response<HelloReply>>) -> (Status, Vec<Note>, Vec<Note>) {
        (traced.result.unwrap_err(), traced.client, traced.server)
    }

    #[tokio::test]
    async fn a_unary_call_passes_log_then_auth_on_each_side() {
        let traced = hello_with(Some(TOKEN)).await;
        assert_eq!(traced.result.unwrap().get_ref().message, "hello ada");
        assert_eq!(traced.client, passed("client", "SayHello"));
        assert_eq!(traced.server, passed("server", "SayHello"));
    }

    #[tokio::test]
    async fn a_server_stream_passes_the_same_wrappers_and_ends_after_its_last_reply() {
        let demo = Demo::start().await.unwrap();
        let mut client = client_with_token(demo.channel.clone(), &demo.client, TOKEN.into());
        let request = GreetingsRequest { name: "ada".into(), count: 3, interval_ms: 0 };
        let traced = demo
            .trace(async { Ok(client.greetings(request).await?.into_inner().count().await) })
            .await;
        assert_eq!(traced.result.unwrap(), 3);
        assert_eq!(traced.client, passed("client", "Greetings"));
        assert_eq!(traced.server, passed("server", "Greetings"));
        demo.server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn the_server_wrappers_wrap_a_bidi_stream_too() {
        let demo = Demo::start().await.unwrap();
        let mut client = client_with_token(demo.channel.clone(), &demo.client, TOKEN.into());
        let names = futures::stream::iter(["a", "b"].map(|n| HelloRequest { name: n.into() }));
        let traced =
            demo.trace(async { Ok(client.chat(names).await?.into_inner().count().await) }).await;
        assert_eq!(traced.result.unwrap(), 2);
        assert_eq!(traced.server, passed("server", "Chat"));
        demo.server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_call_without_a_token_is_refused_before_the_handler() {
        let (status, client, server) = refused(hello_with(None).await);
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), "missing bearer token");
        // Trailers-only: the status is in the head, and there is no body whose end to note.
        let head = (0, "client log: response head, grpc-status 16".to_owned());
        assert_eq!(client, [passed("client", "SayHello")[0].clone(), head]);
        assert!(server.contains(&(1, "server auth: no token, refused".to_owned())), "{server:?}");
    }

    #[tokio::test]
    async fn a_wrong_token_is_refused_by_the_server_wrapper() {
        let (status, _, server) = refused(hello_with(Some("wrong")).await);
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), "invalid bearer token");
        assert!(
            server.contains(&(1, "server auth: wrong token, refused".to_owned())),
            "{server:?}"
        );
    }

    #[tokio::test]
    async fn a_stream_the_client_cancels_has_its_end_noted_on_both_sides() {
        let demo = Demo::start().await.unwrap();
        let mut server_notes = demo.server_journal.0.subscribe();
        let mut client = client_with_token(demo.channel.clone(), &demo.client, TOKEN.into());
        let endless = GreetingsRequest { name: "ada".into(), count: 0, interval_ms: 5 };
        let mut stream = client.greetings(endless).await.unwrap().into_inner();
        for _ in 0..2 {
            stream.message().await.unwrap().expect("an endless stream ended");
        }
        drop(stream); // the client goes away: no trailers will ever come
        let cancelled = |side: &str| (0, format!("{side} log: response end (cancelled)"));
        assert_eq!(demo.client.take().last(), Some(&cancelled("client")));
        // The server's end comes when the reset reaches it and its body is dropped.
        let noted = server_notes.wait_for(|notes| notes.contains(&cancelled("server")));
        let noted = tokio::time::timeout(microkit::PATIENCE, noted).await.is_ok();
        assert!(noted, "the server never noted the end: {:?}", demo.server_journal.take());
        demo.server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_timeout_layer_bounds_the_response_head_not_the_stream_after_it() {
        let demo = Demo::start().await.unwrap();
        let mut client = client_with_token(demo.channel.clone(), &demo.client, TOKEN.into());
        // tonic keeps a per-call timeout with a timeout layer inside the channel, the same
        // kind as tower's `TimeoutLayer`: it watches the future that yields the head.
        let slow = GreetingsRequest { name: "ada".into(), count: 3, interval_ms: 1000 };
        let mut request = Request::new(slow);
        request.set_timeout(std::time::Duration::from_secs(1));
        let started = std::time::Instant::now();
        let replies: Vec<_> = client.greetings(request).await.unwrap().into_inner().collect().await;
        assert!(started.elapsed() >= std::time::Duration::from_secs(2), "not a slow stream");
        assert_eq!(replies.len(), 3, "{replies:?}");
        assert!(replies.iter().all(Result::is_ok), "the stream outlived its timeout: {replies:?}");
        demo.server.shutdown().await.unwrap();
    }

    #[test]
    fn a_token_flag_that_is_not_printable_ascii_is_refused_naming_the_rule() {
        let error = Args::try_parse_from(["wrapper", "--token", "é"]).unwrap_err().to_string();
        assert!(error.contains("a metadata value must be printable ASCII"), "{error}");
    }

    #[test]
    fn a_token_with_a_tab_or_a_trailing_space_is_refused_as_grpc_refuses_it() {
        // Both would pass tonic's parser, and a tab would reach the server's `to_str()`.
        for token in ["let\tme-in", "let-me-in ", ""] {
            let status = bearer(token).unwrap_err();
            assert!(status.message().contains("no space at its end"), "{token:?}: {status}");
        }
        assert!(bearer(TOKEN).is_ok());
    }

    #[tokio::test]
    async fn the_client_wrapper_refuses_to_send_a_token_that_is_not_printable_ascii() {
        let traced = hello_with(Some("é")).await;
        let status = traced.result.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("a metadata value must be printable ASCII"), "{status}");
        assert!(traced.server.is_empty(), "nothing may be sent: {:?}", traced.server);
    }

    #[test]
    fn the_server_wrapper_names_an_authorization_header_it_cannot_read() {
        let mut request = Request::new(());
        // tonic's own parser lets bytes above 127 through: what a careless client sends.
        let value = MetadataValue::try_from("Bearer é".as_bytes()).unwrap();
        request.metadata_mut().insert("authorization", value);
        let status = check_token(Journal::default()).call(request).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("not printable ASCII"), "{status}");
    }

    #[test]
    fn the_token_flag_is_parsed() {
        assert_eq!(Args::try_parse_from(["wrapper"]).unwrap().token, TOKEN);
        assert_eq!(Args::try_parse_from(["wrapper", "--token", "x"]).unwrap().token, "x");
    }
}
