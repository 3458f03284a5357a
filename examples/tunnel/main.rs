//! # tunnel: many connections inside one link
//!
//! go-micro's tunnel joined two nodes and relayed messages on named channels; its example
//! was a two-line README, and a reader could only guess that a tunnel "feels like a proxy".
//! Here node-a and node-b are joined by one TCP link. node-b serves the Greeter behind the
//! channel `greeter`; node-a's gRPC clients reach it by that name, each client on its own
//! session, all sessions multiplexed over the one link (frames: `frame.rs`; the multiplexer:
//! `link.rs`). The tunnel never looks inside a session: it carries bytes, so HTTP/2 and
//! gRPC run through it unchanged. A proxy, by contrast, reads each request.
//!
//! Run it:
//!
//! ```text
//! cargo run --example tunnel
//! # or as two processes, in two terminals:
//! cargo run --example tunnel -- node-b --listen 127.0.0.1:7000
//! cargo run --example tunnel -- node-a --connect 127.0.0.1:7000 --names ada,bo
//! ```
//!
//! It prints (the golden file `tests/golden/tunnel.txt` holds exactly this):
//!
//! ```text
//! node-b serves the Greeter on channel "greeter"
//! 4 clients on node-a call it at once:
//!   hello ada, answered by node-b
//!   hello bo, answered by node-b
//!   hello cy, answered by node-b
//!   hello dee, answered by node-b
//! 4 sessions over 1 link
//! open channel "billing": refused by the other node: node-b has no channel named "billing"
//! link cut with 3 streams open: 3 failed (tunnel link lost), 0 hung
//! the same client calls again: hello ada, over link 2
//! a stranger sends "GET / HTTP/1.1" to node-b: link closed (unknown frame kind 0x47)
//! ```
//!
//! Read it beside `notes/tunnel.md`.

mod frame;
mod link;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use microkit::greeter::HelloGreeter;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::{GreetingsRequest, HelloRequest};
use microkit::{Out, say};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::AbortOnDropHandle;
use tonic::transport::{Channel, Endpoint, Server};

use link::{Side, Tunnel};

/// Every wait in this example is capped: a broken tunnel must fail a call, not hang it.
const PATIENCE: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(about = "A tunnel: gRPC calls multiplexed over one link between two nodes")]
struct Args {
    /// Who node-a's clients greet, one client (and one session) each.
    #[arg(long, global = true, value_delimiter = ',', default_value = "ada,bo,cy,dee", value_parser = name)]
    names: Vec<String>,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Serve the Greeter on channel "greeter" to every node that links up, until ctrl-c.
    NodeB {
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: SocketAddr,
    },
    /// Link up with node-b and call its Greeter through the tunnel, one session per name.
    NodeA {
        #[arg(long, default_value = "127.0.0.1:7000")]
        connect: SocketAddr,
    },
}

fn name(text: &str) -> Result<String, String> {
    match text.trim() {
        "" => Err("a name may not be empty".into()),
        name => Ok(name.to_owned()),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse(), &Out::stdout()).await)
}

async fn run(args: Args, out: &Out) -> anyhow::Result<()> {
    match args.role {
        None => demo(&args.names, out).await,
        Some(Role::NodeB { listen }) => {
            let node_b = NodeB::start("node-b", listen).await?;
            say!(out, "node-b listens for links on {}; ctrl-c stops it", node_b.addr);
            tokio::signal::ctrl_c().await?;
            Ok(())
        }
        Some(Role::NodeA { connect }) => {
            let node_a = Arc::new(NodeA::new("node-a", connect));
            node_a.link().await.with_context(|| {
                format!(
                    "cannot link up with node-b at {connect}: is `tunnel node-b` running there?"
                )
            })?;
            for line in call_all(&node_a, &args.names).await? {
                say!(out, "  {line}");
            }
            Ok(())
        }
    }
}

/// Everything in one process: node-b and node-a, joined by a real TCP link on loopback.
async fn demo(names: &[String], out: &Out) -> anyhow::Result<()> {
    let node_b = NodeB::start("node-b", "127.0.0.1:0".parse()?).await?;
    say!(out, "node-b serves the Greeter on channel \"greeter\"");
    let node_a = Arc::new(NodeA::new("node-a", node_b.addr));

    say!(out, "{} clients on node-a call it at once:", names.len());
    for line in call_all(&node_a, names).await? {
        say!(out, "  {line}");
    }
    let link = node_a.link().await?;
    say!(out, "{} sessions over {} link", link.sessions_opened(), node_a.links_dialed());

    // A channel nobody serves is refused by the far node, by name: no hang, no guess.
    match link.open("billing").await {
        Ok(_) => anyhow::bail!("node-b accepted a channel it does not serve"),
        Err(error) => say!(out, "open channel \"billing\": {error}"),
    }

    let (causes, hung) = cut_link_mid_call(&node_a, 3).await?;
    let mut distinct = causes.clone();
    distinct.dedup();
    say!(
        out,
        "link cut with 3 streams open: {} failed ({}), {hung} hung",
        causes.len(),
        distinct.join("; ")
    );

    // A tonic Channel reconnects by calling its connector again, which dials a new link.
    let mut client = GreeterClient::new(node_a.channel("greeter")?);
    let reply = tokio::time::timeout(PATIENCE, client.say_hello(hello("ada")))
        .await
        .context("calling again after the cut")??;
    say!(
        out,
        "the same client calls again: {}, over link {}",
        reply.get_ref().message,
        node_a.links_dialed()
    );

    let reason = stranger_speaks_http(&node_b).await?;
    say!(out, "a stranger sends \"GET / HTTP/1.1\" to node-b: link closed ({reason})");
    Ok(())
}

/// One client per name, all calling at once, each over its own session. Returns the
/// replies sorted, since concurrent calls finish in any order.
async fn call_all(node_a: &Arc<NodeA>, names: &[String]) -> anyhow::Result<Vec<String>> {
    let calls = names.iter().map(|name| {
        let node_a = Arc::clone(node_a);
        let name = name.clone();
        async move {
            // Each client has its own Channel: one HTTP/2 connection, so one session.
            let mut client = GreeterClient::new(node_a.channel("greeter")?);
            let reply = tokio::time::timeout(PATIENCE, client.say_hello(hello(&name)))
                .await
                .with_context(|| format!("calling for {name} timed out"))??
                .into_inner();
            anyhow::Ok(format!("{}, answered by {}", reply.message, reply.node))
        }
    });
    let mut lines = futures::future::try_join_all(calls).await?;
    lines.sort();
    Ok(lines)
}

/// Opens `streams` endless server streams, each on its own session, then cuts the link
/// under them. Returns the root cause of each stream's error, sorted, and how many hung
/// (none should).
async fn cut_link_mid_call(
    node_a: &Arc<NodeA>,
    streams: usize,
) -> anyhow::Result<(Vec<String>, usize)> {
    let mut open = Vec::new();
    for _ in 0..streams {
        let mut client = GreeterClient::new(node_a.channel("greeter")?);
        let endless = GreetingsRequest { name: "ada".into(), count: 0, interval_ms: 10 };
        let mut replies = client.greetings(endless).await?.into_inner();
        // One reply in hand: the stream is really open, mid-call.
        tokio::time::timeout(PATIENCE, replies.message()).await.context("first reply")??;
        open.push(replies);
    }
    node_a.link().await?.cut();

    let (mut failed, mut hung) = (Vec::new(), 0);
    for mut replies in open {
        let end = tokio::time::timeout(PATIENCE, async {
            loop {
                match replies.message().await {
                    Ok(Some(_)) => continue, // replies already on their way
                    Ok(None) => return None,
                    Err(status) => return Some(status),
                }
            }
        });
        match end.await {
            Ok(Some(status)) => {
                tracing::info!(code = ?status.code(), message = status.message(), "stream failed");
                failed.push(root_cause(&status));
            }
            Ok(None) => anyhow::bail!("a stream cut by the link ended as if complete"),
            Err(_) => hung += 1,
        }
    }
    failed.sort();
    Ok((failed, hung))
}

/// Bytes that are not frames end the link at once, with the reason; node-b lives on.
async fn stranger_speaks_http(node_b: &NodeB) -> anyhow::Result<String> {
    let mut stranger = TcpStream::connect(node_b.addr).await?;
    stranger.write_all(b"GET / HTTP/1.1\r\nHost: node-b\r\n\r\n").await?;
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, stranger.read_to_end(&mut rest))
        .await
        .context("node-b kept a link full of garbage open")??;
    let link = node_b.links.lock().unwrap().last().cloned().context("no link recorded")?;
    Ok(link.end_reason().unwrap_or_default())
}

/// The innermost error under a status: what actually went wrong, below gRPC and HTTP/2.
fn root_cause(status: &tonic::Status) -> String {
    let mut cause: &dyn std::error::Error = status;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

fn hello(name: &str) -> HelloRequest {
    HelloRequest { name: name.to_owned() }
}

/// node-b: accepts links, and serves the Greeter to sessions opened on channel "greeter".
struct NodeB {
    addr: SocketAddr,
    links: Arc<std::sync::Mutex<Vec<Tunnel>>>,
    _tasks: [AbortOnDropHandle<()>; 2],
}

impl NodeB {
    async fn start(name: &str, listen: SocketAddr) -> anyhow::Result<NodeB> {
        let listener =
            TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;

        // One gRPC server for every session on every link: sessions are its connections.
        let (arrivals, sessions) = mpsc::channel(16);
        let greeter = HelloGreeter::new(name).into_service();
        let incoming = ReceiverStream::new(sessions).map(Ok::<_, std::io::Error>);
        let server = tokio::spawn(async move {
            if let Err(error) =
                Server::builder().add_service(greeter).serve_with_incoming(incoming).await
            {
                tracing::error!(%error, "the greeter server stopped");
            }
        });

        let links = Arc::new(std::sync::Mutex::new(Vec::new()));
        let name = name.to_owned();
        let accepted = Arc::clone(&links);
        let accept = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                tracing::info!(%peer, "a node linked up");
                let services = HashMap::from([("greeter".to_owned(), arrivals.clone())]);
                let tunnel = Tunnel::start(&name, stream, Side::Listener, services);
                let mut links = accepted.lock().unwrap();
                links.retain(Tunnel::is_up); // forget links that have ended
                links.push(tunnel);
            }
        });
        Ok(NodeB {
            addr,
            links,
            _tasks: [AbortOnDropHandle::new(server), AbortOnDropHandle::new(accept)],
        })
    }
}

/// node-a: dials node-b when it needs a link, and again when the link was lost.
struct NodeA {
    name: String,
    peer: SocketAddr,
    link: tokio::sync::Mutex<Option<Tunnel>>,
    dialed: AtomicUsize,
}

impl NodeA {
    fn new(name: &str, peer: SocketAddr) -> Self {
        NodeA { name: name.to_owned(), peer, link: Default::default(), dialed: AtomicUsize::new(0) }
    }

    /// The live link, dialing a new one if there is none or the last one is down.
    async fn link(&self) -> std::io::Result<Tunnel> {
        let mut link = self.link.lock().await;
        if let Some(tunnel) = link.as_ref().filter(|t| t.is_up()) {
            return Ok(tunnel.clone());
        }
        let stream = tokio::time::timeout(PATIENCE, TcpStream::connect(self.peer)).await??;
        stream.set_nodelay(true)?;
        let tunnel = Tunnel::start(&self.name, stream, Side::Dialer, HashMap::new());
        self.dialed.fetch_add(1, Ordering::Relaxed);
        *link = Some(tunnel.clone());
        Ok(tunnel)
    }

    fn links_dialed(&self) -> usize {
        self.dialed.load(Ordering::Relaxed)
    }

    /// A gRPC channel whose connections are tunnel sessions to `service`: the connector
    /// tonic calls to connect (and to reconnect) opens a session instead of a socket.
    fn channel(self: &Arc<Self>, service: &'static str) -> anyhow::Result<Channel> {
        let node_a = Arc::clone(self);
        let connector = tower::service_fn(move |_uri| {
            let node_a = Arc::clone(&node_a);
            async move {
                let session = node_a.link().await?.open(service).await?;
                Ok::<_, std::io::Error>(TokioIo::new(session))
            }
        });
        // The URI is only a label here: the connector decides where bytes go.
        let endpoint = Endpoint::from_shared(format!("http://{service}.tunnel"))?;
        Ok(endpoint.connect_timeout(PATIENCE).connect_with_connector_lazy(connector))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[tokio::test]
    async fn prints_its_golden_output() {
        let out = Out::capture();
        run(Args::parse_from(["tunnel"]), &out).await.unwrap();
        microkit::golden::assert_matches("tunnel", &out.text());
    }

    #[tokio::test]
    async fn many_concurrent_calls_share_one_link_one_session_each() {
        let node_b = NodeB::start("node-b", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let node_a = Arc::new(NodeA::new("node-a", node_b.addr));
        let many: Vec<String> = (0..16).map(|i| format!("caller-{i:02}")).collect();
        let replies = call_all(&node_a, &many).await.unwrap();
        assert_eq!(replies.len(), 16);
        assert!(replies.iter().all(|r| r.ends_with("answered by node-b")));
        assert_eq!(node_a.links_dialed(), 1);
        assert_eq!(node_a.link().await.unwrap().sessions_opened(), 16);
        assert_eq!(node_b.links.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_cut_link_fails_every_open_stream_and_the_next_call_relinks() {
        let node_b = NodeB::start("node-b", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let node_a = Arc::new(NodeA::new("node-a", node_b.addr));
        let (causes, hung) = cut_link_mid_call(&node_a, 4).await.unwrap();
        assert_eq!((causes, hung), (vec!["tunnel link lost".to_owned(); 4], 0));
        assert_eq!(
            call_all(&node_a, &names(&["bo"])).await.unwrap(),
            ["hello bo, answered by node-b"]
        );
        assert_eq!(node_a.links_dialed(), 2);
    }

    #[tokio::test]
    async fn a_session_on_a_lost_link_reads_an_error_not_an_end() {
        use tokio::io::AsyncReadExt;
        let node_b = NodeB::start("node-b", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let node_a = NodeA::new("node-a", node_b.addr);
        let link = node_a.link().await.unwrap();
        let mut session = link.open("greeter").await.unwrap();
        // node-b's side of the link goes away (as when its process dies).
        node_b.links.lock().unwrap()[0].cut();
        // (The gRPC server on the far side may already have sent its HTTP/2 greeting.)
        let mut buffer = Vec::new();
        let read = tokio::time::timeout(PATIENCE, session.read_to_end(&mut buffer)).await.unwrap();
        assert_eq!(read.unwrap_err().to_string(), "tunnel link lost");
        assert!(matches!(link.open("greeter").await, Err(link::TunnelError::LinkDown)));
    }

    #[tokio::test]
    async fn sessions_carry_bytes_both_ways_and_close_cleanly() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A bare echo service on channel "echo": the tunnel does not care what runs in it.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (arrivals, mut sessions) = mpsc::channel(1);
        let services = HashMap::from([("echo".to_owned(), arrivals)]);
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let _tunnel = Tunnel::start("b", stream, Side::Listener, services);
            let mut session: link::Session = sessions.recv().await.unwrap();
            let mut got = Vec::new();
            session.read_to_end(&mut got).await.unwrap();
            session.write_all(&got).await.unwrap();
            session.shutdown().await.unwrap();
        });
        let link = Tunnel::start(
            "a",
            TcpStream::connect(addr).await.unwrap(),
            Side::Dialer,
            HashMap::new(),
        );
        let mut session = link.open("echo").await.unwrap();
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect(); // several frames
        session.write_all(&big).await.unwrap();
        session.shutdown().await.unwrap(); // half-close: the echo sees the end and answers
        let mut back = Vec::new();
        tokio::time::timeout(PATIENCE, session.read_to_end(&mut back)).await.unwrap().unwrap();
        assert_eq!(back, big);
    }

    #[tokio::test]
    async fn a_peer_speaking_raw_frames_gets_answers_and_cannot_reuse_a_session_id() {
        use futures::SinkExt;
        use tokio_util::codec::Framed;
        let node_b = NodeB::start("node-b", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let tcp = TcpStream::connect(node_b.addr).await.unwrap();
        let mut link = Framed::new(tcp, frame::FrameCodec);
        let open = frame::Frame::Open { session: 1, channel: "greeter".into() };
        let mut answers = Vec::new();
        for _ in 0..2 {
            link.send(open.clone()).await.unwrap();
            // The accepted session's gRPC server may speak first: skip its data.
            loop {
                let frame = tokio::time::timeout(PATIENCE, link.next()).await.unwrap();
                match frame.unwrap().unwrap() {
                    frame::Frame::Data { .. } => continue,
                    other => break answers.push(other),
                }
            }
        }
        assert_eq!(answers[0], frame::Frame::Accept { session: 1 });
        let refusal = answers.pop().unwrap();
        let reason = "session 1 is already open".to_owned();
        assert_eq!(refusal, frame::Frame::Refuse { session: 1, reason });
    }

    #[test]
    fn an_empty_name_is_refused() {
        let error = Args::try_parse_from(["tunnel", "--names", "ada,,bo"]).unwrap_err().to_string();
        assert!(error.contains("a name may not be empty"), "{error}");
    }
}
