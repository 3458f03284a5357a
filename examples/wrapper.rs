//! # wrapper: middleware around every call, on the client and on the server
//!
//! go-micro has two kinds of wrapper: `client.Wrapper` (`func(Client) Client`, passed with
//! `micro.WrapClient`) and `server.HandlerWrapper` (`func(HandlerFunc) HandlerFunc`, passed
//! with `micro.WrapHandler`). Its example logged each call, but its client wrapper dropped
//! the caller's call options, and only unary calls went through: streams needed a third
//! kind of wrapper that the example never wrote.
//!
//! In Rust both kinds are tower layers: a `Layer` wraps a `Service`, and the same layer
//! type works on a tonic client channel and on a tonic server, for unary and streaming calls
//! alike, because it sits below gRPC, at the level of HTTP/2 requests. Here each side has two
//! layers, an outer `log` (a hand-written tower layer that notes what passes through it) and
//! an inner `auth` (a tonic interceptor: the client adds a token, the server checks it).
//! Each side writes a journal, indented by depth, so the nesting order is visible.
//!
//! Run it:
//!
//! ```text
//! cargo run --example wrapper
//! cargo run --example wrapper -- --token wrong
//! ```
//!
//! It prints (the golden file `tests/golden/wrapper.txt` holds exactly this):
//!
//! ```text
//! call 1: SayHello with a token
//!   client log: request /greeter.v1.Greeter/SayHello
//!     client auth: token added
//!   client log: response head, grpc-status in trailers
//!   client log: response end
//!   server log: request /greeter.v1.Greeter/SayHello
//!     server auth: token accepted
//!   server log: response head, grpc-status in trailers
//!   server log: response end
//!   reply: hello ada
//! call 2: Greetings (server streaming, 3 replies) with a token
//!   client log: request /greeter.v1.Greeter/Greetings
//!     client auth: token added
//!   client log: response head, grpc-status in trailers
//!   client log: response end
//!   server log: request /greeter.v1.Greeter/Greetings
//!     server auth: token accepted
//!   server log: response head, grpc-status in trailers
//!   server log: response end
//!   replies: 3
//! call 3: SayHello without a token
//!   client log: request /greeter.v1.Greeter/SayHello
//!   client log: response head, grpc-status 16
//!   server log: request /greeter.v1.Greeter/SayHello
//!     server auth: no token, refused
//!   server log: response head, grpc-status 16
//!   refused: Unauthenticated "missing bearer token"
//! ```
//!
//! The client's journal is printed first, but the server's happened in the middle of it:
//! between the client's `token added` and its `response head`, the request crossed the
//! network. Read it beside `notes/wrapper.md`.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use clap::Parser;
use futures::StreamExt;
use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use microkit::greeter::HelloGreeter;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::{GreetingsRequest, HelloRequest};
use microkit::server::RunningServer;
use microkit::{Out, say};
use tonic::service::InterceptorLayer;
use tonic::transport::{Channel, Server};
use tonic::{Request, Status};
use tower::{Layer, Service, ServiceBuilder};

/// The one token the server accepts. A real service would verify a signed token instead.
const TOKEN: &str = "let-me-in";

#[derive(Parser, Debug)]
#[command(about = "tower layers as client and server wrappers, for unary and streaming calls")]
struct Args {
    /// The token the client's auth wrapper sends.
    #[arg(long, default_value = TOKEN)]
    token: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse(), &Out::stdout()).await)
}

async fn run(args: Args, out: &Out) -> anyhow::Result<()> {
    let server_journal = Journal::default();
    let server = start_server(server_journal.clone()).await?;
    let channel = Channel::from_shared(server.url())?.connect().await?;

    let client_journal = Journal::default();
    // The client's stack, outermost first: go-micro's `micro.WrapClient(log, auth)`.
    let with_token = ServiceBuilder::new()
        .layer(LogLayer::new("client log", &client_journal))
        .layer(InterceptorLayer::new(add_token(args.token, client_journal.clone())))
        .service(channel.clone());
    let mut client = GreeterClient::new(with_token);

    say!(out, "call 1: SayHello with a token");
    let reply = client.say_hello(HelloRequest { name: "ada".into() }).await;
    print_journals(out, &client_journal, &server_journal);
    match reply {
        Ok(reply) => say!(out, "  reply: {}", reply.get_ref().message),
        Err(status) => say!(out, "  refused: {:?} \"{}\"", status.code(), status.message()),
    }

    say!(out, "call 2: Greetings (server streaming, 3 replies) with a token");
    let request = GreetingsRequest { name: "ada".into(), count: 3, interval_ms: 0 };
    // The same layers wrap a stream: no separate stream wrapper is needed.
    let replies = match client.greetings(request).await {
        Ok(stream) => Ok(stream.into_inner().collect::<Vec<_>>().await),
        Err(status) => Err(status),
    };
    print_journals(out, &client_journal, &server_journal);
    match replies {
        Ok(replies) => say!(out, "  replies: {}", replies.iter().filter(|r| r.is_ok()).count()),
        Err(status) => say!(out, "  refused: {:?} \"{}\"", status.code(), status.message()),
    }

    say!(out, "call 3: SayHello without a token");
    let without_token =
        ServiceBuilder::new().layer(LogLayer::new("client log", &client_journal)).service(channel);
    let status = GreeterClient::new(without_token)
        .say_hello(HelloRequest { name: "ada".into() })
        .await
        .expect_err("the server's auth wrapper refuses a call without a token");
    print_journals(out, &client_journal, &server_journal);
    say!(out, "  refused: {:?} \"{}\"", status.code(), status.message());

    server.shutdown().await
}

/// The server's stack, outermost first: go-micro's `micro.WrapHandler(log, auth)`.
async fn start_server(journal: Journal) -> std::io::Result<RunningServer> {
    let layers = ServiceBuilder::new()
        .layer(LogLayer::new("server log", &journal))
        .layer(InterceptorLayer::new(check_token(journal.clone())))
        .into_inner();
    let greeter = HelloGreeter::new("greeter-1").into_service();
    RunningServer::start_with(move |incoming, stop| {
        Server::builder()
            .layer(layers)
            .add_service(greeter)
            .serve_with_incoming_shutdown(incoming, stop)
    })
    .await
}

/// A tonic interceptor is the simplest wrapper: it sees (and may change or refuse) the
/// request's metadata, never the response. This one adds the bearer token.
fn add_token(
    token: String,
    journal: Journal,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request| {
        let value = format!("Bearer {token}").parse().map_err(|_| Status::internal("bad token"))?;
        request.metadata_mut().insert("authorization", value);
        journal.note(1, "client auth: token added");
        Ok(request)
    }
}

/// The server half: refuses a call before it reaches the handler.
fn check_token(journal: Journal) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request| {
        let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        match header.and_then(|h| h.strip_prefix("Bearer ")) {
            Some(TOKEN) => {
                journal.note(1, "server auth: token accepted");
                Ok(request)
            }
            Some(_) => {
                journal.note(1, "server auth: wrong token, refused");
                Err(Status::unauthenticated("invalid bearer token"))
            }
            None => {
                journal.note(1, "server auth: no token, refused");
                Err(Status::unauthenticated("missing bearer token"))
            }
        }
    }
}

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
            Ok(response.map(|body| NoticeEnd { inner: body, name, journal: Some(journal) }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that notes when its end (the trailers) goes by.
    struct NoticeEnd<B> {
        #[pin]
        inner: B,
        name: &'static str,
        journal: Option<Journal>,
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
        if ended && let Some(journal) = this.journal.take() {
            journal.note(0, format!("{}: response end", this.name));
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

/// What one side's wrappers noted during a call, with the depth of each wrapper.
#[derive(Clone, Default)]
struct Journal(Arc<Mutex<Vec<(usize, String)>>>);

impl Journal {
    fn note(&self, depth: usize, what: impl Into<String>) {
        self.0.lock().unwrap().push((depth, what.into()));
    }

    fn take(&self) -> Vec<(usize, String)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn print_journals(out: &Out, client: &Journal, server: &Journal) {
    for (depth, what) in client.take().into_iter().chain(server.take()) {
        say!(out, "  {}{what}", "  ".repeat(depth));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prints_its_golden_output() {
        let out = Out::capture();
        run(Args::parse_from(["wrapper"]), &out).await.unwrap();
        microkit::golden::assert_matches("wrapper", &out.text());
    }

    #[tokio::test]
    async fn a_wrong_token_is_refused_by_the_server_wrapper() {
        let out = Out::capture();
        run(Args::parse_from(["wrapper", "--token", "wrong"]), &out).await.unwrap();
        let text = out.text();
        assert!(text.contains("    server auth: wrong token, refused\n"), "{text}");
        assert!(text.contains("  refused: Unauthenticated \"invalid bearer token\"\n"), "{text}");
        assert!(!text.contains("reply: hello"), "no call may pass with a wrong token: {text}");
    }

    #[tokio::test]
    async fn the_server_wrappers_wrap_a_bidi_stream_too() {
        let journal = Journal::default();
        let server = start_server(journal.clone()).await.unwrap();
        let channel = Channel::from_shared(server.url()).unwrap().connect().await.unwrap();
        let client_journal = Journal::default();
        let stack = ServiceBuilder::new()
            .layer(InterceptorLayer::new(add_token(TOKEN.into(), client_journal)))
            .service(channel);
        let names = futures::stream::iter(["a", "b"].map(|n| HelloRequest { name: n.into() }));
        let replies = GreeterClient::new(stack).chat(names).await.unwrap().into_inner();
        assert_eq!(replies.count().await, 2);
        let noted: Vec<String> = journal.take().into_iter().map(|(_, what)| what).collect();
        assert_eq!(
            noted,
            [
                "server log: request /greeter.v1.Greeter/Chat",
                "server auth: token accepted",
                "server log: response head, grpc-status in trailers",
                "server log: response end",
            ]
        );
        server.shutdown().await.unwrap();
    }
}
