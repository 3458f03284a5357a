//! # waitgroup: stop without losing the calls in flight
//!
//! go-micro's example counted in-flight calls with a `sync.WaitGroup` in a handler wrapper
//! and waited on it in `AfterStop`, that is, *after* the server had stopped: a reply
//! finished then had no connection left to travel on. Its gRPC server also capped the
//! drain at a fixed second, whatever the calls needed.
//!
//! Here a tower layer ([`wait_group`], next to this file) tracks every call with a
//! `TaskTracker`, from its request to the last byte of its reply, and the order is:
//!
//! 1. stop taking calls: the server still runs, but a new call gets `Unavailable`, and
//!    long-lived streams are told to finish (a last message, then the end);
//! 2. drain: wait for the calls in flight, for at most `--drain-ms`; cut what is left
//!    with `Cancelled`, and count it;
//! 3. only now stop the server: every reply has been written.
//!
//! Run it:
//!
//! ```text
//! cargo run --example waitgroup
//! cargo run --example waitgroup -- --calls 20 --work-ms 300
//! cargo run --example waitgroup -- --work-ms 5000 --drain-ms 100   # the deadline cuts
//! ```
//!
//! The default run prints (the golden file `tests/golden/waitgroup.txt` holds exactly this):
//!
//! ```text
//! server up: every call passes through the waitgroup layer
//! in flight: 5 slow calls (200ms of work each) and 1 endless stream
//! 1. stop taking calls: a new call gets Unavailable "server is shutting down: not taking new calls"
//! 2. drain, for at most 1000ms:
//!    the stream was told to finish: last message "goodbye: the server is shutting down", then the end (Ok)
//!    slow calls: 5 replied, 0 cancelled
//!    cut by the server at the deadline: 0
//! 3. server stopped with 0 calls in flight
//! lost: 0
//! ```
//!
//! Read it beside `notes/waitgroup.md`.

mod wait_group;

use std::pin::Pin;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures::Stream;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::greeter_server::{Greeter, GreeterServer};
use microkit::proto::greeter::{GreetingsRequest, HelloReply, HelloRequest, NamesSummary};
use microkit::server::RunningServer;
use microkit::{Out, say};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status, Streaming};

use wait_group::{Draining, WaitGroup};

/// The stream's last message, sent when the server asks it to finish.
const GOODBYE: &str = "goodbye: the server is shutting down";
/// A cap on every wait in the demo, so a bug shows as an error rather than a hang.
const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(about = "Graceful drain: track calls in flight, finish them, then stop")]
struct Args {
    /// How many slow calls are in flight when the shutdown starts.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    calls: u32,
    /// How long each slow call works before it replies.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    work_ms: u64,
    /// The drain deadline: calls still running after it are cut with `Cancelled`.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    drain_ms: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse(), &Out::stdout()).await.map(|_| ()))
}

/// What the clients saw, for the tests to check.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    /// Slow calls that got their reply.
    replied: u32,
    /// Slow calls that got `Cancelled` because the drain deadline passed.
    cancelled: u32,
    /// Calls the server says it cut (stream included, if it was cut too).
    cut: usize,
    /// Calls that ended in any other way: lost.
    lost: u32,
}

async fn run(args: Args, out: &Out) -> anyhow::Result<Tally> {
    let group = WaitGroup::new();
    let greeter = SlowGreeter { work: Duration::from_millis(args.work_ms) };
    let layer = group.clone();
    let server = RunningServer::start_with(move |incoming, stop| {
        Server::builder()
            .layer(layer)
            .add_service(GreeterServer::new(greeter))
            .serve_with_incoming_shutdown(incoming, stop)
    })
    .await?;
    let client = GreeterClient::new(Channel::from_shared(server.url())?.connect().await?);
    say!(out, "server up: every call passes through the waitgroup layer");

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
    let expected = args.calls as usize + 1;
    tokio::time::timeout(PATIENCE, async {
        while group.in_flight() < expected {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .context("the calls never got in flight")?;
    say!(
        out,
        "in flight: {} slow calls ({}ms of work each) and 1 endless stream",
        args.calls,
        args.work_ms
    );

    // 1. Stop taking calls, and show it with one more.
    group.stop_taking_calls();
    let late = client.clone().say_hello(HelloRequest { name: "latecomer".into() }).await;
    let mut lost = 0;
    match late {
        Err(status) => {
            say!(
                out,
                "1. stop taking calls: a new call gets {:?} \"{}\"",
                status.code(),
                status.message()
            );
            lost += u32::from(status.code() != Code::Unavailable);
        }
        Ok(_) => {
            say!(out, "1. stop taking calls: a new call was served anyway");
            lost += 1;
        }
    }

    // 2. Drain: the replies of the calls in flight go out on connections still open.
    say!(out, "2. drain, for at most {}ms:", args.drain_ms);
    let cut = group.drain(Duration::from_millis(args.drain_ms)).await?;
    let (last, end) = tokio::time::timeout(PATIENCE, stream).await.context("the stream hung")??;
    say!(out, "   the stream was told to finish: last message \"{last}\", then the end ({end:?})");
    lost += u32::from(end != Code::Ok || last != GOODBYE);

    let mut tally = Tally { cut, ..Tally::default() };
    let outcomes =
        tokio::time::timeout(PATIENCE, slow_calls.join_all()).await.context("a call hung")?;
    for outcome in outcomes {
        match outcome {
            Ok(_) => tally.replied += 1,
            Err(status) if status.code() == Code::Cancelled => tally.cancelled += 1,
            Err(status) => {
                tracing::error!("a slow call was lost: {status}");
                lost += 1;
            }
        }
    }
    say!(out, "   slow calls: {} replied, {} cancelled", tally.replied, tally.cancelled);
    say!(out, "   cut by the server at the deadline: {cut}");

    // 3. Nothing is in flight: stopping the server now loses nothing.
    tokio::time::timeout(PATIENCE, server.shutdown()).await.context("the server hung")??;
    say!(out, "3. server stopped with {} calls in flight", group.in_flight());
    tally.lost = lost;
    say!(out, "lost: {lost}");
    Ok(tally)
}

/// Reads a stream to its end: its last message and how it ended.
async fn read_to_the_end(mut stream: Streaming<HelloReply>) -> (String, Code) {
    let mut last = String::new();
    loop {
        match stream.message().await {
            Ok(Some(reply)) => last = reply.message,
            Ok(None) => return (last, Code::Ok),
            Err(status) => return (last, status.code()),
        }
    }
}

/// A Greeter whose unary call takes time, and whose stream runs until told to finish.
#[derive(Clone)]
struct SlowGreeter {
    work: Duration,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

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

    type GreetingsStream = ReplyStream;

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

    async fn collect_names(
        &self,
        _: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<NamesSummary>, Status> {
        Err(Status::unimplemented("not part of the waitgroup example"))
    }

    type ChatStream = ReplyStream;

    async fn chat(
        &self,
        _: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        Err(Status::unimplemented("not part of the waitgroup example"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run_with(flags: &[&str]) -> (Tally, String) {
        let out = Out::capture();
        let args = Args::parse_from(["waitgroup"].iter().chain(flags));
        let tally = run(args, &out).await.unwrap();
        (tally, out.text())
    }

    #[tokio::test]
    async fn prints_its_golden_output() {
        let (_, text) = run_with(&[]).await;
        microkit::golden::assert_matches("waitgroup", &text);
    }

    #[tokio::test]
    async fn twenty_slow_calls_in_flight_at_shutdown_all_reply() {
        let (tally, text) = run_with(&["--calls", "20", "--work-ms", "300"]).await;
        assert_eq!(tally, Tally { replied: 20, cancelled: 0, cut: 0, lost: 0 }, "{text}");
    }

    #[tokio::test]
    async fn a_deadline_shorter_than_the_calls_cuts_each_of_them_and_counts_exactly() {
        // An hour of work against a 500 ms deadline: every call is still running when
        // cut, and the stream has ample time to say goodbye first.
        let flags = ["--calls", "20", "--work-ms", "3600000", "--drain-ms", "500"];
        let (tally, text) = run_with(&flags).await;
        assert_eq!(tally, Tally { replied: 0, cancelled: 20, cut: 20, lost: 0 }, "{text}");
        assert!(text.contains("   cut by the server at the deadline: 20\n"), "{text}");
    }

    #[tokio::test]
    async fn the_stream_says_goodbye_even_when_the_deadline_cuts_the_rest() {
        let flags = ["--calls", "3", "--work-ms", "3600000", "--drain-ms", "500"];
        let (_, text) = run_with(&flags).await;
        let goodbye = format!("last message \"{GOODBYE}\", then the end (Ok)");
        assert!(text.contains(&goodbye), "{text}");
    }

    #[test]
    fn bad_settings_are_refused() {
        for flags in [&["--calls", "0"][..], &["--drain-ms", "soon"], &["--work-ms", "-1"]] {
            let args = ["waitgroup"].iter().chain(flags);
            assert!(Args::try_parse_from(args).is_err(), "{flags:?} was accepted");
        }
    }
}
