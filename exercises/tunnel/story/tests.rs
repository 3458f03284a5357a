//! The story, checked: what each part of the run saw.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use microkit::PATIENCE;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tunnel::frame;
use tunnel::link::{Side, Tunnel};

use super::*;
use crate::nodes::{NodeA, NodeB};

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
    assert_eq!(call_all(&node_a, &names(&["bo"])).await.unwrap(), ["hello bo, answered by node-b"]);
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
    assert!(matches!(link.open("greeter").await, Err(tunnel::link::TunnelError::LinkDown)));
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
        let mut session: tunnel::link::Session = sessions.recv().await.unwrap();
        let mut got = Vec::new();
        session.read_to_end(&mut got).await.unwrap();
        session.write_all(&got).await.unwrap();
        session.shutdown().await.unwrap();
    });
    let link =
        Tunnel::start("a", TcpStream::connect(addr).await.unwrap(), Side::Dialer, HashMap::new());
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
    let flood = tunnel::link::MAX_SESSIONS as u32 + 3;
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
    assert_eq!(accepted, tunnel::link::MAX_SESSIONS);
    let reason = "node-b has 256 sessions open on this link, the most it takes";
    assert_eq!(refused, [reason; 3]);

    // The flooding node goes away: every session it opened is let go.
    let link = node_b.links.lock().unwrap()[0].clone();
    assert_eq!(*link.sessions_live().borrow(), tunnel::link::MAX_SESSIONS);
    drop(raw);
    let mut live = link.sessions_live();
    tokio::time::timeout(PATIENCE, live.wait_for(|n| *n == 0)).await.unwrap().unwrap();
    assert_eq!(node_b.served.load(Ordering::Relaxed), tunnel::link::MAX_SESSIONS);
}
