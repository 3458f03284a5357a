//! sharding across real processes: three `server` processes on a private nats-server, and
//! separate `client` processes. Every call of one user lands on one node, and two client
//! processes agree on that node: the hash is stable, not per process.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{example, run_within, text};
use microkit_testing::NatsServer;

const PATIENCE: Duration = Duration::from_secs(30);

/// The node of every call line a `client` run printed.
async fn client_nodes(nats: &NatsServer, args: &[&str]) -> Vec<String> {
    let mut command = example("sharding");
    command.env("NATS_URL", nats.url()).arg("client").args(args);
    let output = run_within(command, PATIENCE).await;
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", text(&output.stderr));
    let (calls, tally) = stdout.trim_end().rsplit_once('\n').unwrap_or_default();
    let nodes: Vec<String> =
        calls.lines().map(|line| line.rsplit(": ").next().unwrap().to_owned()).collect();
    assert_eq!(tally, format!("{} calls, 0 failed", nodes.len()), "{stdout}");
    nodes
}

#[tokio::test]
async fn one_user_one_node_across_client_processes() {
    let nats = NatsServer::start().await.unwrap();
    let names = ["greeter-a", "greeter-b", "greeter-c"];
    let _servers = common::greeter_servers("sharding", &nats.url(), &names, &[]).await; // killed on drop

    let first = client_nodes(&nats, &["--user", "ada", "--calls", "20"]).await;
    let second = client_nodes(&nats, &["--user", "ada", "--calls", "20"]).await;
    assert_eq!(first.len(), 20);
    assert!(first.iter().chain(&second).all(|node| node == &first[0]), "{first:?} {second:?}");

    let anonymous = client_nodes(&nats, &["--calls", "6"]).await;
    let distinct: BTreeSet<&String> = anonymous.iter().collect();
    assert_eq!(distinct.len(), 3, "no header: round robin over all three: {anonymous:?}");
}

#[tokio::test]
async fn a_user_that_cannot_travel_as_a_header_is_refused_saying_why() {
    let mut command = example("sharding");
    command.args(["client", "--user", "é"]);
    let output = run_within(command, PATIENCE).await;
    assert_eq!(output.status.code(), Some(2), "a bad flag, refused before anything runs");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("x-from-user must be printable ASCII"), "{stderr}");
    assert!(output.stdout.is_empty(), "no call claimed affinity");
}
