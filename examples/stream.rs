//! # stream: one call, many messages
//!
//! go-micro's stream example had a bidirectional echo and a server stream, but its client
//! never half-closed (said "I am done sending" while still reading), and nothing showed what
//! a server does when its client disappears. Here are all three streaming shapes:
//!
//! - server streaming: one request, several replies;
//! - client streaming: several requests; the client half-closes and only then the server
//!   answers once;
//! - bidirectional: request and reply in turn; the client half-closes, the server sees the
//!   end and closes its side;
//!
//! and the two ways a stream ends badly: the client goes away (the server notices and stops
//! producing) and the server goes away (the client gets a clear status, not a hang).
//!
//! Run it in one process, or as two processes in two terminals:
//!
//! ```text
//! cargo run --example stream
//! cargo run --example stream -- server --addr 127.0.0.1:50051
//! cargo run --example stream -- client --addr 127.0.0.1:50051
//! ```
//!
//! The one-process run prints (the golden file `tests/golden/stream.txt` holds exactly this):
//!
//! ```text
//! server streaming: one request, 3 replies
//!   client got hello ada #1
//!   client got hello ada #2
//!   client got hello ada #3
//!   client saw the end of the stream
//! client streaming: 3 names, then the client half-closes
//!   server got ada
//!   server got bo
//!   server got cy
//!   server saw the client half-close after 3 names
//!   client got the summary: hello ada, bo, cy
//! bidirectional: one name at a time, in turn
//!   client sent ada
//!   server got ada
//!   client got hello ada
//!   client sent bo
//!   server got bo
//!   client got hello bo
//!   client half-closes
//!   server saw the client half-close; it ends its side too
//!   client saw the end of the stream
//! the client goes away from an endless stream
//!   client read 3 replies, then drops the stream
//!   server noticed the client went away and stopped producing
//! the server goes away mid-stream
//!   client read 2 replies, then the server crashed
//!   client got an error, not a hang: Unknown
//! ```
//!
//! Read it beside `notes/stream.md`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::Stream;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::greeter_server::{Greeter, GreeterServer};
use microkit::proto::greeter::{GreetingsRequest, HelloReply, HelloRequest, NamesSummary};
use microkit::server::RunningServer;
use microkit::{Out, say};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status, Streaming};

/// Every wait in this example is capped, so a broken peer fails the run instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(
    about = "gRPC streams: server-, client- and bidi-streaming, half-close, peers going away"
)]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Serve the streaming Greeter until ctrl-c or SIGTERM.
    Server {
        #[arg(long, default_value = "127.0.0.1:50051")]
        addr: SocketAddr,
    },
    /// Run the three stream shapes and a client that goes away, against a running server.
    Client {
        #[arg(long, default_value = "127.0.0.1:50051")]
        addr: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    let out = Out::stdout();
    let result = match Args::parse().role {
        None => run(&out).await,
        Some(Role::Server { addr }) => serve_until_ctrl_c(addr, &out).await,
        Some(Role::Client { addr }) => client_only(addr, &out).await,
    };
    microkit::report(result)
}

/// The one-process run: a server on a free port, then every client step against it.
async fn run(out: &Out) -> anyhow::Result<()> {
    let greeter = StreamGreeter::new(out);
    let server =
        RunningServer::start(tonic::service::Routes::new(greeter.clone().into_service())).await?;
    let mut client = GreeterClient::new(Channel::from_shared(server.url())?.connect().await?);
    server_streaming(&mut client, out).await?;
    client_streaming(&mut client, out).await?;
    bidirectional(&mut client, out).await?;
    client_goes_away(&mut client, out).await?;
    // Wait (capped) until the server has noticed, so the printed order is fixed.
    tokio::time::timeout(PATIENCE, greeter.client_gone.notified())
        .await
        .context("the server never noticed that its client went away")?;
    server.shutdown().await?;
    server_goes_away(out).await
}

async fn serve_until_ctrl_c(addr: SocketAddr, out: &Out) -> anyhow::Result<()> {
    let greeter = StreamGreeter::new(out);
    // On stderr: stdout holds only results, never addresses.
    eprintln!("serving the streaming Greeter on {addr}; ctrl-c to stop");
    Server::builder()
        .add_service(greeter.into_service())
        .serve_with_shutdown(addr, async {
            let _ = microkit::signal::stop_requested().await;
        })
        .await
        .with_context(|| format!("serving on {addr}"))
}

async fn client_only(addr: SocketAddr, out: &Out) -> anyhow::Result<()> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(PATIENCE)
        .connect()
        .await
        .with_context(|| format!("no stream server at {addr}: start one with `stream server`"))?;
    let mut client = GreeterClient::new(channel);
    server_streaming(&mut client, out).await?;
    client_streaming(&mut client, out).await?;
    bidirectional(&mut client, out).await?;
    client_goes_away(&mut client, out).await
}

// ---- the client side: one function per stream shape ----

async fn server_streaming(client: &mut GreeterClient<Channel>, out: &Out) -> anyhow::Result<()> {
    say!(out, "server streaming: one request, 3 replies");
    let request = GreetingsRequest { name: "ada".into(), count: 3, interval_ms: 0 };
    let mut replies = client.greetings(request).await?.into_inner();
    // `message()` is `Ok(None)` at a clean end, `Err(status)` if the stream broke.
    while let Some(reply) = replies.message().await? {
        say!(out, "  client got {} #{}", reply.message, reply.seq);
    }
    say!(out, "  client saw the end of the stream");
    Ok(())
}

async fn client_streaming(client: &mut GreeterClient<Channel>, out: &Out) -> anyhow::Result<()> {
    say!(out, "client streaming: 3 names, then the client half-closes");
    // The request stream ends after its last item: that end *is* the half-close.
    let names = futures::stream::iter(["ada", "bo", "cy"].map(|n| HelloRequest { name: n.into() }));
    let summary = client.collect_names(names).await?.into_inner();
    say!(out, "  client got the summary: {}", summary.message);
    Ok(())
}

async fn bidirectional(client: &mut GreeterClient<Channel>, out: &Out) -> anyhow::Result<()> {
    say!(out, "bidirectional: one name at a time, in turn");
    // Our sending half is a channel: we decide when to send, and dropping it half-closes.
    let (to_server, outgoing) = mpsc::channel(4);
    let mut replies = client.chat(ReceiverStream::new(outgoing)).await?.into_inner();
    for name in ["ada", "bo"] {
        say!(out, "  client sent {name}");
        to_server.send(HelloRequest { name: name.into() }).await?;
        let reply = replies.message().await?.context("the server closed the chat early")?;
        say!(out, "  client got {}", reply.message);
    }
    say!(out, "  client half-closes");
    drop(to_server);
    // We can still read after half-closing: the server decides when its side ends.
    while let Some(reply) = replies.message().await? {
        say!(out, "  client got a late reply: {}", reply.message);
    }
    say!(out, "  client saw the end of the stream");
    Ok(())
}

async fn client_goes_away(client: &mut GreeterClient<Channel>, out: &Out) -> anyhow::Result<()> {
    say!(out, "the client goes away from an endless stream");
    let endless = GreetingsRequest { name: "ada".into(), count: 0, interval_ms: 5 };
    let mut replies = client.greetings(endless).await?.into_inner();
    for _ in 0..3 {
        replies.message().await?.context("an endless stream ended")?;
    }
    say!(out, "  client read 3 replies, then drops the stream");
    // Dropping the stream cancels the call: tonic resets the HTTP/2 stream.
    drop(replies);
    Ok(())
}

async fn server_goes_away(out: &Out) -> anyhow::Result<()> {
    say!(out, "the server goes away mid-stream");
    let server = microkit::greeter::serve("doomed").await?;
    let mut client = GreeterClient::new(Channel::from_shared(server.url())?.connect().await?);
    let endless = GreetingsRequest { name: "ada".into(), count: 0, interval_ms: 5 };
    let mut replies = client.greetings(endless).await?.into_inner();
    for _ in 0..2 {
        replies.message().await?.context("an endless stream ended")?;
    }
    server.crash().await;
    say!(out, "  client read 2 replies, then the server crashed");
    let end = tokio::time::timeout(PATIENCE, async {
        loop {
            match replies.message().await {
                Ok(Some(_)) => continue, // replies that were already on their way
                other => return other,
            }
        }
    })
    .await
    .context("the client hung after the server went away")?;
    match end {
        Err(status) => say!(out, "  client got an error, not a hang: {:?}", status.code()),
        Ok(_) => say!(out, "  client saw a clean end: wrong, the server never finished"),
    }
    Ok(())
}

// ---- the server side ----

/// A Greeter written for this lesson: it reports what it sees of each stream.
#[derive(Clone)]
struct StreamGreeter {
    out: Out,
    /// Fired when a server-streaming client went away mid-stream.
    client_gone: Arc<Notify>,
}

impl StreamGreeter {
    fn new(out: &Out) -> Self {
        StreamGreeter { out: out.clone(), client_gone: Arc::default() }
    }

    fn into_service(self) -> GreeterServer<Self> {
        GreeterServer::new(self)
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

fn hello(name: &str, seq: u32) -> HelloReply {
    HelloReply { message: format!("hello {name}"), node: "stream".into(), seq }
}

#[tonic::async_trait]
impl Greeter for StreamGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(hello(&request.into_inner().name, 0)))
    }

    type GreetingsStream = ReplyStream;

    async fn greetings(
        &self,
        request: Request<GreetingsRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let GreetingsRequest { name, count, interval_ms } = request.into_inner();
        // A small buffer is the flow control: the producer waits while the client is slow.
        let (tx, rx) = mpsc::channel(2);
        let (out, client_gone) = (self.out.clone(), self.client_gone.clone());
        tokio::spawn(async move {
            let mut seq = 0;
            while count == 0 || seq < count {
                seq += 1;
                // When the client goes away, tonic drops `rx` and this send fails: the
                // producer learns it is working for nobody and stops.
                if tx.send(Ok(hello(&name, seq))).await.is_err() {
                    say!(out, "  server noticed the client went away and stopped producing");
                    client_gone.notify_one();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(interval_ms.into())).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn collect_names(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<NamesSummary>, Status> {
        let mut incoming = request.into_inner();
        let mut names = Vec::new();
        // `Ok(None)` is the client's half-close: no more names will come.
        while let Some(HelloRequest { name }) = incoming.message().await? {
            say!(self.out, "  server got {name}");
            names.push(name);
        }
        say!(self.out, "  server saw the client half-close after {} names", names.len());
        let message = format!("hello {}", names.join(", "));
        Ok(Response::new(NamesSummary { count: names.len() as u32, message }))
    }

    type ChatStream = ReplyStream;

    async fn chat(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(2);
        let out = self.out.clone();
        tokio::spawn(async move {
            let mut seq = 0;
            loop {
                match incoming.message().await {
                    Ok(Some(HelloRequest { name })) => {
                        seq += 1;
                        say!(out, "  server got {name}");
                        if tx.send(Ok(hello(&name, seq))).await.is_err() {
                            return; // the client went away
                        }
                    }
                    Ok(None) => {
                        // Dropping `tx` ends our side: the client sees a clean end.
                        say!(out, "  server saw the client half-close; it ends its side too");
                        return;
                    }
                    Err(status) => {
                        tracing::warn!("chat stream broke: {status}");
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prints_its_golden_output() {
        let out = Out::capture();
        run(&out).await.unwrap();
        microkit::golden::assert_matches("stream", &out.text());
    }

    #[tokio::test]
    async fn a_client_without_a_server_gets_a_clear_error() {
        // A port that was free a moment ago: nothing listens there now.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let error = client_only(addr, &Out::capture()).await.unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.contains(&addr.to_string()) && message.contains("stream server"),
            "{message}"
        );
    }

    #[test]
    fn roles_parse_and_bad_addresses_are_refused() {
        let args = Args::try_parse_from(["stream", "client", "--addr", "127.0.0.1:9"]).unwrap();
        assert!(matches!(args.role, Some(Role::Client { .. })));
        assert!(Args::try_parse_from(["stream", "server", "--addr", "nowhere"]).is_err());
        assert!(Args::try_parse_from(["stream", "dance"]).is_err());
    }
}
