//! Three calls, and what the wrappers on each side noted.

use std::future::Future;

use futures::StreamExt;
use microkit::proto::greeter::{GreetingsRequest, HelloRequest};
use microkit::server::RunningServer;
use tonic::Status;
use tonic::transport::Channel;

use crate::Args;
use crate::wrapper::{Journal, Note, client_with_token, client_without_token, start_server};

/// A server with its stack on a free port, a channel to it, and each side's journal.
pub struct Demo {
    pub server: RunningServer,
    pub channel: Channel,
    pub client: Journal,
    pub server_journal: Journal,
}

/// One call's result and what each side's wrappers noted during it.
pub struct Traced<T> {
    pub client: Vec<Note>,
    pub server: Vec<Note>,
    pub result: Result<T, Status>,
}

impl Demo {
    pub async fn start() -> anyhow::Result<Demo> {
        let server_journal = Journal::default();
        let server = start_server(server_journal.clone()).await?;
        let channel = Channel::from_shared(server.url())?.connect().await?;
        Ok(Demo { server, channel, client: Journal::default(), server_journal })
    }

    /// Runs one call, then takes what both journals noted during it.
    pub async fn trace<T>(&self, call: impl Future<Output = Result<T, Status>>) -> Traced<T> {
        let result = call.await;
        Traced { client: self.client.take(), server: self.server_journal.take(), result }
    }
}

pub fn hello() -> HelloRequest {
    HelloRequest { name: "ada".into() }
}

/// The client's journal is printed first, but the server's happened in the middle of it:
/// between the client's `token added` and its `response head`, the request crossed the
/// network.
fn print_traced<T>(traced: &Traced<T>, ok: impl Fn(&T) -> String) {
    for note in traced.client.iter().chain(&traced.server) {
        println!("  {note}");
    }
    match &traced.result {
        Ok(value) => println!("  {}", ok(value)),
        Err(status) => println!("  refused: {:?} \"{}\"", status.code(), status.message()),
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
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
