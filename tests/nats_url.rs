//! `NATS_URL` naming a cluster: the comma-separated server list of nats.go and the `nats`
//! tool. An example given all three nodes of a cluster whose first node is down connects to
//! another and prints its usual output.

mod common;

use std::time::Duration;

use common::{example, run_within, text};
use microkit::nats::{INSTALL_HINT, NatsCluster};

/// Only turns a hang into a failure.
const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn an_example_runs_on_a_cluster_named_by_a_list_whose_first_node_is_down() {
    let mut cluster = NatsCluster::start(3).await.expect(INSTALL_HINT);
    cluster.nodes[0].stop().await.unwrap();
    // As a learner would write it, with a space after each comma.
    let list = cluster.urls().join(", ");
    let mut command = example("broker");
    command.env("MICRO_BACKEND", "nats").env("NATS_URL", &list);
    let output = run_within(command, LIMIT).await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{list}: {stderr}");
    common::golden::compare("broker", &stdout).unwrap_or_else(|difference| panic!("{difference}"));
}
