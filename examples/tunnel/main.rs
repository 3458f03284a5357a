//! # tunnel: many connections inside one link
//!
//! A tunnel joins two nodes with one link and carries many sessions inside it, each a byte
//! stream of its own, opened by the name of a channel the far node serves. The lesson is in
//! `frame.rs` (the wire format: every byte belongs to a frame that names its session) and
//! `link.rs` (the multiplexer that turns frames back into sessions, each one a byte stream
//! in `session.rs`). The tunnel never looks inside a session, so HTTP/2 and gRPC run through
//! it unchanged; a proxy reads each request. Here node-b serves the Greeter on channel
//! `greeter`, and node-a's gRPC clients reach it by that name, one session each, one link.
//!
//! go-micro's tunnel relayed messages on named channels, but its example was a two-line
//! README: a reader could only guess that a tunnel "feels like a proxy".
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
//! Prints `tests/golden/tunnel.txt`; explained in `notes/tunnel.md`.

mod deadline;
mod frame;
mod link;
mod roles;
mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use microkit::PATIENCE;
use microkit::greeter::HelloGreeter;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::{GreetingsRequest, HelloRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tonic::transport::{Channel, Endpoint, Server};

use link::{Side, Tunnel};

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
}

/// node-b: accepts links, and serves the Greeter to sessions opened on channel "greeter".
struct NodeB {
    addr: SocketAddr,
    links: Arc<Mutex<Vec<Tunnel>>>,
    /// Links accepted and sessions handed to the Greeter, over node-b's life.
    linked: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    /// Asks the gRPC server to finish the calls in flight and stop.
    drain: CancellationToken,
    server: AbortOnDropHandle<()>,
    accept: AbortOnDropHandle<()>,
}

/// What a node-b that was asked to stop had done.
#[derive(Debug, PartialEq, Eq)]
struct NodeBTally {
    links: usize,
    sessions: usize,
    /// Every call in flight finished before the deadline.
    drained: bool,
}

impl NodeB {
    async fn start(name: &str, listen: SocketAddr) -> anyhow::Result<NodeB> {
        let listener =
            TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;

        // One gRPC server for every session on every link: sessions are its connections.
        let (arrivals, sessions) = mpsc::channel(16);
        let served = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&served);
        let incoming = ReceiverStream::new(sessions).map(move |session| {
            counted.fetch_add(1, Ordering::Relaxed);
            Ok::<_, std::io::Error>(session)
        });
        let greeter = HelloGreeter::new(name).into_service();
        let drain = CancellationToken::new();
        let stopped = drain.clone().cancelled_owned();
        let server = tokio::spawn(async move {
            // Health and reflection answer through the tunnel too.
            let health = microkit::health::Health::new(&[microkit::greeter::GREETER]);
            let server = Server::builder()
                .add_service(greeter)
                .add_service(health.service())
                .add_service(microkit::health::reflection());
            if let Err(error) = server.serve_with_incoming_shutdown(incoming, stopped).await {
                tracing::error!(%error, "the greeter server stopped");
            }
        });

        let links = Arc::new(Mutex::new(Vec::new()));
        let linked = Arc::new(AtomicUsize::new(0));
        let (name, accepted, count) = (name.to_owned(), Arc::clone(&links), Arc::clone(&linked));
        // `Incoming` pauses after a failed accept (the file table full) and logs it, at most
        // every 5 s, then tries again: the listener outlives the limit. A link is no HTTP,
        // so only its TCP stream is kept; `FrameDeadline` bounds a stranger's silence.
        let mut incoming = microkit::server::Incoming::from(listener);
        let accept = tokio::spawn(async move {
            while let Some(connection) = incoming.next().await {
                let Ok(connection) = connection else { continue }; // never: it logs and waits
                let stream = connection.into_stream();
                let peer = stream.peer_addr().map(|peer| peer.to_string()).unwrap_or_default();
                tracing::info!(%peer, "a node linked up");
                let services = HashMap::from([("greeter".to_owned(), arrivals.clone())]);
                let tunnel = Tunnel::start(&name, stream, Side::Listener, services);
                count.fetch_add(1, Ordering::Relaxed);
                let mut links = accepted.lock().unwrap();
                links.retain(Tunnel::is_up); // forget links that have ended
                links.push(tunnel);
            }
        });
        Ok(NodeB {
            addr,
            links,
            linked,
            served,
            drain,
            server: AbortOnDropHandle::new(server),
            accept: AbortOnDropHandle::new(accept),
        })
    }

    /// The graceful stop: take no new links, let the calls in flight finish (for at most
    /// `PATIENCE`), then close every link that is left.
    async fn stop(mut self) -> NodeBTally {
        self.accept.abort();
        self.drain.cancel();
        let drained = tokio::time::timeout(PATIENCE, &mut self.server).await.is_ok();
        let links: Vec<Tunnel> = self.links.lock().unwrap().drain(..).collect();
        for link in &links {
            link.cut();
            // A cut link lets go of its sessions: wait until none is held any more.
            let mut live = link.sessions_live();
            let _ = tokio::time::timeout(PATIENCE, live.wait_for(|n| *n == 0)).await;
        }
        NodeBTally {
            links: self.linked.load(Ordering::Relaxed),
            sessions: self.served.load(Ordering::Relaxed),
            drained,
        }
    }
}

/// What the one-process run saw, for the tests to check.
#[derive(Debug, PartialEq, Eq)]
struct Story {
    replies: Vec<String>,
    sessions: usize,
    links: usize,
    refusal: String,
    /// The root cause of each stream the cut failed, and how many hung instead.
    cut: Vec<String>,
    hung: usize,
    again: String,
    links_after_cut: usize,
    stranger: String,
}

/// Everything in one process: node-b and node-a, joined by a real TCP link on loopback.
async fn demo(names: &[String]) -> anyhow::Result<Story> {
    let node_b = NodeB::start("node-b", "127.0.0.1:0".parse()?).await?;
    println!("node-b serves the Greeter on channel \"greeter\"");
    let node_a = Arc::new(NodeA::new("node-a", node_b.addr));

    println!("{} clients on node-a call it at once:", names.len());
    let replies = call_all(&node_a, names).await?;
    for line in &replies {
        println!("  {line}");
    }
    let link = node_a.link().await?;
    let (sessions, links) = (link.sessions_opened(), node_a.links_dialed());
    println!("{sessions} sessions over {links} link");

    // A channel nobody serves is refused by the far node, by name: no hang, no guess.
    let refusal = match link.open("billing").await {
        Ok(_) => anyhow::bail!("node-b accepted a channel it does not serve"),
        Err(error) => error.to_string(),
    };
    println!("open channel \"billing\": {refusal}");

    let (cut, hung) = cut_link_mid_call(&node_a, 3).await?;
    let mut distinct = cut.clone();
    distinct.dedup();
    let causes = distinct.join("; ");
    println!("link cut with 3 streams open: {} failed ({causes}), {hung} hung", cut.len());

    // A tonic Channel reconnects by calling its connector again, which dials a new link.
    let mut client = GreeterClient::new(node_a.channel("greeter")?);
    let reply = tokio::time::timeout(PATIENCE, client.say_hello(hello("ada")))
        .await
        .context("calling again after the cut")??;
    let (again, links_after_cut) = (reply.into_inner().message, node_a.links_dialed());
    println!("the same client calls again: {again}, over link {links_after_cut}");

    let stranger = stranger_speaks_http(&node_b).await?;
    println!("a stranger sends \"GET / HTTP/1.1\" to node-b: link closed ({stranger})");
    Ok(Story { replies, sessions, links, refusal, cut, hung, again, links_after_cut, stranger })
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

fn main() -> std::process::ExitCode {
    microkit::main(roles::run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[tokio::test]
    async fn the_story_multiplexes_refuses_fails_cleanly_and_relinks() {
        let story = demo(&names(&["bo", "ada"])).await.unwrap();
        let expected = Story {
            replies: vec![
                "hello ada, answered by node-b".into(),
                "hello bo, answered by node-b".into(),
            ],
            sessions: 2,
            links: 1,
            refusal: "refused by the other node: node-b has no channel named \"billing\"".into(),
            cut: vec!["tunnel link lost".into(); 3],
            hung: 0,
            again: "hello ada".into(),
            links_after_cut: 2,
            stranger: "unknown frame kind 0x47".into(),
        };
        assert_eq!(story, expected);
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

    #[tokio::test]
    async fn a_flood_of_opens_is_refused_past_the_bound_and_a_lost_link_frees_its_sessions() {
        use futures::SinkExt;
        use tokio_util::codec::Framed;
        let node_b = NodeB::start("node-b", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let tcp = TcpStream::connect(node_b.addr).await.unwrap();
        let mut raw = Framed::new(tcp, frame::FrameCodec);
        let flood = link::MAX_SESSIONS as u32 + 3;
        for n in 0..flood {
            let open = frame::Frame::Open { session: 2 * n + 1, channel: "greeter".into() };
            raw.feed(open).await.unwrap();
        }
        raw.flush().await.unwrap();
        let (mut accepted, mut refused) = (0, Vec::new());
        while accepted + refused.len() < flood as usize {
            let frame = tokio::time::timeout(PATIENCE, raw.next()).await.unwrap();
            match frame.unwrap().unwrap() {
                frame::Frame::Accept { .. } => accepted += 1,
                frame::Frame::Refuse { reason, .. } => refused.push(reason),
                _ => {} // the accepted sessions' gRPC server speaks first
            }
        }
        assert_eq!(accepted, link::MAX_SESSIONS);
        let reason = "node-b has 256 sessions open on this link, the most it takes";
        assert_eq!(refused, [reason; 3]);

        // The flooding node goes away: every session it opened is let go.
        let link = node_b.links.lock().unwrap()[0].clone();
        assert_eq!(*link.sessions_live().borrow(), link::MAX_SESSIONS);
        drop(raw);
        let mut live = link.sessions_live();
        tokio::time::timeout(PATIENCE, live.wait_for(|n| *n == 0)).await.unwrap().unwrap();
        assert_eq!(node_b.served.load(Ordering::Relaxed), link::MAX_SESSIONS);
    }
}
