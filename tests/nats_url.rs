//! `NATS_URL` naming a cluster: the comma-separated server list of nats.go and the `nats`
//! tool. An example given all three nodes of a cluster whose first node is down connects to
//! another and prints its usual output.

mod common;

use std::time::Duration;

use common::{example, run_within, text};
use microkit_testing::NatsCluster;

/// Only turns a hang into a failure.
const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn an_example_runs_on_a_cluster_named_by_a_list_whose_first_node_is_down() {
    let mut cluster = NatsCluster::start(3).await.unwrap();
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

#[tokio::test]
async fn the_backend_and_the_broker_take_a_list_whose_first_node_is_down() {
    use futures::StreamExt;
    use microkit_backend::{Backend, BackendArgs, BackendChoice};
    let mut cluster = NatsCluster::start(3).await.unwrap();
    cluster.nodes[0].stop().await.unwrap();
    let list = cluster.urls().join(",");
    let args = BackendArgs { backend: BackendChoice::Auto };
    let backend = args.connect_with(Some(&list)).await.unwrap();
    let Backend::Nats { client, url, server } = &backend else { panic!("not NATS") };
    assert_eq!((url, server.is_none()), (&list, true));
    client.flush().await.unwrap();
    // The broker takes the same list: a message goes out and comes back through it.
    let broker = broker::on(&backend).await.unwrap();
    let mut messages = broker.subscribe("list.check", None).await.unwrap();
    broker.publish("list.check", Default::default(), "hi".into()).await.unwrap();
    let message = tokio::time::timeout(microkit::PATIENCE, messages.next()).await.unwrap();
    assert_eq!(&message.unwrap().payload[..], b"hi");
}
