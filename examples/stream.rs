//! # stream: one call, many messages
//!
//! A stream is one gRPC call that carries many messages, one way or both, until each side
//! says it is done. [`StreamGreeter`] serves the three shapes, and the client has a function
//! for each: server streaming (one request, several replies), client streaming (several
//! requests; the client half-closes, only then the server answers once) and bidirectional (in
//! turn; the client half-closes, the server sees the end and closes its side). Then the two
//! ways a stream ends badly: the client goes away (the server notices and stops producing),
//! and the server goes away (the client gets a clear status, not a hang).
//!
//! go-micro's example never half-closed (said "I am done sending" while still reading), and
//! nothing showed what a server does when its client disappears.
//!
//! Run it in one process, or as two processes in two terminals:
//!
//! ```text
//! cargo run --example stream
//! cargo run --example stream -- server --addr 127.0.0.1:50051
//! cargo run --example stream -- client --addr 127.0.0.1:50051
//! ```
//!
//! Prints `tests/golden/stream.txt`; explained in `notes/stream.md`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::Stream;
use microkit::PATIENCE;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::greeter_server::{Greeter, GreeterServer};
use microkit::proto::greeter::{GreetingsRequest, HelloReply, HelloRequest, NamesSummary};
use microkit::server::RunningServer;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

// ---- the server side: what it sees of each stream ----

/// A Greeter written for this lesson: it says what it sees of each stream, and keeps count.
#[derive(Clone)]
struct StreamGreeter {
    seen: watch::Sender<Seen>,
}

/// What the server saw of its streams: what the one-process run waits on, and the tally the
/// server role prints when it stops.
#[derive(Clone, Debug, Default, PartialEq)]
struct Seen {
    /// Names read from client-streaming and bidirectional calls, in order.
    names: Vec<String>,
    /// Request streams the client half-closed.
    half_closes: u32,
    /// Reply streams whose client went away mid-stream.
    clients_gone: u32,
}

impl StreamGreeter {
    fn new() -> Self {
        StreamGreeter { seen: watch::Sender::new(Seen::default()) }
    }

    fn into_service(self) -> GreeterServer<Self> {
        GreeterServer::new(self)
    }

    fn got(&self, name: String) {
        println!("  server got {name}");
        self.seen.send_modify(|seen| seen.names.push(name));
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
        let seen = self.seen.clone();
        tokio::spawn(async move {
            let mut seq = 0;
            while count == 0 || seq < count {
                seq += 1;
                // When the client goes away, tonic drops `rx` and this send fails: the
                // producer learns it is working for nobody and stops.
                if tx.send(Ok(hello(&name, seq))).await.is_err() {
                    println!("  server noticed the client went away and stopped producing");
                    seen.send_modify(|seen| seen.clients_gone += 1);
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
            self.got(name.clone());
            names.push(name);
        }
        println!("  server saw the client half-close after {} names", names.len());
        self.seen.send_modify(|seen| seen.half_closes += 1);
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
        let greeter = self.clone();
        tokio::spawn(async move {
            let mut seq = 0;
            loop {
                match incoming.message().await {
                    Ok(Some(HelloRequest { name })) => {
                        seq += 1;
                        greeter.got(name.clone());
                        if tx.send(Ok(hello(&name, seq))).await.is_err() {
                            return; // the client went away
                        }
                    }
                    Ok(None) => {
                        // Dropping `tx` ends our side: the client sees a clean end.
                        println!("  server saw the client half-close; it ends its side too");
                        greeter.seen.send_modify(|seen| seen.half_closes += 1);
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

// ---- the client side: one function per stream shape ----

/// One request, the replies as they come, until the server's clean end.
async fn server_streaming(client: &mut GreeterClient<Channel>) -> anyhow::Result<Vec<HelloReply>> {
    println!("server streaming: one request, 3 replies");
    let request = GreetingsRequest { name: "ada".into(), count: 3, interval_ms: 0 };
    let mut stream = client.greetings(request).await?.into_inner();
    let mut replies = Vec::new();
    // `message()` is `Ok(None)` at a clean end, `Err(status)` if the stream broke.
    while let Some(reply) = stream.message().await? {
        println!("  client got {} #{}", reply.message, reply.seq);
        replies.push(reply);
    }
    println!("  client saw the end of the stream");
    Ok(replies)
}

/// Several names, then the half-close; the server's one answer comes only after it.
async fn client_streaming(client: &mut GreeterClient<Channel>) -> anyhow::Result<NamesSummary> {
    println!("client streaming: 3 names, then the client half-closes");
    // The request stream ends after its last item: that end *is* the half-close.
    let names = futures::stream::iter(["ada", "bo", "cy"].map(|n| HelloRequest { name: n.into() }));
    let summary = client.collect_names(names).await?.into_inner();
    println!("  client got the summary: {}", summary.message);
    Ok(summary)
}

/// A name and its reply, in turn; then the half-close, and reading on until the server's end.
async fn bidirectional(client: &mut GreeterClient<Channel>) -> anyhow::Result<Vec<String>> {
    println!("bidirectional: one name at a time, in turn");
    // Our sending half is a channel: we decide when to send, and dropping it half-closes.
    let (to_server, outgoing) = mpsc::channel(4);
    let mut stream = client.chat(ReceiverStream::new(outgoing)).await?.into_inner();
    let mut replies = Vec::new();
    for name in ["ada", "bo"] {
        println!("  client sent {name}");
        to_server.send(HelloRequest { name: name.into() }).await?;
        let reply = stream.message().await?.context("the server closed the chat early")?;
        println!("  client got {}", reply.message);
        replies.push(reply.message);
    }
    println!("  client half-closes");
    drop(to_server);
    // We can still read after half-closing: the server decides when its side ends.
    while let Some(reply) = stream.message().await? {
        println!("  client got a late reply: {}", reply.message);
        replies.push(reply.message);
    }
    println!("  client saw the end of the stream");
    Ok(replies)
}

/// Reads a few replies of an endless stream, then drops it: the call is cancelled.
async fn client_goes_away(client: &mut GreeterClient<Channel>) -> anyhow::Result<()> {
    println!("the client goes away from an endless stream");
    let endless = GreetingsRequest { name: "ada".into(), count: 0, interval_ms: 5 };
    let mut replies = client.greetings(endless).await?.into_inner();
    for _ in 0..3 {
        replies.message().await?.context("an endless stream ended")?;
    }
    println!("  client read 3 replies, then drops the stream");
    // Dropping the stream cancels the call: tonic resets the HTTP/2 stream.
    drop(replies);
    Ok(())
}

/// A server that dies mid-stream: the status the client gets instead of a clean end
/// (`None` would be wrong: the server never finished).
async fn server_goes_away() -> anyhow::Result<Option<Code>> {
    println!("the server goes away mid-stream");
    let server = microkit::greeter::serve("doomed").await?;
    let mut client = GreeterClient::new(Channel::from_shared(server.url())?.connect().await?);
    let endless = GreetingsRequest { name: "ada".into(), count: 0, interval_ms: 5 };
    let mut replies = client.greetings(endless).await?.into_inner();
    for _ in 0..2 {
        replies.message().await?.context("an endless stream ended")?;
    }
    server.crash().await;
    println!("  client read 2 replies, then the server crashed");
    let end = tokio::time::timeout(PATIENCE, async {
        loop {
            match replies.message().await {
                Ok(Some(_)) => continue, // replies that were already on their way
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .context("the client hung after the server went away")?;
    match end {
        Some(code) => println!("  client got an error, not a hang: {code:?}"),
        None => println!("  client saw a clean end: wrong, the server never finished"),
    }
    Ok(end)
}

// ---- the story: every shape against one server, then a server that dies ----

/// The steps the client role runs too: the three shapes, then a client that goes away.
async fn client_steps(client: &mut GreeterClient<Channel>) -> anyhow::Result<()> {
    server_streaming(client).await?;
    client_streaming(client).await?;
    bidirectional(client).await?;
    client_goes_away(client).await
}

/// The one-process run: a server on a free port, every client step against it, then a
/// server that crashes mid-stream.
async fn run() -> anyhow::Result<()> {
    let greeter = StreamGreeter::new();
    let mut seen = greeter.seen.subscribe();
    let server = RunningServer::start(tonic::service::Routes::new(greeter.into_service())).await?;
    let mut client = GreeterClient::new(Channel::from_shared(server.url())?.connect().await?);
    client_steps(&mut client).await?;
    // Wait (capped) until the server has noticed, so the printed order is fixed.
    tokio::time::timeout(PATIENCE, seen.wait_for(|seen| seen.clients_gone > 0))
        .await
        .context("the server never noticed that its client went away")??;
    server.shutdown().await?;
    server_goes_away().await.map(drop)
}

// ---- the roles, and the command line ----

/// How long the server role lets open streams finish once asked to stop: an endless stream
/// would otherwise keep it running for ever.
const DRAIN: Duration = Duration::from_secs(5);

/// The `server` role: serve until a stop request, drain the streams in flight (for at most
/// [`DRAIN`]), print what it saw, exit 0.
async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let greeter = StreamGreeter::new();
    let seen = greeter.seen.subscribe();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let addr = listener.local_addr()?; // port 0 asked for any free port: say which
    // Armed before the ready line: a signal that follows it is a stop request, not a kill.
    let stop_requested = microkit::signal::stop_requested();
    // On stderr: stdout holds only results, never addresses.
    eprintln!("serving the streaming Greeter on {addr}; ctrl-c or SIGTERM to stop");
    let stop = CancellationToken::new();
    let health = microkit::health::Health::new(&[microkit::greeter::GREETER]);
    let serving = tokio::spawn(
        microkit::server::builder()
            .add_service(greeter.into_service())
            .add_service(health.service())
            .add_service(microkit::health::reflection())
            .serve_with_incoming_shutdown(
                microkit::server::Incoming::from(listener),
                stop.clone().cancelled_owned(),
            ),
    );

    let signal = stop_requested.await?;
    microkit::signal::exit_on_next();
    // NOT_SERVING first, then end the Watch streams, which would hold the drain open.
    health.set_serving(false).await;
    health.close();
    eprintln!("{signal}: letting open streams finish, for at most {DRAIN:?}");
    stop.cancel();
    match tokio::time::timeout(DRAIN, serving).await {
        Ok(served) => served?.with_context(|| format!("serving on {addr}"))?,
        Err(_) => tracing::warn!("streams still open after {DRAIN:?} are cut"),
    }
    let seen = seen.borrow();
    println!(
        "server stopped: names read {}, half-closes seen {}, clients gone mid-stream {}",
        seen.names.len(),
        seen.half_closes,
        seen.clients_gone
    );
    Ok(())
}

/// The `client` role: every client step against a server that is already running.
async fn client(addr: SocketAddr) -> anyhow::Result<()> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(PATIENCE)
        .connect()
        .await
        .with_context(|| format!("no stream server at {addr}: start one with `stream server`"))?;
    client_steps(&mut GreeterClient::new(channel)).await
}

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
    /// Serve the streaming Greeter until ctrl-c, SIGTERM or SIGHUP.
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
    microkit::report(match Args::parse().role {
        None => run().await,
        Some(Role::Server { addr }) => serve(addr).await,
        Some(Role::Client { addr }) => client(addr).await,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A [`StreamGreeter`] on a free port, what it saw, and a client of it.
    async fn start() -> (RunningServer, watch::Receiver<Seen>, GreeterClient<Channel>) {
        let greeter = StreamGreeter::new();
        let seen = greeter.seen.subscribe();
        let routes = tonic::service::Routes::new(greeter.into_service());
        let server = RunningServer::start(routes).await.unwrap();
        let client = GreeterClient::connect(server.url()).await.unwrap();
        (server, seen, client)
    }

    #[tokio::test]
    async fn a_server_stream_delivers_every_reply_in_order_then_ends() {
        let (server, _, mut client) = start().await;
        let replies = server_streaming(&mut client).await.unwrap();
        let got: Vec<(&str, u32)> = replies.iter().map(|r| (r.message.as_str(), r.seq)).collect();
        assert_eq!(got, [("hello ada", 1), ("hello ada", 2), ("hello ada", 3)]);
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_client_stream_is_answered_once_after_the_half_close() {
        let (server, seen, mut client) = start().await;
        let summary = client_streaming(&mut client).await.unwrap();
        assert_eq!((summary.count, summary.message.as_str()), (3, "hello ada, bo, cy"));
        assert_eq!(
            *seen.borrow(),
            Seen {
                names: vec!["ada".into(), "bo".into(), "cy".into()],
                half_closes: 1,
                clients_gone: 0
            }
        );
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_bidi_stream_answers_in_turn_and_ends_after_the_half_close() {
        let (server, seen, mut client) = start().await;
        assert_eq!(bidirectional(&mut client).await.unwrap(), ["hello ada", "hello bo"]);
        assert_eq!(seen.borrow().names, ["ada", "bo"]);
        assert_eq!(seen.borrow().half_closes, 1);
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn the_server_notices_a_client_that_went_away() {
        let (server, mut seen, mut client) = start().await;
        client_goes_away(&mut client).await.unwrap();
        let noticed = tokio::time::timeout(PATIENCE, seen.wait_for(|s| s.clients_gone == 1)).await;
        assert!(noticed.is_ok(), "the producer kept working for nobody");
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_server_that_dies_mid_stream_is_an_error_not_a_clean_end() {
        assert_eq!(server_goes_away().await.unwrap(), Some(Code::Unknown));
    }

    #[tokio::test]
    async fn a_client_without_a_server_gets_a_clear_error() {
        // A port that was free a moment ago: nothing listens there now.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let message = format!("{:#}", client(addr).await.unwrap_err());
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
