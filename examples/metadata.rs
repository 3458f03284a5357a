//! # metadata: what travels beside a message
//!
//! go-micro's example put `User` and `ID` into the context on the client and echoed the map
//! on the server. What it never said: its keys were silently title-cased (`X-User-Id`),
//! while gRPC, which this port uses, sends every key in lower case, and a value that is not
//! plain ASCII needs a binary key ending in `-bin`. Here the client sets metadata two ways
//! (an interceptor for every call, and per call), the server reads it, and metadata flows
//! back as response headers and as trailers, after the last message.
//!
//! Run it:
//!
//! ```text
//! cargo run --example metadata
//! cargo run --example metadata -- --user ada
//! ```
//!
//! It prints (the golden file `tests/golden/metadata.txt` holds exactly this):
//!
//! ```text
//! key "X-User-Name" is sent as "x-user-name": gRPC keys are lower case
//! refused as an ASCII value: "two\nlines" (failed to parse metadata value)
//! refused as a binary key: "trace" (invalid gRPC metadata key name)
//! call 1: say_hello as john
//!   server saw trace-bin = de ad be ef (binary)
//!   server saw x-request-id = req-1
//!   server saw x-user-name = john
//!   reply: hello john
//!   response header x-served-by = greeter-1
//! call 2: say_hello as nobody
//!   server saw trace-bin = de ad be ef (binary)
//!   server saw x-request-id = req-2
//!   server saw x-user-name = nobody
//!   refused: PermissionDenied "nobody may not be greeted"
//!   trailer x-denied-by = policy-7
//! call 3: greetings as john, 2 replies
//!   reply 1: hello john
//!   reply 2: hello john
//!   trailer x-replies-sent = 2
//! ```
//!
//! Read it beside `notes/metadata.md`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use clap::Parser;
use futures::Stream;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::greeter_server::{Greeter, GreeterServer};
use microkit::proto::greeter::{GreetingsRequest, HelloReply, HelloRequest, NamesSummary};
use microkit::server::RunningServer;
use microkit::{Out, say};
use tonic::metadata::{Ascii, Binary, MetadataKey, MetadataMap, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Code, Request, Response, Status, Streaming};

#[derive(Parser, Debug)]
#[command(about = "gRPC metadata: request headers, response headers, trailers")]
struct Args {
    /// The user name the client sends as `x-user-name` (printable ASCII, as the key needs).
    #[arg(long, default_value = "john", value_parser = printable_ascii)]
    user: String,
}

fn printable_ascii(text: &str) -> Result<String, String> {
    ascii(text).map(|_| text.to_owned()).map_err(|status| status.message().to_owned())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse(), &Out::stdout()).await)
}

async fn run(args: Args, out: &Out) -> anyhow::Result<()> {
    show_key_rules(out);

    let server =
        RunningServer::start(tonic::service::Routes::new(GreeterServer::new(MetadataGreeter {
            out: out.clone(),
        })))
        .await?;
    let channel = tonic::transport::Channel::from_shared(server.url())?.connect().await?;
    // The interceptor runs on every call made through this client: go-micro's client wrapper.
    let mut client = GreeterClient::with_interceptor(channel, TraceEveryCall::default());

    say!(out, "call 1: say_hello as {}", args.user);
    say_hello(&mut client, &args.user, out).await;

    say!(out, "call 2: say_hello as nobody");
    say_hello(&mut client, "nobody", out).await;

    say!(out, "call 3: greetings as {}, 2 replies", args.user);
    let mut request =
        Request::new(GreetingsRequest { name: args.user.clone(), count: 2, interval_ms: 0 });
    request.metadata_mut().insert("x-user-name", ascii(&args.user)?);
    let mut replies = client.greetings(request).await?.into_inner();
    while let Some(reply) = replies.message().await? {
        say!(out, "  reply {}: {}", reply.seq, reply.message);
    }
    // Trailers arrive after the last message: the place for facts known only at the end.
    if let Some(trailers) = replies.trailers().await? {
        print_entry(out, "trailer", &trailers, "x-replies-sent");
    }

    server.shutdown().await
}

/// gRPC's key and value rules, shown by the type system and the parsers.
fn show_key_rules(out: &Out) {
    // HTTP/2 header names are lower case, so tonic lower-cases the key for us.
    let key = MetadataKey::<Ascii>::from_bytes(b"X-User-Name").expect("a valid name");
    say!(out, "key \"X-User-Name\" is sent as \"{}\": gRPC keys are lower case", key.as_str());

    // ASCII values must be printable; anything else goes under a `-bin` key.
    if let Err(e) = "two\nlines".parse::<MetadataValue<Ascii>>() {
        say!(out, "refused as an ASCII value: \"two\\nlines\" ({e})");
    }
    // And a binary value's key must end in `-bin`: a separate type, checked on parse.
    if let Err(e) = MetadataKey::<Binary>::from_bytes(b"trace") {
        say!(out, "refused as a binary key: \"trace\" ({e})");
    }
}

/// Adds a request id and a binary trace id to every outgoing call.
#[derive(Clone, Default)]
struct TraceEveryCall {
    calls: Arc<AtomicU32>,
}

impl Interceptor for TraceEveryCall {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let metadata = request.metadata_mut();
        metadata.insert("x-request-id", ascii(&format!("req-{n}"))?);
        // Raw bytes: sent base64-encoded on the wire, decoded again on the other side.
        metadata.insert_bin("trace-bin", MetadataValue::from_bytes(&[0xde, 0xad, 0xbe, 0xef]));
        Ok(request)
    }
}

type Client = GreeterClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, TraceEveryCall>,
>;

/// One unary call with per-call metadata, printing what came back beside the reply.
async fn say_hello(client: &mut Client, user: &str, out: &Out) {
    let mut request = Request::new(HelloRequest { name: user.to_owned() });
    // Metadata for this call only: go-micro's metadata.NewContext.
    request.metadata_mut().insert("x-user-name", ascii(user).expect("checked when parsed"));
    match client.say_hello(request).await {
        Ok(response) => {
            say!(out, "  reply: {}", response.get_ref().message);
            print_entry(out, "response header", response.metadata(), "x-served-by");
        }
        Err(status) => {
            say!(out, "  refused: {:?} \"{}\"", status.code(), status.message());
            // An error's metadata travels in the trailers that carry the status itself.
            print_entry(out, "trailer", status.metadata(), "x-denied-by");
        }
    }
}

fn print_entry(out: &Out, kind: &str, metadata: &MetadataMap, key: &str) {
    match metadata.get(key).and_then(|v| v.to_str().ok()) {
        Some(value) => say!(out, "  {kind} {key} = {value}"),
        None => say!(out, "  {kind} {key} is missing"),
    }
}

/// A text value for an ASCII key. Stricter than the parser, which lets bytes above 127
/// through even though the reading side's `to_str()` then refuses them.
fn ascii(text: &str) -> Result<MetadataValue<Ascii>, Status> {
    let not_ascii = || Status::invalid_argument(format!("not printable ASCII: {text:?}"));
    if !text.is_ascii() {
        return Err(not_ascii());
    }
    text.parse().map_err(|_| not_ascii())
}

/// The server half: reads what the client sent and answers with metadata of its own.
struct MetadataGreeter {
    out: Out,
}

impl MetadataGreeter {
    /// Prints the application metadata the server saw, sorted, binary values in hex.
    /// Transport headers (content-type, te, user-agent...) are left out.
    fn print_seen(&self, metadata: &MetadataMap) {
        let mut seen = Vec::new();
        for entry in metadata.iter() {
            match entry {
                tonic::metadata::KeyAndValueRef::Ascii(key, value)
                    if key.as_str().starts_with("x-") =>
                {
                    seen.push(format!("{} = {}", key, value.to_str().unwrap_or("<not text>")));
                }
                tonic::metadata::KeyAndValueRef::Binary(key, value) => {
                    let bytes = value.to_bytes().map(|b| b.to_vec()).unwrap_or_default();
                    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
                    seen.push(format!("{} = {} (binary)", key, hex.join(" ")));
                }
                tonic::metadata::KeyAndValueRef::Ascii(..) => {}
            }
        }
        seen.sort();
        for line in seen {
            say!(self.out, "  server saw {line}");
        }
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

#[tonic::async_trait]
impl Greeter for MetadataGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.print_seen(request.metadata());
        let name = request.into_inner().name;
        if name == "nobody" {
            let mut trailers = MetadataMap::new();
            trailers.insert("x-denied-by", MetadataValue::from_static("policy-7"));
            let message = "nobody may not be greeted";
            return Err(Status::with_metadata(Code::PermissionDenied, message, trailers));
        }
        let mut response =
            Response::new(HelloReply { message: format!("hello {name}"), ..Default::default() });
        // Response metadata is sent as HTTP/2 headers, before the reply message.
        response.metadata_mut().insert("x-served-by", MetadataValue::from_static("greeter-1"));
        Ok(response)
    }

    type GreetingsStream = ReplyStream;

    async fn greetings(
        &self,
        request: Request<GreetingsRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let GreetingsRequest { name, count, .. } = request.into_inner();
        let replies = (1..=count).map(move |seq| {
            Ok(HelloReply { message: format!("hello {name}"), seq, ..Default::default() })
        });
        // A stream ends with a status, sent as trailers. Ending it with an OK status that
        // carries metadata is how tonic sends trailers on success.
        let mut trailers = MetadataMap::new();
        trailers.insert("x-replies-sent", ascii(&count.to_string())?);
        let end = Err(Status::with_metadata(Code::Ok, "", trailers));
        Ok(Response::new(Box::pin(futures::stream::iter(replies.chain([end])))))
    }

    async fn collect_names(
        &self,
        _: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<NamesSummary>, Status> {
        Err(Status::unimplemented("not part of the metadata example"))
    }

    type ChatStream = ReplyStream;

    async fn chat(
        &self,
        _: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        Err(Status::unimplemented("not part of the metadata example"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prints_its_golden_output() {
        let out = Out::capture();
        run(Args::parse_from(["metadata"]), &out).await.unwrap();
        microkit::golden::assert_matches("metadata", &out.text());
    }

    #[tokio::test]
    async fn the_user_flag_reaches_the_server_as_metadata() {
        let out = Out::capture();
        run(Args::parse_from(["metadata", "--user", "ada"]), &out).await.unwrap();
        assert!(out.text().contains("  server saw x-user-name = ada\n"), "{}", out.text());
    }

    #[test]
    fn a_non_ascii_user_is_refused_before_anything_is_sent() {
        let error = Args::try_parse_from(["metadata", "--user", "zoë"]).unwrap_err().to_string();
        assert!(error.contains("not printable ASCII"), "{error}");
    }

    #[test]
    fn an_unknown_flag_is_refused() {
        assert!(Args::try_parse_from(["metadata", "--colour"]).is_err());
    }
}
