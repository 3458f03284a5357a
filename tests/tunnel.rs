//! The tunnel example as two processes: node-b in one, node-a in another, joined by a real
//! link; node-b's graceful stop on SIGTERM; and node-a's clear failure when there is no
//! node-b to link up with.

mod common;

use std::time::Duration;

use common::{example, run_within, text};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

const LIMIT: Duration = Duration::from_secs(30);

/// Starts `command` and returns the child with the address it announced on its first line
/// (the last word before `;`), and the rest of its stdout, kept open so it can print more.
async fn start_announcing(
    mut command: tokio::process::Command,
) -> (Child, String, Lines<BufReader<ChildStdout>>) {
    let mut child = command.spawn().expect("spawning an example");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(LIMIT, lines.next_line())
        .await
        .expect("the server must announce its address")
        .unwrap()
        .expect("a first line");
    let addr = first.split(';').next().unwrap().split_whitespace().last().unwrap().to_owned();
    (child, addr, lines)
}

#[tokio::test]
async fn node_a_calls_node_b_in_another_process_through_the_tunnel() {
    let mut node_b = example("tunnel");
    node_b.args(["node-b", "--listen", "127.0.0.1:0"]);
    let (mut node_b, addr, rest) = start_announcing(node_b).await;

    let mut node_a = example("tunnel");
    node_a.args(["node-a", "--connect", &addr, "--names", "ada,bo,cy"]);
    let output = run_within(node_a, LIMIT).await;
    assert!(output.status.success(), "node-a failed: {}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        "  hello ada, answered by node-b\n  hello bo, answered by node-b\n  hello cy, answered by node-b\n"
    );

    // Stopped as any long-running role is: it finishes what is in flight, says what it
    // did, and exits 0.
    let pid = node_b.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(LIMIT, node_b.wait()).await.expect("node-b stops").unwrap();
    assert!(status.success(), "node-b after SIGTERM: {status}");
    let mut tally = String::new();
    rest.into_inner().read_to_string(&mut tally).await.unwrap();
    assert_eq!(tally, "node-b stopped: 1 link(s), 3 session(s) served, every call finished\n");
}

#[tokio::test]
async fn node_a_without_node_b_says_where_it_looked() {
    // A port that was free a moment ago: nobody listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut node_a = example("tunnel");
    node_a.args(["node-a", "--connect", &addr.to_string()]);
    let output = run_within(node_a, LIMIT).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains(&format!("cannot link up with node-b at {addr}")), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
