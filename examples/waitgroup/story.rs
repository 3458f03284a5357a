//! The default run: slow calls and an endless stream in flight, then a graceful stop in
//! order, and a count of what was lost (nothing).

use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use microkit::PATIENCE;
use microkit::greeter::ReplyStream;
use microkit::health::{Health, WireStatus};
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::greeter_server::{Greeter, GreeterServer};
use microkit::proto::greeter::{GreetingsRequest, HelloReply, HelloRequest};
use microkit::server::RunningServer;
use tokio::task::JoinSet;
use tonic::service::Routes;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::Args;
use crate::wait_group::{Draining, WaitGroup};

/// The stream's last message, sent when the server asks it to finish.
pub const GOODBYE: &str = "goodbye: the server is shutting down";

/// What the clients saw: the run's result, which the tests check.
#[derive(Debug, PartialEq, Eq)]
pub struct Tally {
    /// How the call made after the server stopped taking calls ended (`None`: served).
    pub latecomer: Option<Code>,
    /// How the endless stream ended.
    pub stream: StreamEnd,
    /// Slow calls that got their reply.
    pub replied: u32,
    /// Slow calls that got `Cancelled` because the drain deadline passed.
    pub cancelled: u32,
    /// Calls the server says it cut (stream included, if it was cut too).
    pub cut: usize,
    /// Connections the drain had to close because a call on them did not hear the cut
    /// (its client had stopped reading): none, when every client reads.
    pub closed: usize,
    /// Calls that ended in any other way: lost.
    pub lost: u32,
}

/// A stream's last message, and how it ended.
#[derive(Debug, PartialEq, Eq)]
pub struct StreamEnd {
    pub last: String,
    pub end: Code,
}

/// The story: slow calls and a stream in flight, then the steps of a graceful stop (0 to 3).
pub async fn graceful_stop(args: &Args) -> anyhow::Result<Tally> {
    let group = WaitGroup::new();
    let greeter = SlowGreeter { work: Duration::from_millis(args.work_ms) };
    let layer = group.clone();
    let health = Health::new(&[microkit::greeter::GREETER]);
    let routes = health.mount(Routes::new(GreeterServer::new(greeter)));
    let server = RunningServer::start_with(move |incoming, stop| {
        // The connections pass through the group too: a call whose client stopped reading
        // can only be ended by closing its connection.
        let connections = layer.connections(incoming);
        microkit::server::builder()
            .layer(layer)
            .add_routes(routes)
            .serve_with_incoming_shutdown(connections, stop)
    })
    .await?;
    let channel = Channel::from_shared(server.url())?.connect().await?;
    let client = GreeterClient::new(channel.clone());
    println!("server up: every call passes through the waitgroup layer");
    // A client watching health: a stream in flight like the others, until the drain ends it.
    let mut watcher = Box::pin(microkit::health::watch(channel, "").await?);
    watcher.next().await.context("the health watch ended at once")??;

    // The work in flight: slow unary calls, and one endless stream (count 0).
    let mut slow_calls = JoinSet::new();
    for i in 0..args.calls {
        let mut client = client.clone();
        let request = HelloRequest { name: format!("caller-{i}") };
        slow_calls.spawn(async move { client.say_hello(request).await });
    }
    let watch = GreetingsRequest { name: "watcher".into(), count: 0, interval_ms: 20 };
    let mut stream = client.clone().greetings(watch).await?.into_inner();
    stream.message().await?.context("the stream ended before it began")?;
    let stream = tokio::spawn(read_to_the_end(stream));
    tokio::time::timeout(PATIENCE, group.admitted(args.calls as usize + 2))
        .await
        .context("the calls never got in flight")?;
    println!(
        "in flight: {} slow calls ({}ms of work each) and 1 endless stream",
        args.calls, args.work_ms
    );

    // 0. Not serving: whoever watches health stops sending before any call is refused.
    health.set_serving(false).await;
    let seen = tokio::time::timeout(PATIENCE, watcher.next()).await?.context("watch ended")??;
    println!("0. not serving: the health watch sees {}", seen.as_str_name());
    let missed_not_serving = u32::from(seen != WireStatus::NotServing);

    // 1. Stop taking calls, and show it with one more.
    group.stop_taking_calls();
    let late = client.clone().say_hello(HelloRequest { name: "latecomer".into() }).await;
    let latecomer = late.as_ref().err().map(Status::code);
    match &late {
        Err(status) => println!(
            "1. stop taking calls: a new call gets {:?} \"{}\"",
            status.code(),
            status.message()
        ),
        Ok(_) => println!("1. stop taking calls: a new call was served anyway"),
    }
    let mut lost = u32::from(latecomer != Some(Code::Unavailable)) + missed_not_serving;
    // The health watch is endless: the drain ends it, or it would wait for the deadline.
    health.close();

    // 2. Drain: the replies of the calls in flight go out on connections still open.
    println!("2. drain, for at most {}ms:", args.drain_ms);
    let cut = group.drain(Duration::from_millis(args.drain_ms)).await?;
    let stream = tokio::time::timeout(PATIENCE, stream).await.context("the stream hung")??;
    let StreamEnd { last, end } = &stream;
    println!("   the stream was told to finish: last message \"{last}\", then the end ({end:?})");
    lost += u32::from(*end != Code::Ok || last != GOODBYE);

    let (mut replied, mut cancelled) = (0, 0);
    let outcomes =
        tokio::time::timeout(PATIENCE, slow_calls.join_all()).await.context("a call hung")?;
    for outcome in outcomes {
        match outcome {
            Ok(_) => replied += 1,
            Err(status) if status.code() == Code::Cancelled => cancelled += 1,
            Err(status) => {
                tracing::error!("a slow call was lost: {status}");
                lost += 1;
            }
        }
    }
    println!("   slow calls: {replied} replied, {cancelled} cancelled");
    println!("   cut by the server at the deadline: {cut}");

    // 3. Nothing is in flight: stopping the server now loses nothing.
    tokio::time::timeout(PATIENCE, server.shutdown()).await.context("the server hung")??;
    println!("3. server stopped with {} calls in flight", group.in_flight());
    println!("lost: {lost}");
    let closed = group.connections_closed();
    Ok(Tally { latecomer, stream, replied, cancelled, cut, closed, lost })
}

/// Reads a stream to its end: its last message and how it ended.
async fn read_to_the_end(mut stream: Streaming<HelloReply>) -> StreamEnd {
    let mut last = String::new();
    loop {
        match stream.message().await {
            Ok(Some(reply)) => last = reply.message,
            Ok(None) => return StreamEnd { last, end: Code::Ok },
            Err(status) => return StreamEnd { last, end: status.code() },
        }
    }
}

/// A Greeter whose unary call takes time, and whose stream runs until told to finish.
#[derive(Clone)]
struct SlowGreeter {
    work: Duration,
}

#[tonic::async_trait]
impl Greeter for SlowGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        tokio::time::sleep(self.work).await;
        let message = format!("hello {}", request.into_inner().name);
        Ok(Response::new(HelloReply { message, ..Default::default() }))
    }

    /// Greets every `interval_ms` until `count` (0: forever) or until the drain starts;
    /// then it says goodbye and ends cleanly, instead of holding the shutdown open.
    async fn greetings(
        &self,
        request: Request<GreetingsRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let draining = request
            .extensions()
            .get::<Draining>()
            .cloned()
            .ok_or_else(|| Status::internal("served without the waitgroup layer"))?;
        let GreetingsRequest { name, count, interval_ms } = request.into_inner();
        let interval = Duration::from_millis(interval_ms.into());
        let limit = if count == 0 { u32::MAX } else { count };
        let reply = |message: String, seq| Ok(HelloReply { message, seq, ..Default::default() });
        // State: the next sequence number, or None once the goodbye has been sent.
        let replies = futures::stream::unfold(Some(1), move |next| {
            let (name, draining) = (name.clone(), draining.clone());
            async move {
                let seq = next.filter(|seq| *seq <= limit)?;
                if seq > 1 {
                    tokio::select! {
                        () = tokio::time::sleep(interval) => {}
                        () = draining.started() => return Some((reply(GOODBYE.into(), seq), None)),
                    }
                }
                Some((reply(format!("hello {name}"), seq), Some(seq + 1)))
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }
}
