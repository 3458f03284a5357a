//! The battery: every server the examples start, attacked from outside as a stranger would,
//! as a process, over loopback. One table drives it, `common::roles::roles`, the one the
//! signal tests use; a row with listeners (`serves`) is in the battery, with its bounds.
//!
//! Each server runs with a low file limit (`prlimit --nofile`) and is, in turn:
//! 1. sent malformed input (HTTP/1.1 on a gRPC port, garbage bytes): it must close the
//!    connection and serve the next client;
//! 2. flooded with streams on HTTP/2 connections that ignore its stream limit: past the
//!    per-connection bound they must be refused, and its memory must stay within the bound;
//! 3. held by idle connections (nothing sent, one byte of the preface, the preface alone):
//!    at least 90 % must be closed within the header timeout and a margin;
//! 4. driven to its file limit: it must stay nearly idle, keep its log short, and serve
//!    again once the connections close;
//! 5. sent SIGTERM while a client holds a call open: it must exit within its drain deadline
//!    and a margin, deregistered.
//!
//! Rows run side by side, except the file-limit step, one row at a time, so the CPU a
//! server burns is its own and not shared with others doing the same.

#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::hostile::{self, H2};
use common::roles::{At, Endpoint, Protocol, Role, Running, nodes, roles, spawn};
use microkit::proto::greeter::{HelloReply, HelloRequest};
use microkit_testing::NatsServer;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// The file limit every server runs under: low enough to reach with a few hundred
/// connections, high enough for everything a server opens to serve.
const FILE_LIMIT: usize = 256;
/// Room for a loaded machine on top of every timeout a server keeps.
const MARGIN: Duration = Duration::from_secs(5);
/// A hang guard for a step that should be quick (start, a probe), never a pace.
const LIMIT: Duration = Duration::from_secs(30);
/// How long a well-behaved client may wait to be served while the server is attacked.
const SERVED_WITHIN: Duration = microkit::PATIENCE;
/// Streams opened per flooding connection, and connections per flood.
const FLOOD_STREAMS: usize = 400;
const FLOOD_CONNECTIONS: usize = 2;
/// Requests in flight at once in a flood of a NATS service.
const NATS_FLOOD: usize = 2000;
/// Idle connections of each kind per listener.
const IDLE_EACH: usize = 16;
/// How long the CPU and the log of a server at its file limit are watched, and what it
/// may use of them: a loop that retries a failed accept at once uses a whole core.
const AT_LIMIT_WINDOW: Duration = Duration::from_millis(1500);
const AT_LIMIT_CPU: f64 = 0.10;
const AT_LIMIT_LOG_BYTES: u64 = 32 * 1024;

/// What one row's attacks found: the figures measured, and what broke.
#[derive(Default)]
struct Report {
    name: String,
    figures: Vec<String>,
    failures: Vec<String>,
}

impl Report {
    fn check(&mut self, ok: bool, failure: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(failure());
        }
    }
}

/// A listener, resolved to its address.
struct Listener {
    protocol: Protocol,
    addr: SocketAddr,
}

impl Listener {
    fn label(&self) -> String {
        let kind = match &self.protocol {
            Protocol::Grpc { .. } => "gRPC",
            Protocol::Http { .. } => "HTTP",
            Protocol::Tunnel => "tunnel",
            Protocol::Tls { .. } => "TLS",
            Protocol::NatsService { subject } => return format!("NATS {subject}"),
        };
        format!("{kind} {}", self.addr)
    }

    /// Whether a well-behaved client, on a fresh connection, is served within `limit`.
    async fn serves(&self, limit: Duration) -> bool {
        match &self.protocol {
            Protocol::Grpc { path, message } => match connect(self.addr, limit).await {
                Some(stream) => hostile::grpc_call(stream, path, message, limit).await,
                None => false,
            },
            Protocol::Http { path, .. } => {
                hostile::http_get(self.addr, path, limit).await.is_some()
            }
            Protocol::Tunnel => {
                let mut command = common::example("tunnel");
                let addr = self.addr.to_string();
                command.args(["--names", "battery", "node-a", "--connect", &addr]);
                exits_ok(command, limit).await
            }
            Protocol::Tls { certs } => {
                let mut command = common::example("secure");
                let (addr, certs) = (self.addr.to_string(), certs.to_str().unwrap().to_owned());
                command.args(["client", "--connect", &addr, "--certs", &certs, "--name", "b"]);
                exits_ok(command, limit).await
            }
            Protocol::NatsService { subject } => {
                let Some(nats) = nats_client(self.addr, limit).await else { return false };
                let hello = HelloRequest { name: "battery".into() }.encode_to_vec();
                let asked = nats.request(subject.to_string(), hello.into());
                match tokio::time::timeout(limit, asked).await {
                    Ok(Ok(reply)) => HelloReply::decode(reply.payload).is_ok_and(|r| {
                        reply.headers.is_none_or(|h| h.get("Nats-Service-Error").is_none())
                            && !r.message.is_empty()
                    }),
                    _ => false,
                }
            }
        }
    }

    /// Opens a call the server must hold: headers and no body for gRPC; for HTTP half an
    /// upload, or a GET whose answer is still coming; for the other protocols a connection
    /// that has not finished its start.
    async fn hold_a_call(&self) -> Option<TcpStream> {
        match &self.protocol {
            Protocol::Grpc { path, .. } => {
                let mut h2 = H2::connect(self.addr).await.ok()?;
                let mut out = Vec::new();
                h2.open_call(path, &mut out);
                h2.stream.write_all(&out).await.ok()?;
                // Once the PING comes back, the server has the call.
                tokio::time::timeout(LIMIT, h2.sync(|_| {})).await.ok()?.then_some(h2.stream)
            }
            Protocol::Http { upload: Some(upload), .. } => {
                let mut stream = TcpStream::connect(self.addr).await.ok()?;
                let head = format!(
                    "POST {upload} HTTP/1.1\r\nHost: battery\r\nContent-Type: application/json\r\n\
                     Content-Length: 100\r\n\r\n{{\"user\""
                );
                stream.write_all(head.as_bytes()).await.ok()?;
                Some(stream)
            }
            Protocol::Http { path, upload: None } => {
                // A GET left open: an endless answer (server-sent events) where the path
                // gives one, else a kept-alive connection after its answer.
                let mut stream = TcpStream::connect(self.addr).await.ok()?;
                let head = format!("GET {path} HTTP/1.1\r\nHost: battery\r\n\r\n");
                stream.write_all(head.as_bytes()).await.ok()?;
                let mut first = [0u8; 12];
                tokio::time::timeout(LIMIT, stream.read_exact(&mut first)).await.ok()?.ok()?;
                Some(stream)
            }
            Protocol::Tunnel | Protocol::Tls { .. } => TcpStream::connect(self.addr).await.ok(),
            Protocol::NatsService { .. } => None,
        }
    }
}

async fn connect(addr: SocketAddr, limit: Duration) -> Option<TcpStream> {
    tokio::time::timeout(limit, TcpStream::connect(addr)).await.ok()?.ok()
}

async fn nats_client(addr: SocketAddr, limit: Duration) -> Option<async_nats::Client> {
    let connecting = async_nats::connect(format!("nats://{addr}"));
    tokio::time::timeout(limit, connecting).await.ok()?.ok()
}

async fn exits_ok(command: tokio::process::Command, limit: Duration) -> bool {
    let Ok(child) = { command }.spawn() else { return false };
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(output)) => output.status.success(),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_survives_a_hostile_client() {
    let started = Instant::now();
    let certs = tempfile::tempdir().expect("a folder for the secure server's certificates");
    // `HOSTILE_ROWS=event,tunnel` attacks only the rows whose name contains one of those words
    // (to work on one server); unset, every row.
    let only: Option<Vec<String>> = std::env::var("HOSTILE_ROWS")
        .ok()
        .map(|words| words.split(',').map(str::to_owned).collect());
    let rows: Vec<Role> = roles("hostile", certs.path())
        .into_iter()
        .filter(|row| !row.serves.is_empty())
        .filter(|row| {
            only.as_ref().is_none_or(|o| o.iter().any(|w| row.name().contains(w.as_str())))
        })
        .collect();
    assert!(!rows.is_empty(), "no row of the table matches HOSTILE_ROWS");
    let one_at_a_time = Semaphore::new(1);
    let reports =
        futures::future::join_all(rows.into_iter().map(|row| attack(row, &one_at_a_time))).await;

    let mut failures = Vec::new();
    for report in &reports {
        for figure in &report.figures {
            eprintln!("measured: {}: {figure}", report.name);
        }
        for failure in &report.failures {
            failures.push(format!("{}: {failure}", report.name));
        }
    }
    eprintln!("measured: {} servers attacked in {:?}", reports.len(), started.elapsed());
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

/// Every attack on one row, in order; what broke is reported, not panicked on, so one run
/// shows every row.
async fn attack(row: Role, one_at_a_time: &Semaphore) -> Report {
    let mut report = Report { name: row.name(), ..Report::default() };
    let started = Instant::now();
    let nats = match row.nats {
        common::roles::Nats::None => None,
        _ => Some(NatsServer::start().await.unwrap()),
    };
    let url = nats.as_ref().map(NatsServer::url);
    let mut companions = Vec::new();
    for companion in &row.companions {
        let mut running = spawn(companion, url.as_deref(), &[]);
        if let Err(seen) = running.ready(companion.ready, LIMIT).await {
            report.failures.push(format!("{}: never ready: {seen:?}", companion.name()));
            return report;
        }
        companions.push(running);
    }
    let limit = format!("--nofile={FILE_LIMIT}:{FILE_LIMIT}");
    let mut server = spawn(&row, url.as_deref(), &["prlimit", &limit]);
    let ready = match server.ready(row.ready, LIMIT).await {
        Ok(line) => line,
        Err(seen) => {
            report.failures.push(format!("never said it was ready: {seen:?}"));
            return report;
        }
    };
    let pid = server.child.id().expect("running");
    let mut listeners = Vec::new();
    for Endpoint { protocol, at } in &row.serves {
        let addr = match at {
            At::Ready(n) => common::roles::loopback_addresses(&ready).get(*n).copied(),
            At::Registry(service, id) => {
                let listed = nodes(url.as_deref().expect("a registered role has NATS"), service);
                let node = listed.await.into_iter().find(|node| &node.id == id);
                node.and_then(|node| node.address.parse().ok())
            }
            At::Nats => url.as_deref().and_then(|u| u.trim_start_matches("nats://").parse().ok()),
        };
        match addr {
            Some(addr) => listeners.push(Listener { protocol: protocol.clone(), addr }),
            None => {
                report.failures.push(format!("no address for {at:?} (ready line: {ready})"));
                return report;
            }
        }
    }
    let bounds = row.bounds;

    for listener in &listeners {
        malformed(listener, &mut report).await;
    }
    for listener in &listeners {
        flood(listener, pid, bounds.streams_per_connection, bounds.rss_growth_kib, &mut report)
            .await;
    }
    idle(&listeners, pid, bounds.header_timeout + MARGIN, bounds.rss_growth_kib, &mut report).await;
    {
        let _turn = one_at_a_time.acquire().await.unwrap();
        at_the_file_limit(&listeners, pid, &server, &mut report).await;
    }
    stop_holding_a_call(&row, &listeners[0], server, url.as_deref(), &mut report).await;
    drop(companions);
    report.figures.push(format!("attacked in {:.1?}", started.elapsed()));
    report
}

/// HTTP/1.1 on a gRPC port, and garbage on every port: closed, and the next client served.
async fn malformed(listener: &Listener, report: &mut Report) {
    if let Protocol::NatsService { subject } = listener.protocol {
        return malformed_request(listener, subject, report).await;
    }
    let mut inputs = vec![("garbage", hostile::garbage())];
    if let Protocol::Grpc { .. } = listener.protocol {
        inputs.push(("HTTP/1.1", b"GET / HTTP/1.1\r\nHost: battery\r\n\r\n".to_vec()));
    }
    for (what, bytes) in inputs {
        let Some(mut stream) = connect(listener.addr, LIMIT).await else {
            report.failures.push(format!("{}: refused a connection", listener.label()));
            continue;
        };
        let sent = Instant::now();
        let _ = stream.write_all(&bytes).await;
        let closed = hostile::closed_by(&mut stream, sent, sent + MARGIN).await;
        report.check(closed.is_some(), || {
            format!("{}: still open {MARGIN:?} after {what}", listener.label())
        });
        let served = listener.serves(SERVED_WITHIN).await;
        report
            .check(served, || format!("{}: the client after {what} not served", listener.label()));
    }
}

/// A request whose payload is no message: answered (an error), and the next one served.
async fn malformed_request(listener: &Listener, subject: &str, report: &mut Report) {
    let Some(nats) = nats_client(listener.addr, LIMIT).await else {
        report.failures.push(format!("{}: cannot reach NATS", listener.label()));
        return;
    };
    let asked = nats.request(subject.to_owned(), hostile::garbage().into());
    let answered = tokio::time::timeout(SERVED_WITHIN, asked).await;
    report.check(matches!(answered, Ok(Ok(_))), || {
        format!("{}: no answer to a request that is no message", listener.label())
    });
    let served = listener.serves(SERVED_WITHIN).await;
    report.check(served, || format!("{}: the request after garbage not served", listener.label()));
}

/// Requests sent all at once, none awaited before the next: what they cost the service.
async fn request_flood(
    listener: &Listener,
    subject: &str,
    pid: u32,
    rss_bound_kib: u64,
    report: &mut Report,
) {
    let Some(nats) = nats_client(listener.addr, LIMIT).await else {
        report.failures.push(format!("{}: cannot reach NATS", listener.label()));
        return;
    };
    let before = hostile::rss_kib(pid);
    let hello = bytes::Bytes::from(HelloRequest { name: "flood".into() }.encode_to_vec());
    let asked = (0..NATS_FLOOD).map(|_| {
        let request = nats.request(subject.to_owned(), hello.clone());
        tokio::time::timeout(LIMIT, request)
    });
    let answers = futures::future::join_all(asked).await;
    let after = hostile::rss_kib(pid);
    let answered = answers.iter().filter(|a| matches!(a, Ok(Ok(_)))).count();
    report.figures.push(format!(
        "{}: {NATS_FLOOD} requests at once, {answered} answered, RSS {} -> {} MiB",
        listener.label(),
        before / 1024,
        after / 1024
    ));
    report.check(after.saturating_sub(before) <= rss_bound_kib, || {
        format!("{}: RSS grew {} KiB under the flood", listener.label(), after - before)
    });
    let served = listener.serves(SERVED_WITHIN).await;
    report.check(served, || format!("{}: not served after the flood", listener.label()));
}

/// Streams past the server's limit on HTTP/2 connections: how many it holds open at once
/// on each, and what they cost it.
async fn flood(
    listener: &Listener,
    pid: u32,
    per_connection: usize,
    rss_bound_kib: u64,
    report: &mut Report,
) {
    let request = match listener.protocol {
        Protocol::Grpc { path, .. } => hostile::grpc_request(path),
        Protocol::Http { path, .. } => hostile::header_block(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "battery"),
        ]),
        Protocol::NatsService { subject } => {
            return request_flood(listener, subject, pid, rss_bound_kib, report).await;
        }
        Protocol::Tunnel | Protocol::Tls { .. } => return,
    };
    let before = hostile::rss_kib(pid);
    let mut connections = Vec::new();
    let mut most_held = 0;
    for _ in 0..FLOOD_CONNECTIONS {
        let Ok(mut h2) = H2::connect(listener.addr).await else {
            report.failures.push(format!("{}: refused a flooding connection", listener.label()));
            return;
        };
        let mut out = Vec::new();
        for n in 0..FLOOD_STREAMS {
            let id = 2 * n as u32 + 1;
            out.extend(hostile::frame(hostile::HEADERS, hostile::END_HEADERS, id, &request));
        }
        let _ = h2.stream.write_all(&out).await;
        let mut streams = StreamTally::default();
        let alive = tokio::time::timeout(LIMIT, h2.sync(|frame| streams.see(frame))).await;
        let mut alive = alive.unwrap_or(false);
        // Refusals may trail the PING's answer; wait for them (bounded), not for a pace.
        let deadline = tokio::time::Instant::now() + MARGIN;
        while alive && streams.open() > per_connection {
            match tokio::time::timeout_at(deadline, h2.next()).await {
                Ok(Some(frame)) => streams.see(&frame),
                Ok(None) => alive = false,
                Err(_) => break,
            }
        }
        let held = if alive { streams.open() } else { 0 };
        most_held = most_held.max(held);
        connections.push(h2);
    }
    let during = hostile::rss_kib(pid);
    for h2 in connections {
        h2.close(LIMIT).await;
    }
    let served = listener.serves(SERVED_WITHIN).await;
    // Once the streams are gone and a call has been served: what the flood left behind.
    let after = hostile::rss_kib(pid);
    let growth = during.max(after).saturating_sub(before);
    report.figures.push(format!(
        "{}: {FLOOD_CONNECTIONS} connections x {FLOOD_STREAMS} streams: at most {most_held} held \
         on one, RSS {} -> {} -> {} MiB (before, during, after)",
        listener.label(),
        before / 1024,
        during / 1024,
        after / 1024
    ));
    report.check(most_held <= per_connection, || {
        format!(
            "{}: held {most_held} of {FLOOD_STREAMS} streams on one connection (bound \
             {per_connection})",
            listener.label()
        )
    });
    report.check(growth <= rss_bound_kib, || {
        format!("{}: RSS grew {growth} KiB under the stream flood", listener.label())
    });
    report.check(served, || format!("{}: not served after the stream flood", listener.label()));
}

/// What became of the streams of one flooding connection.
#[derive(Default)]
struct StreamTally {
    refused: usize,
    ended: usize,
    /// A GOAWAY's last stream id: the streams above it were never processed.
    last_processed: Option<u32>,
}

impl StreamTally {
    fn see(&mut self, frame: &hostile::Frame) {
        match frame.kind {
            hostile::RST_STREAM => {
                let code =
                    frame.payload.get(..4).map(|c| u32::from_be_bytes(c.try_into().unwrap()));
                if code == Some(hostile::REFUSED_STREAM) {
                    self.refused += 1;
                } else {
                    self.ended += 1;
                }
            }
            hostile::HEADERS | hostile::DATA if frame.flags & hostile::END_STREAM != 0 => {
                self.ended += 1;
            }
            hostile::GOAWAY => {
                let last =
                    frame.payload.get(..4).map(|c| u32::from_be_bytes(c.try_into().unwrap()));
                self.last_processed = last.map(|l| l & 0x7fff_ffff);
            }
            _ => {}
        }
    }

    /// Streams the server still holds open.
    fn open(&self) -> usize {
        let sent = match self.last_processed {
            Some(last) => FLOOD_STREAMS.min(last.div_ceil(2) as usize),
            None => FLOOD_STREAMS,
        };
        sent.saturating_sub(self.refused + self.ended)
    }
}

/// Connections that send nothing, one byte of the HTTP/2 preface, or the preface and
/// nothing more: how many the server closes within `within`.
async fn idle(
    listeners: &[Listener],
    pid: u32,
    within: Duration,
    rss_bound_kib: u64,
    report: &mut Report,
) {
    let before = hostile::rss_kib(pid);
    let start = Instant::now();
    let mut waits = Vec::new();
    let listeners: Vec<&Listener> =
        listeners.iter().filter(|l| !matches!(l.protocol, Protocol::NatsService { .. })).collect();
    for listener in &listeners {
        let mut kinds: Vec<(&str, Vec<u8>)> =
            vec![("nothing", vec![]), ("one byte", b"P".to_vec())];
        if let Protocol::Grpc { .. } | Protocol::Http { .. } = listener.protocol {
            let mut preface = hostile::PREFACE.to_vec();
            preface.extend(hostile::frame(hostile::SETTINGS, 0, 0, &[]));
            kinds.push(("the preface only", preface));
        }
        for (kind, bytes) in kinds {
            for _ in 0..IDLE_EACH {
                let Some(mut stream) = connect(listener.addr, LIMIT).await else { continue };
                let _ = stream.write_all(&bytes).await;
                let label = listener.label();
                waits.push(async move {
                    let closed = hostile::closed_by(&mut stream, start, start + within).await;
                    (label, kind, closed)
                });
            }
        }
    }
    let opened = waits.len();
    let (during, threads) = (hostile::rss_kib(pid), hostile::threads(pid));
    // Held connections must not keep others out: a client arriving now is served.
    for listener in &listeners {
        let served = listener.serves(SERVED_WITHIN).await;
        report.check(served, || {
            format!("{}: a client not served while idle connections are held", listener.label())
        });
    }
    let results = futures::future::join_all(waits).await;
    let closed: Vec<Duration> = results.iter().filter_map(|(_, _, closed)| *closed).collect();
    let slowest =
        closed.iter().max().map_or("none".into(), |last| format!("the last after {last:.1?}"));
    report.figures.push(format!(
        "{opened} idle connections: {} closed within {within:?} ({slowest}), RSS {} -> {} MiB \
         ({threads} threads)",
        closed.len(),
        before / 1024,
        during / 1024
    ));
    for listener in &listeners {
        let label = listener.label();
        let mine: Vec<_> = results.iter().filter(|(l, _, _)| *l == label).collect();
        let shut = mine.iter().filter(|(_, _, closed)| closed.is_some()).count();
        // At least 90 %, so one connection the kernel was slow to hand over does not fail it.
        report.check(shut * 10 >= mine.len() * 9, || {
            let open: std::collections::BTreeSet<_> =
                mine.iter().filter(|(_, _, c)| c.is_none()).map(|(_, kind, _)| *kind).collect();
            format!(
                "{label}: {} of {} idle connections still open after {within:?} ({open:?})",
                mine.len() - shut,
                mine.len()
            )
        });
    }
    report.check(during.saturating_sub(before) <= rss_bound_kib, || {
        format!("RSS grew {} KiB under idle connections", during.saturating_sub(before))
    });
}

/// Fills the server's file table with connections to its first listener, then knocks on
/// each other one: it must not spin or flood its log while the table is full, and must
/// serve again once the connections close.
async fn at_the_file_limit(
    listeners: &[Listener],
    pid: u32,
    server: &Running,
    report: &mut Report,
) {
    let first = &listeners[0];
    let mut held = Vec::new();
    // A few more than the limit: the last wait in the listen backlog. A server that stops
    // accepting before its limit (it bounds its handshakes) fills the backlog instead, and
    // the next connect waits.
    let mut backlog_full = false;
    for _ in 0..FILE_LIMIT + 32 {
        match connect(first.addr, Duration::from_secs(2)).await {
            Some(stream) => held.push(stream),
            None => {
                backlog_full = true;
                break;
            }
        }
    }
    // Every other listener of the process then has a connection it cannot take either, so
    // each accept loop meets the full table.
    for other in
        listeners[1..].iter().filter(|l| !matches!(l.protocol, Protocol::NatsService { .. }))
    {
        for _ in 0..4 {
            if let Some(stream) = connect(other.addr, Duration::from_secs(2)).await {
                held.push(stream);
            }
        }
    }
    let (cpu, log) = (hostile::cpu_time(pid), server.stderr_bytes.load(Ordering::Relaxed));
    tokio::time::sleep(AT_LIMIT_WINDOW).await; // the measuring window, not a wait for a state
    let cpu = (hostile::cpu_time(pid) - cpu).as_secs_f64() / AT_LIMIT_WINDOW.as_secs_f64();
    let log = server.stderr_bytes.load(Ordering::Relaxed) - log;
    let files = hostile::open_files(pid);
    report.figures.push(format!(
        "{}: {} connections held{}, {files} files open: CPU {:.0} %, log {log} bytes in {:?}",
        first.label(),
        held.len(),
        if backlog_full { " (then its backlog was full)" } else { "" },
        cpu * 100.0,
        AT_LIMIT_WINDOW
    ));
    report.check(files + 8 >= FILE_LIMIT || backlog_full, || {
        format!("never reached its file limit: {files} open of {FILE_LIMIT} (the test is wrong)")
    });
    report.check(cpu <= AT_LIMIT_CPU, || {
        format!("{:.0} % CPU at its file limit (bound {:.0} %)", cpu * 100.0, AT_LIMIT_CPU * 100.0)
    });
    report.check(log <= AT_LIMIT_LOG_BYTES, || {
        format!("{log} bytes of log in {AT_LIMIT_WINDOW:?} at its file limit")
    });
    drop(held);
    for listener in listeners {
        let served = listener.serves(SERVED_WITHIN).await;
        report.check(served, || {
            format!("{}: not served after the file table emptied", listener.label())
        });
    }
}

/// SIGTERM while a client holds a call open on `first`: exit within the drain deadline and
/// a margin, with status 0, and no node left in the registry.
async fn stop_holding_a_call(
    row: &Role,
    first: &Listener,
    mut server: Running,
    nats_url: Option<&str>,
    report: &mut Report,
) {
    let held = first.hold_a_call().await;
    report.check(held.is_some(), || format!("{}: could not open a call", first.label()));
    common::terminate(&server.child);
    let asked = Instant::now();
    let within = row.bounds.drain + MARGIN;
    let status = tokio::time::timeout(within, server.child.wait()).await;
    let took = asked.elapsed();
    report.figures.push(format!("stopped with a call open in {took:.1?}"));
    match status {
        Ok(Ok(status)) => report.check(status.success(), || format!("exited with {status}")),
        _ => {
            report
                .failures
                .push(format!("still running {within:?} after SIGTERM with a call open"));
            let _ = server.child.kill().await;
        }
    }
    drop(held);
    for (service, id) in &row.registers {
        let listed = nodes(nats_url.expect("a registered role has NATS"), service).await;
        report.check(!listed.iter().any(|node| &node.id == id), || {
            format!("{service}/{id} still listed after the stop")
        });
    }
}
