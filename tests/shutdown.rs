//! The shutdown example as an operator meets it: a serving process, stopped by a signal.
//!
//! Each test starts `shutdown serve` itself and signals only that process, by its pid.

mod common;

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use common::{example, next_line, text};
use microkit::proto::greeter::GreetingsRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit_backend::{BackendArgs, BackendChoice};
use microkit_testing::NatsServer;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// Long enough to turn a hang into a failure; nothing here is timed.
const LIMIT: Duration = Duration::from_secs(30);

/// The phases after the signal when nothing is in flight, in order.
const CLEAN_STOP: [&str; 7] = [
    "0. not serving: health reports NOT_SERVING; in the registry: yes",
    "1. deregister: heartbeat stopped; in the registry: no",
    "2. stop accepting: the listener closes, open connections are told to finish",
    "3. drain: waiting up to 5000ms for the calls in flight",
    "   drained: every call in flight finished",
    "4. stop background tasks: the reporter's last count is 0 calls served",
    "5. exit 0",
];

/// A `shutdown serve` process, ready: it has printed where it listens.
struct Serving {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    /// `127.0.0.1:<port>`.
    addr: String,
}

impl Serving {
    /// The memory backend: the registry lives and dies with the process.
    async fn start(args: &[&str]) -> Serving {
        let mut command = example("shutdown");
        command.arg("serve").args(args).env("MICRO_BACKEND", "memory");
        Self::spawn(command).await
    }

    /// NATS backend on `nats_url`: the registry outlives the process, others can read it.
    async fn start_on_nats(nats_url: &str, args: &[&str]) -> Serving {
        let mut command = example("shutdown");
        command.arg("serve").args(args).env("MICRO_BACKEND", "nats").env("NATS_URL", nats_url);
        Self::spawn(command).await
    }

    async fn spawn(mut command: tokio::process::Command) -> Serving {
        let mut child = command.stdout(Stdio::piped()).spawn().expect("starting shutdown serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = next_line(&mut stdout).await;
        assert!(ready.starts_with("ready: node "), "{ready}");
        assert!(ready.ends_with("in the registry: yes"), "{ready}");
        let listening = next_line(&mut stdout).await;
        let addr = listening
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {listening:?}"))
            .to_owned();
        Serving { child, stdout, addr }
    }

    /// Sends `signal` (TERM, INT, HUP) to this process, and only to it.
    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the process is still running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    async fn next_line(&mut self) -> String {
        next_line(&mut self.stdout).await
    }

    /// Waits for the exit; returns the status, the rest of stdout, and stderr.
    async fn finish(mut self) -> (ExitStatus, Vec<String>, String) {
        let mut rest = Vec::new();
        while let Some(line) = tokio::time::timeout(LIMIT, self.stdout.next_line())
            .await
            .expect("stdout stayed open")
            .unwrap()
        {
            rest.push(line);
        }
        let status =
            tokio::time::timeout(LIMIT, self.child.wait()).await.expect("no exit").unwrap();
        let mut stderr = Vec::new();
        self.child.stderr.take().unwrap().read_to_end(&mut stderr).await.unwrap();
        (status, rest, text(&stderr))
    }
}

/// The ids of the `shutdown-greeter` nodes, as another process sees them in the NATS registry.
async fn greeter_ids(nats_url: &str) -> Vec<String> {
    let backend = BackendArgs { backend: BackendChoice::Nats };
    let backend = backend.connect_with(Some(nats_url)).await.expect("reaching the test's NATS");
    let nodes =
        registry::on(&backend).nodes("shutdown-greeter").await.expect("reading the registry");
    nodes.into_iter().map(|node| node.id).collect()
}

#[tokio::test]
async fn sigterm_stops_it_in_order_and_it_leaves_the_registry() {
    let nats = NatsServer::start().await.expect("this test needs nats-server");
    let serving = Serving::start_on_nats(&nats.url(), &["--node", "shutdown-t1"]).await;
    assert_eq!(greeter_ids(&nats.url()).await, ["shutdown-t1"], "listed while it serves");

    serving.signal("TERM");
    let (status, lines, stderr) = serving.finish().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert_eq!(lines[0], "shutdown signal: SIGTERM");
    assert_eq!(lines[1..], CLEAN_STOP, "stderr:\n{stderr}");
    // Checked at once: well within the node's TTL, so it left by deregistering, not expiry.
    assert!(greeter_ids(&nats.url()).await.is_empty(), "the node is still registered");
}

#[tokio::test]
async fn sigterm_stops_it_in_order_and_exits_0() {
    stops_cleanly_on("TERM", "SIGTERM").await;
}

#[tokio::test]
async fn ctrl_c_stops_it_the_same_way() {
    stops_cleanly_on("INT", "ctrl-c").await;
}

#[tokio::test]
async fn sighup_stops_it_the_same_way() {
    // The terminal that started it closed: a stop request like the others, not a crash.
    stops_cleanly_on("HUP", "SIGHUP").await;
}

/// Sends `signal` (as `kill` names it) and expects every phase, then exit 0.
async fn stops_cleanly_on(signal: &str, printed_as: &str) {
    let serving = Serving::start(&[]).await;
    serving.signal(signal);
    let (status, lines, stderr) = serving.finish().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert_eq!(lines[0], format!("shutdown signal: {printed_as}"));
    assert_eq!(lines[1..], CLEAN_STOP, "stderr:\n{stderr}");
}

/// Opens an endless stream on the served process and waits for its first message.
async fn open_endless_stream(addr: &str) -> tonic::Streaming<microkit::proto::greeter::HelloReply> {
    let mut client = GreeterClient::connect(format!("http://{addr}")).await.unwrap();
    let request = GreetingsRequest { name: "night-owl".into(), count: 0, interval_ms: 20 };
    let mut stream = client.greetings(request).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
    stream
}

/// Reads the stream to its end; `true` when it ended cleanly, `false` when it was cut.
async fn ends_cleanly(mut stream: tonic::Streaming<microkit::proto::greeter::HelloReply>) -> bool {
    tokio::time::timeout(LIMIT, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    })
    .await
    .expect("the stream neither ended nor was cut")
}

#[tokio::test]
async fn a_second_sigterm_during_the_drain_forces_the_exit() {
    second_signal_during_the_drain_forces_the_exit(("TERM", "SIGTERM"), ("TERM", "SIGTERM")).await;
}

#[tokio::test]
async fn any_second_signal_forces_the_exit_whatever_the_first() {
    second_signal_during_the_drain_forces_the_exit(("INT", "ctrl-c"), ("HUP", "SIGHUP")).await;
}

/// Each signal as `kill` names it and as the example prints it.
async fn second_signal_during_the_drain_forces_the_exit(
    (first, first_name): (&str, &str),
    (second, second_name): (&str, &str),
) {
    let mut serving = Serving::start(&[]).await;
    let mut stream = open_endless_stream(&serving.addr).await;

    serving.signal(first);
    assert_eq!(serving.next_line().await, format!("shutdown signal: {first_name}"));
    assert_eq!(serving.next_line().await, CLEAN_STOP[0]);
    assert_eq!(serving.next_line().await, CLEAN_STOP[1]);
    assert_eq!(serving.next_line().await, CLEAN_STOP[2]);
    assert_eq!(serving.next_line().await, CLEAN_STOP[3]);

    // Draining: the listener is gone (new connections are refused) ...
    let refused = tokio::time::timeout(LIMIT, async {
        while tokio::net::TcpStream::connect(&serving.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "the listener still accepts during the drain");
    // ... while the call in flight still runs: the drain waits for it.
    assert!(stream.message().await.unwrap().is_some(), "the open stream was cut too early");

    serving.signal(second);
    let (status, rest, stderr) = serving.finish().await;
    assert_eq!(status.code(), Some(1), "a forced exit is not a success; stderr:\n{stderr}");
    assert!(rest.is_empty(), "no phase after a forced exit: {rest:?}");
    let forced = format!("error: forced exit: a second {second_name} arrived during the drain");
    assert!(stderr.contains(&forced), "{stderr}");
    assert!(!ends_cleanly(stream).await, "the stream must be cut, not finished");
}

#[tokio::test]
async fn the_drain_deadline_cuts_an_open_stream_and_still_exits_0() {
    let serving = Serving::start(&["--drain-ms", "300"]).await;
    let stream = open_endless_stream(&serving.addr).await;

    serving.signal("TERM");
    let (status, lines, stderr) = serving.finish().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    let expected = [
        "shutdown signal: SIGTERM",
        CLEAN_STOP[0],
        CLEAN_STOP[1],
        CLEAN_STOP[2],
        "3. drain: waiting up to 300ms for the calls in flight",
        "   deadline passed: the calls still open were cut",
        "4. stop background tasks: the reporter's last count is 1 call served",
        "5. exit 0",
    ];
    assert_eq!(lines, expected);
    assert!(!ends_cleanly(stream).await, "the stream past the deadline is cut");
}
