//! The retry example as processes: hops a, b and c and a client, each its own program,
//! meeting through a private NATS registry. A client that gives up mid-chain must stop the
//! handler of every hop; a deadline must shrink from process to process and run out at c.

mod common;

use std::process::ExitStatus;
use std::time::Duration;

use common::{example, next_line, run_within, text};
use microkit_testing::NatsServer;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// Turns a hang into a failure; nothing here is paced by it.
const LIMIT: Duration = Duration::from_secs(30);

/// One hop process (`a`, `b` or `c`), serving: it has printed its first line.
struct Hop {
    id: &'static str,
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Hop {
    async fn start(nats: &NatsServer, id: &'static str, flags: &[&str]) -> Hop {
        let mut command = example("retry");
        command.arg(id).args(flags).env("NATS_URL", nats.url());
        let mut child = command.spawn().expect("starting a hop");
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = next_line(&mut stdout).await;
        assert!(first.starts_with(&format!("{id}: serving retry-{id}")), "{first}");
        Hop { id, child, stdout }
    }

    /// Reads lines until one satisfies `wanted`; returns it.
    async fn wait_for(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        loop {
            let line = next_line(&mut self.stdout).await;
            if wanted(&line) {
                return line;
            }
        }
    }

    /// SIGTERM to this process only; returns its exit status and the rest of its stdout.
    async fn stop(mut self) -> (ExitStatus, Vec<String>) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success(), "kill -TERM {pid}");
        let mut rest = Vec::new();
        while let Some(line) = tokio::time::timeout(LIMIT, self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("{} kept stdout open", self.id))
            .unwrap()
        {
            rest.push(line);
        }
        let exit = tokio::time::timeout(LIMIT, self.child.wait()).await.expect("no exit").unwrap();
        (exit, rest)
    }
}

/// c, b, a, started last to first (each finds the next one in the registry when called).
async fn chain(nats: &NatsServer, c_flags: &[&str]) -> [Hop; 3] {
    let c = Hop::start(nats, "c", c_flags).await;
    let b = Hop::start(nats, "b", &[]).await;
    let a = Hop::start(nats, "a", &[]).await;
    [a, b, c]
}

async fn client(nats: &NatsServer, flags: &[&str]) -> String {
    let mut command = example("retry");
    command.arg("client").args(flags).env("NATS_URL", nats.url());
    let output = run_within(command, LIMIT).await;
    assert!(output.status.success(), "client: {}", text(&output.stderr));
    text(&output.stdout)
}

/// "x: a call arrived with 950ms left" -> 950.
fn arrived_with(line: &str) -> u64 {
    let rest = line.split("arrived with ").nth(1).unwrap_or_else(|| panic!("{line}"));
    rest.trim_end_matches("ms left").parse().unwrap_or_else(|_| panic!("{line}"))
}

#[tokio::test]
async fn a_client_that_gives_up_mid_chain_stops_the_handler_of_all_three_hops() {
    let nats = NatsServer::start().await.expect("this test needs nats-server");
    // c works for a minute: only a cancel can end its handler within the test's patience.
    let mut hops = chain(&nats, &["--work-ms", "60000"]).await;
    let stdout = client(&nats, &["--deadline-ms", "60000", "--give-up-ms", "300"]).await;
    assert_eq!(stdout, "client: gave up after 300ms, dropping the call\n");
    for hop in &mut hops {
        let id = hop.id;
        hop.wait_for(|l| {
            l == format!("{id}: a call was cancelled by its caller: its handler was dropped")
        })
        .await;
    }
    // The job spawned with the handler's token stopped; the one without is left running.
    hops[2].wait_for(|l| l == "c: side jobs running: 0 with a token, 1 without").await;
    for hop in hops {
        let id = hop.id;
        let (exit, rest) = hop.stop().await;
        assert!(exit.success(), "{id}: {exit:?}");
        let tally = format!("{id}: 1 started, 0 replied, 0 out of time, 0 failed, 1 cancelled");
        assert_eq!(rest.last(), Some(&tally), "{id}: {rest:?}");
    }
}

#[tokio::test]
async fn the_deadline_shrinks_from_process_to_process_and_runs_out_at_c() {
    let nats = NatsServer::start().await.expect("this test needs nats-server");
    let mut hops = chain(&nats, &[]).await;
    assert_eq!(client(&nats, &["--deadline-ms", "1000"]).await, "client: done by c\n");
    let mut given = Vec::new();
    for hop in &mut hops {
        given.push(arrived_with(&hop.wait_for(|l| l.contains("arrived with")).await));
    }
    let [a, b, c] = given[..] else { unreachable!() };
    assert!(a <= 1000 && b < a && c < b, "given: a {a}, b {b}, c {c}");

    // 420 ms: enough to reach c, not for c's 200 ms of work after the margins.
    let stdout = client(&nats, &["--deadline-ms", "420"]).await;
    assert_eq!(stdout, "client: DeadlineExceeded \"c: the deadline passed during its work\"\n");
    for hop in hops {
        let id = hop.id;
        let (exit, rest) = hop.stop().await;
        assert!(exit.success(), "{id}: {exit:?}");
        let out_of_time =
            format!("{id}: 2 started, 1 replied, 1 out of time, 0 failed, 0 cancelled");
        assert_eq!(rest.last(), Some(&out_of_time), "{id}: {rest:?}");
    }
}

/// The client's deadline rules the whole chain, however long: no channel caps it below
/// what the `grpc-timeout` header tells every hop.
#[tokio::test]
async fn a_deadline_longer_than_five_seconds_is_kept_to_the_end() {
    let nats = NatsServer::start().await.expect("this test needs nats-server");
    let hops = chain(&nats, &["--work-ms", "6000"]).await;
    assert_eq!(client(&nats, &["--deadline-ms", "8000"]).await, "client: done by c\n");
    for hop in hops {
        let id = hop.id;
        let (exit, rest) = hop.stop().await;
        assert!(exit.success(), "{id}: {exit:?}");
        let replied = format!("{id}: 1 started, 1 replied, 0 out of time, 0 failed, 0 cancelled");
        assert_eq!(rest.last(), Some(&replied), "{id}: {rest:?}");
    }
}

#[tokio::test]
async fn the_roles_refuse_to_run_without_a_shared_nats() {
    let mut command = example("retry");
    command.arg("c").env("MICRO_BACKEND", "memory");
    let output = run_within(command, LIMIT).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("NATS_URL"), "{}", text(&output.stderr));
}
