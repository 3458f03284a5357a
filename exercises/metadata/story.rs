//! Three calls, and what travelled beside each.

use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::greeter_server::GreeterServer;
use microkit::proto::greeter::{GreetingsRequest, HelloReply, HelloRequest};
use microkit::server::RunningServer;
use tonic::metadata::MetadataMap;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::Args;
use crate::metadata::{MetadataGreeter, Seen, TraceEveryCall, ascii, key_rules};

pub type Client = GreeterClient<InterceptedService<Channel, TraceEveryCall>>;

pub async fn run(args: Args) -> anyhow::Result<()> {
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

/// A metadata greeter on a free port, and a client whose every call is intercepted.
pub async fn start() -> anyhow::Result<(RunningServer, Seen, Client)> {
    let seen = Seen::default();
    let greeter = GreeterServer::new(MetadataGreeter { seen: seen.clone() });
    let server = RunningServer::start(tonic::service::Routes::new(greeter)).await?;
    let channel = Channel::from_shared(server.url())?.connect().await?;
    Ok((server, seen, GreeterClient::with_interceptor(channel, TraceEveryCall::default())))
}

/// One unary call: what the server read, and what came back.
pub struct Hello {
    pub seen: Vec<String>,
    pub result: Result<Response<HelloReply>, Status>,
}

/// One unary call with metadata for this call only: go-micro's `metadata.NewContext`.
pub async fn say_hello(client: &mut Client, seen: &Seen, user: &str) -> anyhow::Result<Hello> {
    let mut request = Request::new(HelloRequest { name: user.to_owned() });
    request.metadata_mut().insert("x-user-name", ascii(user)?);
    let result = client.say_hello(request).await;
    Ok(Hello { seen: seen.take(), result })
}

/// A server stream with per-call metadata: its replies, then the trailers after the last.
pub async fn greetings(
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

/// A text entry of `metadata`, if it is there and readable.
pub fn text<'m>(metadata: &'m MetadataMap, key: &str) -> Option<&'m str> {
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
