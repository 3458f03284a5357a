//! The stream example as two processes, as a learner runs it in two terminals.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{example, run_within, text};
use microkit::proto::greeter::GreetingsRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

/// Starts `stream server` on a free port and waits until it listens.
async fn start_server() -> (Child, SocketAddr) {
    let addr: SocketAddr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut server = example("stream");
    server.args(["server", "--addr", &addr.to_string()]);
    let mut server = server.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(server.try_wait().unwrap().is_none(), "the server exited early");
        assert!(Instant::now() < deadline, "the server never listened on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (server, addr)
}

/// Sends SIGTERM to the server this test started, by its pid.
fn terminate(server: &Child) {
    let pid = server.id().expect("the server is running").to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success(), "kill -TERM {pid} failed");
}

#[tokio::test]
async fn a_client_process_streams_with_a_server_process() {
    let (mut server, addr) = start_server().await;

    let mut client = example("stream");
    client.args(["client", "--addr", &addr.to_string()]);
    let output = run_within(client, Duration::from_secs(30)).await;
    let client_out = text(&output.stdout);
    assert!(output.status.success(), "client failed: {}", text(&output.stderr));
    for line in [
        "  client got hello ada #3",
        "  client got the summary: hello ada, bo, cy",
        "  client got hello bo",
        "  client saw the end of the stream",
        "  client read 3 replies, then drops the stream",
    ] {
        assert!(client_out.lines().any(|l| l == line), "client lacks {line:?}:\n{client_out}");
    }

    // Read the server's stdout until it noticed the last client leave, then stop it.
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let mut server_out = String::new();
    let last = "  server noticed the client went away and stopped producing";
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            server_out.push_str(&line);
            server_out.push('\n');
            if line == last {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the server never printed {last:?}:\n{server_out}"));
    // A stop request: the server drains, prints its tally and exits 0.
    terminate(&server);
    let status = tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .expect("the server did not stop after SIGTERM")
        .unwrap();
    assert!(status.success(), "the server exited {status:?} after SIGTERM");
    while let Some(line) = lines.next_line().await.unwrap() {
        server_out.push_str(&line);
        server_out.push('\n');
    }
    for line in [
        "  server saw the client half-close after 3 names",
        "  server saw the client half-close; it ends its side too",
        "server stopped: names read 5, half-closes seen 2, clients gone mid-stream 1",
    ] {
        assert!(server_out.lines().any(|l| l == line), "server lacks {line:?}:\n{server_out}");
    }
    assert!(!server_out.contains(&addr.port().to_string()), "no ports on stdout: {server_out}");
}

#[tokio::test]
async fn a_client_process_without_a_server_fails_naming_the_address() {
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut client = example("stream");
    client.args(["client", "--addr", &addr.to_string()]);
    let output = run_within(client, Duration::from_secs(30)).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with("error: no stream server at") && stderr.contains(&addr.to_string()),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_second_stop_request_exits_1_at_once_while_a_stream_is_open() {
    let (mut server, addr) = start_server().await;
    // An endless stream keeps the drain waiting: the situation a second signal is for.
    let mut client = GreeterClient::connect(format!("http://{addr}")).await.unwrap();
    let endless = GreetingsRequest { name: "ada".into(), count: 0, interval_ms: 5 };
    let mut replies = client.greetings(endless).await.unwrap().into_inner();
    replies.message().await.unwrap().expect("a first reply");

    terminate(&server);
    // Still draining: the open stream goes on.
    replies.message().await.unwrap().expect("replies while draining");
    let mut stderr = BufReader::new(server.stderr.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.starts_with("SIGTERM: letting open streams finish") {
                return;
            }
        }
        panic!("the server's stderr ended before it began to drain");
    })
    .await
    .expect("the server never said it was draining");
    assert!(server.try_wait().unwrap().is_none(), "the server stopped with a stream open");

    terminate(&server);
    let status = tokio::time::timeout(Duration::from_secs(3), server.wait())
        .await
        .expect("a second SIGTERM must end the server at once")
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let rest = stderr.next_line().await.unwrap().unwrap_or_default();
    assert_eq!(rest, "SIGTERM again: exiting at once");
}

/// Sends `signal` (`-STOP`, `-CONT`) to the server this test started, by its pid.
fn send(server: &Child, signal: &str) {
    let pid = server.id().expect("the server is running").to_string();
    let status = std::process::Command::new("kill").args([signal, &pid]).status().unwrap();
    assert!(status.success(), "kill {signal} {pid} failed");
}

#[tokio::test]
async fn a_client_whose_server_froze_fails_within_its_deadline_instead_of_hanging() {
    let (mut server, addr) = start_server().await;
    // Frozen, not gone: the kernel still accepts the connection and acknowledges every byte,
    // but no answer ever comes, and nothing closes. Without a deadline the client waited
    // here for ever.
    send(&server, "-STOP");
    let mut client = example("stream");
    client.args(["client", "--addr", &addr.to_string()]);
    let started = Instant::now();
    let output = run_within(client, Duration::from_secs(60)).await;
    let waited = started.elapsed();
    send(&server, "-CONT");

    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    // Its first call's deadline is 5 s (keepalive would end the connection within 10 s).
    assert!(waited >= Duration::from_secs(4), "it gave up before its deadline: {waited:?}");
    assert!(waited < Duration::from_secs(25), "it waited {waited:?} for a frozen server");
    assert!(stderr.contains("the call did not end within 5s"), "{stderr}");

    terminate(&server);
    let status = tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .expect("the server did not stop after SIGTERM")
        .unwrap();
    assert!(status.success(), "the server exited {status:?} after SIGTERM");
}
