use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use microkit::PATIENCE;
use microkit::proto::greeter::GreetingsRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::server::RunningServer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::bounds::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, deadline, endpoint, within_deadline};
use crate::roles::client;
use crate::stream::{
    Seen, StreamGreeter, bidirectional, client_goes_away, client_streaming, server_goes_away,
    server_streaming,
};
use crate::{Args, Role};

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

/// A TCP relay to `target` that forwards until `silence` is cancelled, then forwards
/// nothing and closes nothing: a path that went silent (a frozen peer, a NAT that forgot
/// the connection). The sockets stay open until the test's runtime ends.
async fn relay(target: SocketAddr, silence: CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let mut outbound = tokio::net::TcpStream::connect(target).await.unwrap();
            let silence = silence.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    () = silence.cancelled() => {}
                }
                std::future::pending::<()>().await; // holds both sockets, says nothing
            });
        }
    });
    addr
}

#[tokio::test]
async fn keepalive_ends_a_stream_whose_path_went_silent_without_closing() {
    let (server, _, _) = start().await;
    let silence = CancellationToken::new();
    let via = relay(server.addr(), silence.clone()).await;
    let channel = endpoint(format!("http://{via}")).unwrap().connect().await.unwrap();
    // An endless feed with no deadline: only keepalive can tell that nobody answers.
    let endless = GreetingsRequest { name: "ada".into(), count: 0, interval_ms: 5 };
    let mut replies = GreeterClient::new(channel).greetings(endless).await.unwrap().into_inner();
    replies.message().await.unwrap().expect("a first reply");
    silence.cancel();
    let started = std::time::Instant::now();
    let bound = KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT;
    let end = tokio::time::timeout(bound + PATIENCE, async {
        loop {
            match replies.message().await {
                Ok(Some(_)) => continue, // replies already on their way
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!("the stream still waited {:?} after the path went silent", started.elapsed())
    });
    let status = end.expect("a clean end, though the server never finished");
    let waited = started.elapsed();
    // The PING goes out after KEEPALIVE_INTERVAL without a byte, and is given up on
    // KEEPALIVE_TIMEOUT later; hyper then closes the connection, and the stream reads a
    // broken pipe. Nothing else here would end it: the relay closes nothing.
    assert!(waited >= KEEPALIVE_TIMEOUT, "ended after {waited:?}, before keepalive could");
    eprintln!("the silent stream ended after {waited:?}: {status:?}");
    // Not a graceful stop: the server's end of the relay is silent too, and would hold it.
    server.crash().await;
}

#[tokio::test]
async fn the_deadline_ends_a_call_whose_stream_went_silent_after_its_head() {
    let (server, _, _) = start().await;
    let silence = CancellationToken::new();
    let via = relay(server.addr(), silence.clone()).await;
    let mut client =
        GreeterClient::new(endpoint(format!("http://{via}")).unwrap().connect().await.unwrap());
    let started = std::time::Instant::now();
    let error = within_deadline(async {
        let endless = GreetingsRequest { name: "ada".into(), count: 0, interval_ms: 5 };
        let mut replies = client.greetings(deadline(endless)).await?.into_inner();
        replies.message().await?.context("a first reply")?;
        silence.cancel(); // the head and a reply came: only the body is left unbounded
        while replies.message().await?.is_some() {}
        anyhow::Ok(())
    })
    .await
    .unwrap_err();
    let status = error.downcast_ref::<Status>().expect("a status");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // Keepalive would have ended it too, but later: the deadline came first.
    let waited = started.elapsed();
    assert!(waited < KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT, "ended after {waited:?}");
    server.crash().await;
}

#[tokio::test]
async fn a_client_without_a_server_gets_a_clear_error() {
    // A port that was free a moment ago: nothing listens there now.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let message = format!("{:#}", client(addr).await.unwrap_err());
    assert!(message.contains(&addr.to_string()) && message.contains("stream server"), "{message}");
}

#[test]
fn roles_parse_and_bad_addresses_are_refused() {
    let args = Args::try_parse_from(["stream", "client", "--addr", "127.0.0.1:9"]).unwrap();
    assert!(matches!(args.role, Some(Role::Client { .. })));
    assert!(Args::try_parse_from(["stream", "server", "--addr", "nowhere"]).is_err());
    assert!(Args::try_parse_from(["stream", "dance"]).is_err());
}
