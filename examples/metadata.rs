//! # metadata: what travels beside a message
//!
//! Metadata is a gRPC call's HTTP/2 headers: key/value pairs *about* the call (who calls,
//! which request this is, a trace id) that travel beside the message, readable by every
//! layer without decoding it. Here the client sets it two ways ([`TraceEveryCall`], an
//! interceptor for every call, and per call), the server ([`MetadataGreeter`]) reads it, and
//! metadata flows back as response headers and as trailers, after the last message.
//!
//! go-micro's example echoed a `User`/`ID` map but never said that its keys were silently
//! title-cased (`X-User-Id`), while gRPC sends every key in lower case, nor that a value
//! that is not printable ASCII ([`ascii`]) needs a binary key ending in `-bin`.
//!
//! Run it:
//!
//! ```text
//! cargo run --example metadata
//! cargo run --example metadata -- --user ada
//! ```
//!
//! Prints `tests/golden/metadata.txt`; explained in `notes/metadata.md`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use clap::Parser;
use futures::Stream;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::greeter_server::{Greeter, GreeterServer};
use microkit::proto::greeter::{GreetingsRequest, HelloReply, HelloRequest, NamesSummary};
use microkit::server::RunningServer;
use tonic::metadata::{Ascii, Binary, KeyAndValueRef, MetadataKey, MetadataMap, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

// ---- the client half: metadata on every call ----

/// Adds a request id and a binary trace id to every outgoing call: go-micro's client wrapper.
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

/// A text value for an ASCII key, by gRPC's rule (its spec of gRPC over HTTP/2):
/// `ASCII-Value → 1*( %x20-%x7E )`, space and printable ASCII, and no space at either end,
/// which a receiver "may strip". HTTP/2 is looser, and so is the parser: it lets a tab and
/// bytes above 127 through, and a tab even reaches the server's `to_str()` intact.
fn ascii(text: &str) -> Result<MetadataValue<Ascii>, Status> {
    let refused = |why: &str| Status::invalid_argument(format!("{why}: {text:?}"));
    if !text.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(refused("not printable ASCII (gRPC allows space to '~')"));
    }
    if text.starts_with(' ') || text.ends_with(' ') {
        return Err(refused("a space at either end, which gRPC lets a receiver strip"));
    }
    text.parse().map_err(|_| refused("not a metadata value"))
}

// ---- the server half: read what came, answer with metadata of its own ----

/// A Greeter that reads the client's metadata and sends some back, before and after replies.
struct MetadataGreeter {
    /// What the server read, kept for the story to print beside the reply.
    seen: Seen,
}

/// The application metadata of a request, sorted, `key = value`, binary values in hex.
/// Transport headers (content-type, te, user-agent...) are left out.
fn application_metadata(metadata: &MetadataMap) -> Vec<String> {
    let mut seen = Vec::new();
    for entry in metadata.iter() {
        match entry {
            KeyAndValueRef::Ascii(key, value) if key.as_str().starts_with("x-") => {
                seen.push(format!("{key} = {}", value.to_str().unwrap_or("<not text>")));
            }
            KeyAndValueRef::Binary(key, value) => {
                let bytes = value.to_bytes().map(|b| b.to_vec()).unwrap_or_default();
                let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
                seen.push(format!("{key} = {} (binary)", hex.join(" ")));
            }
            KeyAndValueRef::Ascii(..) => {}
        }
    }
    seen.sort();
    seen
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

#[tonic::async_trait]
impl Greeter for MetadataGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.seen.record(application_metadata(request.metadata()));
        let name = request.into_inner().name;
        if name == "nobody" {
            // An error's metadata travels in the trailers that carry the status itself.
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

/// What the server read from the last call's metadata.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn record(&self, entries: Vec<String>) {
        *self.0.lock().unwrap() = entries;
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

// ---- the story: three calls, and what travelled beside each ----

type Client = GreeterClient<InterceptedService<Channel, TraceEveryCall>>;

/// A metadata greeter on a free port, and a client whose every call is intercepted.
async fn start() -> anyhow::Result<(RunningServer, Seen, Client)> {
    let seen = Seen::default();
    let greeter = GreeterServer::new(MetadataGreeter { seen: seen.clone() });
    let server = RunningServer::start(tonic::service::Routes::new(greeter)).await?;
    let channel = Channel::from_shared(server.url())?.connect().await?;
    Ok((server, seen, GreeterClient::with_interceptor(channel, TraceEveryCall::default())))
}

/// One unary call: what the server read, and what came back.
struct Hello {
    seen: Vec<String>,
    result: Result<Response<HelloReply>, Status>,
}

/// One unary call with metadata for this call only: go-micro's `metadata.NewContext`.
async fn say_hello(client: &mut Client, seen: &Seen, user: &str) -> anyhow::Result<Hello> {
    let mut request = Request::new(HelloRequest { name: user.to_owned() });
    request.metadata_mut().insert("x-user-name", ascii(user)?);
    let result = client.say_hello(request).await;
    Ok(Hello { seen: seen.take(), result })
}

/// A server stream with per-call metadata: its replies, then the trailers after the last.
async fn greetings(
    client: &mut Client,
    user: &str,
    count: u32,
) -> anyhow::Result<(Vec<HelloReply>, MetadataMap)> {
    let mut request =
        Request::new(GreetingsRequest { name: user.to_owned(), count, interval_ms: 0 });
    request.metadata_mut().insert("x-user-name", ascii(user)?);
    let mut stream = client.greetings(request).await?.into_inner();
    let mut replies = Vec::new();
    while let Some(reply) = stream.message().await? {
        replies.push(reply);
    }
    // Trailers arrive after the last message: the place for facts known only at the end.
    Ok((replies, stream.trailers().await?.unwrap_or_default()))
}

/// gRPC's key and value rules, as tonic's types and parsers enforce them.
struct KeyRules {
    /// What `X-User-Name` is sent as: HTTP/2 header names are lower case.
    sent_as: String,
    /// Why a value with a line break is refused: ASCII values must be printable.
    multi_line_value: Option<String>,
    /// Why [`ascii`] refuses a tab, which the parser (and HTTP/2) would let through.
    tab_value: Option<String>,
    /// Why a binary value's key without `-bin` is refused: a separate type, checked on parse.
    binary_key_without_bin: Option<String>,
}

fn key_rules() -> KeyRules {
    let key = MetadataKey::<Ascii>::from_bytes(b"X-User-Name").expect("a valid name");
    KeyRules {
        sent_as: key.as_str().to_owned(),
        multi_line_value: "two\nlines".parse::<MetadataValue<Ascii>>().err().map(|e| e.to_string()),
        tab_value: ascii("a\tb").err().map(|status| status.message().to_owned()),
        binary_key_without_bin: MetadataKey::<Binary>::from_bytes(b"trace")
            .err()
            .map(|e| e.to_string()),
    }
}

/// A text entry of `metadata`, if it is there and readable.
fn text<'m>(metadata: &'m MetadataMap, key: &str) -> Option<&'m str> {
    metadata.get(key).and_then(|v| v.to_str().ok())
}

fn print_entry(kind: &str, metadata: &MetadataMap, key: &str) {
    match text(metadata, key) {
        Some(value) => println!("  {kind} {key} = {value}"),
        None => println!("  {kind} {key} is missing"),
    }
}

fn print_hello(hello: &Hello) {
    for line in &hello.seen {
        println!("  server saw {line}");
    }
    match &hello.result {
        Ok(response) => {
            println!("  reply: {}", response.get_ref().message);
            print_entry("response header", response.metadata(), "x-served-by");
        }
        Err(status) => {
            println!("  refused: {:?} \"{}\"", status.code(), status.message());
            print_entry("trailer", status.metadata(), "x-denied-by");
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let rules = key_rules();
    println!("key \"X-User-Name\" is sent as \"{}\": gRPC keys are lower case", rules.sent_as);
    if let Some(why) = rules.multi_line_value {
        println!("refused as an ASCII value: \"two\\nlines\" ({why})");
    }
    if let Some(why) = rules.tab_value {
        println!("refused by gRPC's rule, though HTTP/2 would carry it: {why}");
    }
    if let Some(why) = rules.binary_key_without_bin {
        println!("refused as a binary key: \"trace\" ({why})");
    }

    let (server, seen, mut client) = start().await?;
    println!("call 1: say_hello as {}", args.user);
    print_hello(&say_hello(&mut client, &seen, &args.user).await?);
    println!("call 2: say_hello as nobody");
    print_hello(&say_hello(&mut client, &seen, "nobody").await?);

    println!("call 3: greetings as {}, 2 replies", args.user);
    let (replies, trailers) = greetings(&mut client, &args.user, 2).await?;
    for reply in replies {
        println!("  reply {}: {}", reply.seq, reply.message);
    }
    print_entry("trailer", &trailers, "x-replies-sent");
    server.shutdown().await
}

// ---- the command line ----

#[derive(Parser, Debug)]
#[command(about = "gRPC metadata: request headers, response headers, trailers")]
struct Args {
    /// The user name the client sends as `x-user-name` (printable ASCII, no space at either
    /// end: gRPC's rule for a text value).
    #[arg(long, default_value = "john", value_parser = printable_ascii)]
    user: String,
}

fn printable_ascii(text: &str) -> Result<String, String> {
    ascii(text).map(|_| text.to_owned()).map_err(|status| status.message().to_owned())
}

fn main() -> std::process::ExitCode {
    microkit::main(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn per_call_and_intercepted_metadata_reach_the_server() {
        let (server, seen, mut client) = start().await.unwrap();
        let hello = say_hello(&mut client, &seen, "ada").await.unwrap();
        assert_eq!(
            hello.seen,
            ["trace-bin = de ad be ef (binary)", "x-request-id = req-1", "x-user-name = ada"]
        );
        let response = hello.result.unwrap();
        assert_eq!(response.get_ref().message, "hello ada");
        assert_eq!(text(response.metadata(), "x-served-by"), Some("greeter-1"));
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn the_interceptor_numbers_every_call() {
        let (server, seen, mut client) = start().await.unwrap();
        for n in 1..=3 {
            let hello = say_hello(&mut client, &seen, "ada").await.unwrap();
            assert!(hello.seen.contains(&format!("x-request-id = req-{n}")), "{:?}", hello.seen);
        }
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_refusal_carries_its_metadata_in_the_trailers() {
        let (server, seen, mut client) = start().await.unwrap();
        let status = say_hello(&mut client, &seen, "nobody").await.unwrap().result.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(status.message(), "nobody may not be greeted");
        assert_eq!(text(status.metadata(), "x-denied-by"), Some("policy-7"));
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_stream_sends_its_trailers_after_the_last_reply() {
        let (server, _, mut client) = start().await.unwrap();
        let (replies, trailers) = greetings(&mut client, "bo", 3).await.unwrap();
        let seqs: Vec<u32> = replies.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(replies[0].message, "hello bo");
        assert_eq!(text(&trailers, "x-replies-sent"), Some("3"));
        server.shutdown().await.unwrap();
    }

    #[test]
    fn keys_are_lower_cased_and_bad_values_and_binary_keys_refused() {
        let rules = key_rules();
        assert_eq!(rules.sent_as, "x-user-name");
        assert!(rules.multi_line_value.is_some());
        assert!(rules.binary_key_without_bin.is_some());
    }

    #[test]
    fn only_printable_ascii_makes_a_text_value() {
        assert!(ascii("john").is_ok());
        assert!(ascii("john smith").is_ok(), "a space inside is printable ASCII");
        for refused in ["zoë", "two\nlines"] {
            assert_eq!(ascii(refused).unwrap_err().code(), Code::InvalidArgument, "{refused:?}");
        }
    }

    #[test]
    fn a_tab_or_a_space_at_either_end_is_refused_as_grpc_refuses_it() {
        // HTTP/2 and tonic's parser both take these; gRPC's ASCII-Value does not.
        assert!("a\tb".parse::<MetadataValue<Ascii>>().is_ok());
        let refusal = |text| ascii(text).map(drop).map_err(|status| status.message().to_owned());
        assert_eq!(
            refusal("a\tb"),
            Err(r#"not printable ASCII (gRPC allows space to '~'): "a\tb""#.into())
        );
        for edge in [" ada", "ada ", " "] {
            let why = refusal(edge).unwrap_err();
            assert!(why.starts_with("a space at either end"), "{edge:?}: {why}");
        }
        let error = Args::try_parse_from(["metadata", "--user", "a\tb"]).unwrap_err().to_string();
        assert!(error.contains("not printable ASCII"), "{error}");
        assert!(Args::try_parse_from(["metadata", "--user", "ada "]).is_err());
    }

    #[test]
    fn the_user_flag_is_parsed_and_a_non_ascii_user_refused_before_anything_is_sent() {
        assert_eq!(Args::try_parse_from(["metadata", "--user", "ada"]).unwrap().user, "ada");
        let error = Args::try_parse_from(["metadata", "--user", "zoë"]).unwrap_err().to_string();
        assert!(error.contains("not printable ASCII"), "{error}");
    }

    #[test]
    fn an_unknown_flag_is_refused() {
        assert!(Args::try_parse_from(["metadata", "--colour"]).is_err());
    }
}
