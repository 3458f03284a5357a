//! The three shapes of a stream, on both sides: what the server sees of each, and what the
//! client does; then the two ways a stream ends badly.

use std::time::Duration;

use anyhow::Context;
use microkit::PATIENCE;
use microkit::greeter::ReplyStream;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::greeter_server::{Greeter, GreeterServer};
use microkit::proto::greeter::{GreetingsRequest, HelloReply, HelloRequest, NamesSummary};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::bounds::{deadline, endpoint};

// ---- the server side: what it sees of each stream ----

/// A Greeter written for this lesson: it says what it sees of each stream, and keeps count.
#[derive(Clone)]
pub struct StreamGreeter {
    pub seen: watch::Sender<Seen>,
}

/// What the server saw of its streams: what the one-process run waits on, and the tally the
/// server role prints when it stops.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Seen {
    /// Names read from client-streaming and bidirectional calls, in order.
    pub names: Vec<String>,
    /// Request streams the client half-closed.
    pub half_closes: u32,
    /// Reply streams whose client went away mid-stream.
    pub clients_gone: u32,
}

impl StreamGreeter {
    pub fn new() -> Self {
        StreamGreeter { seen: watch::Sender::new(Seen::default()) }
    }

    pub fn into_service(self) -> GreeterServer<Self> {
        GreeterServer::new(self)
    }

    fn got(&self, name: String) {
        println!("  server got {name}");
        self.seen.send_modify(|seen| seen.names.push(name));
    }
}

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
pub async fn server_streaming(
    client: &mut GreeterClient<Channel>,
) -> anyhow::Result<Vec<HelloReply>> {
    println!("server streaming: one request, 3 replies");
    let request = GreetingsRequest { name: "ada".into(), count: 3, interval_ms: 0 };
    let mut stream = client.greetings(deadline(request)).await?.into_inner();
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
pub async fn client_streaming(client: &mut GreeterClient<Channel>) -> anyhow::Result<NamesSummary> {
    println!("client streaming: 3 names, then the client half-closes");
    // The request stream ends after its last item: that end *is* the half-close.
    let names = futures::stream::iter(["ada", "bo", "cy"].map(|n| HelloRequest { name: n.into() }));
    let summary = client.collect_names(deadline(names)).await?.into_inner();
    println!("  client got the summary: {}", summary.message);
    Ok(summary)
}

/// A name and its reply, in turn; then the half-close, and reading on until the server's end.
pub async fn bidirectional(client: &mut GreeterClient<Channel>) -> anyhow::Result<Vec<String>> {
    println!("bidirectional: one name at a time, in turn");
    // Our sending half is a channel: we decide when to send, and dropping it half-closes.
    let (to_server, outgoing) = mpsc::channel(4);
    let mut stream = client.chat(deadline(ReceiverStream::new(outgoing))).await?.into_inner();
    let mut replies = Vec::new();
    for name in ["ada", "bo"] {
        println!("  client sent {name}");
        to_server.send(HelloRequest { name: name.into() }).await?;
        let reply = stream.message().await?.context("the server closed the chat early")?;
        println!("  client got {}", reply.message);
        replies.push(reply.message);
    }
    println!("  client half-closes");
    // exercise begins: half-close: end the client's sending half, and only it
    drop(to_server);
    // exercise ends
    // We can still read after half-closing: the server decides when its side ends.
    while let Some(reply) = stream.message().await? {
        println!("  client got a late reply: {}", reply.message);
        replies.push(reply.message);
    }
    println!("  client saw the end of the stream");
    Ok(replies)
}

/// Reads a few replies of an endless stream, then drops it: the call is cancelled.
pub async fn client_goes_away(client: &mut GreeterClient<Channel>) -> anyhow::Result<()> {
    println!("the client goes away from an endless stream");
    let endless = GreetingsRequest { name: "ada".into(), count: 0, interval_ms: 5 };
    let mut replies = client.greetings(deadline(endless)).await?.into_inner();
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
pub async fn server_goes_away() -> anyhow::Result<Option<Code>> {
    println!("the server goes away mid-stream");
    let server = microkit::greeter::serve("doomed").await?;
    let mut client = GreeterClient::new(endpoint(server.url())?.connect().await?);
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
