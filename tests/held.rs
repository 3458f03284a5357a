//! The HTTP edge roles (`web serve`, `sidecar serve`) against clients that hold a
//! connection open without finishing their request: half-sent headers are cut after the
//! header timeout; a stop request ends the process within the drain deadline however much
//! is still half-sent; a second stop request ends it at once with exit code 1.
//!
//! The bounds are microkit's `server::Limits` defaults, which both roles serve with.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::example;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout};

/// `Limits::default()`: the header timeout and the drain deadline.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// What a loaded 2-core machine may add to a bound before the test calls it broken.
const SLACK: Duration = Duration::from_secs(3);

/// An edge role, and a request to it that the test sends only half of.
#[derive(Clone, Copy)]
struct Edge {
    example: &'static str,
    args: &'static [&'static str],
    /// A POST with a body, half-sent while the role is asked to stop.
    post: &'static str,
    /// Whether that POST's handler reads its body, so the half-sent request is in flight
    /// and gets the whole drain before it is cut. The sidecar's does; nothing in web reads
    /// a body (what holds web's drain is the half-sent headers).
    holds_the_drain: bool,
}

const EDGES: [Edge; 2] = [
    Edge {
        example: "web",
        args: &["serve", "--port", "0"],
        post: "/hello/greet",
        holds_the_drain: false,
    },
    Edge {
        example: "sidecar",
        args: &["serve", "--port", "0"],
        post: "/greeter/SayHello",
        holds_the_drain: true,
    },
];

struct Running {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    addr: String,
}

/// Starts the role on the memory backend and reads the address from its first line
/// (`... http://127.0.0.1:<port>/...` or `...:<port>; ...`).
async fn start(edge: Edge) -> Running {
    let mut command = example(edge.example);
    command.args(edge.args).env("MICRO_BACKEND", "memory").stderr(Stdio::null());
    let mut child = command.spawn().expect("spawning an example");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(microkit::PATIENCE, stdout.next_line())
        .await
        .expect("the role says where it listens")
        .unwrap()
        .expect("a first line");
    let rest = first.split("http://").nth(1).unwrap_or_else(|| panic!("no URL in {first:?}"));
    let addr = rest.split(['/', ';', ' ']).next().unwrap().to_owned();
    Running { child, stdout, addr }
}

impl Running {
    /// Headers without the blank line that ends them.
    async fn half_sent_headers(&self) -> TcpStream {
        let mut stream = TcpStream::connect(&self.addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nAccept: ").await.unwrap();
        stream
    }

    /// Complete headers, and 10 of the 100 bytes of body they promise.
    async fn half_sent_body(&self, path: &str) -> TcpStream {
        let mut stream = TcpStream::connect(&self.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{{\"name\": \""
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill").args([&format!("-{name}"), &pid]).status();
        assert!(status.unwrap().success(), "kill -{name} {pid}");
    }

    /// Waits for the exit, at most `limit`; returns its code and how long it took.
    async fn exit_within(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("still running {limit:?} after the stop request"))
            .unwrap();
        (status.code(), started.elapsed())
    }
}

/// Reads until the server closes the connection, at most `limit`; returns how long it took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut seen = Vec::new();
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut seen)).await;
    assert!(read.is_ok(), "the connection was still open after {limit:?}");
    started.elapsed()
}

/// Half-sent headers are cut once the header timeout has passed, not before.
async fn headers_are_cut_after_the_header_timeout(edge: Edge) {
    let mut running = start(edge).await;
    let mut held = running.half_sent_headers().await;
    let took = closed_within(&mut held, HEADER_TIMEOUT + SLACK).await;
    eprintln!("measured: {} cut half-sent headers after {took:?}", edge.example);
    assert!(took >= HEADER_TIMEOUT - Duration::from_secs(1), "cut early: {took:?}");
    running.signal("TERM");
    assert_eq!(running.exit_within(DRAIN_DEADLINE + SLACK).await.0, Some(0));
}

/// A stop request with half-sent requests open: exit 0, with the tally, within the drain
/// deadline.
async fn a_stop_is_not_held_by_half_sent_requests(edge: Edge) {
    let mut running = start(edge).await;
    let _headers = running.half_sent_headers().await;
    let _body = running.half_sent_body(edge.post).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // both are in the server's hands
    running.signal("TERM");
    let (code, took) = running.exit_within(DRAIN_DEADLINE + SLACK).await;
    eprintln!("measured: {} exited {code:?} {took:?} after SIGTERM", edge.example);
    assert_eq!(code, Some(0));
    if edge.holds_the_drain {
        assert!(took >= DRAIN_DEADLINE - Duration::from_secs(1), "the request got no drain");
    }
    let mut rest = Vec::new();
    while let Some(line) = running.stdout.next_line().await.unwrap() {
        rest.push(line);
    }
    assert!(rest.iter().any(|l| l.contains("stopped")), "no tally: {rest:?}");
}

/// A second stop request while the first drains: exit 1 at once.
async fn a_second_stop_request_exits_at_once(edge: Edge) {
    let mut running = start(edge).await;
    let _headers = running.half_sent_headers().await;
    let _body = running.half_sent_body(edge.post).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await; // the drain has begun
    running.signal("TERM");
    let (code, took) = running.exit_within(SLACK).await;
    eprintln!("measured: {} exited {code:?} {took:?} after the second SIGTERM", edge.example);
    assert_eq!(code, Some(1));
}

/// Every check on every edge role, all at once (the longest, the header timeout, sets the
/// wall time); each runs as its own task, so one failure does not hide another.
#[tokio::test]
async fn half_sent_requests_hold_neither_a_connection_nor_a_stop() {
    let mut checks = tokio::task::JoinSet::new();
    for edge in EDGES {
        checks.spawn(headers_are_cut_after_the_header_timeout(edge));
        checks.spawn(a_stop_is_not_held_by_half_sent_requests(edge));
        checks.spawn(a_second_stop_request_exits_at_once(edge));
    }
    let mut failed = 0;
    while let Some(result) = checks.join_next().await {
        failed += usize::from(result.is_err()); // each failure has printed its own panic
    }
    assert_eq!(failed, 0, "{failed} of {} checks failed (see above)", 3 * EDGES.len());
}

/// The web service's first-message timeout (`examples/web/service.rs`): a websocket that
/// never sends its request is closed after it.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(target_os = "linux")]
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

#[cfg(target_os = "linux")]
fn resident_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

/// 1,000 websockets opened through `web serve`'s gateway that never say a word: each costs
/// the process three descriptors (client to gateway, gateway to node, the node's end), and
/// without a bound they were held until someone killed the process.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn web_serve_closes_a_thousand_idle_websockets_within_its_first_message_timeout() {
    use futures::StreamExt;
    const SOCKETS: usize = 1000;
    /// Handshakes in flight at once: enough to open them all in well under the timeout.
    const AT_ONCE: usize = 50;

    let mut running = start(EDGES[0]).await;
    let pid = running.child.id().unwrap();
    let (fds_before, mb_before) = (open_fds(pid), resident_mb(pid));
    let url = format!("ws://{}/hello/stream", running.addr);
    let opened = Instant::now();
    let sockets: Vec<_> = futures::stream::iter(0..SOCKETS)
        .map(|_| {
            let url = url.clone();
            async move { tokio_tungstenite::connect_async(url).await.expect("a handshake").0 }
        })
        .buffer_unordered(AT_ONCE)
        .collect()
        .await;
    let all_open = opened.elapsed();
    let (fds_held, mb_held) = (open_fds(pid), resident_mb(pid));
    assert!(fds_held >= fds_before + 2 * SOCKETS, "the sockets are open: {fds_held} fds");

    // Each is closed by the server, never by this side.
    let closes = sockets.into_iter().map(|mut socket| async move {
        while let Some(Ok(_)) = socket.next().await {} // the close frame, then the end
    });
    let waited =
        tokio::time::timeout(FIRST_MESSAGE_TIMEOUT + SLACK, futures::future::join_all(closes));
    assert!(waited.await.is_ok(), "sockets still open {:?} after opening", opened.elapsed());
    let all_closed = opened.elapsed();
    // The process lets go of its descriptors as the sockets close; read until it has.
    let mut fds_after = open_fds(pid);
    while fds_after > fds_before + 10 && opened.elapsed() < all_closed + SLACK {
        tokio::time::sleep(Duration::from_millis(50)).await;
        fds_after = open_fds(pid);
    }
    eprintln!(
        "measured: {SOCKETS} idle websockets opened in {all_open:?}, all closed {all_closed:?} \
         after the first opened; web serve {fds_before} fds / {mb_before} MB before, \
         {fds_held} / {mb_held} MB held, {fds_after} fds / {} MB after",
        resident_mb(pid)
    );
    assert!(fds_after <= fds_before + 10, "web serve still holds {fds_after} fds");
    running.signal("TERM");
    assert_eq!(running.exit_within(DRAIN_DEADLINE + SLACK).await.0, Some(0));
}
