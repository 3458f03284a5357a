use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use microkit::PATIENCE;
use microkit::greeter::GREETER;
use microkit::health::Health;
use registry::{MemoryRegistry, Registry};
use tonic::transport::Channel;

use crate::readiness::{GreeterNode, SERVICE, follow_dependency};
use crate::story::{list_services, probe};
use crate::{Args, run};

async fn until(health: &Health, serving: bool) {
    let mut statuses = health.subscribe();
    tokio::time::timeout(PATIENCE, statuses.wait_for(|s| *s == serving))
        .await
        .expect("the node's health follows its dependency")
        .unwrap();
}

#[tokio::test]
async fn readiness_follows_the_dependency_and_an_unreachable_one_is_not_ready() {
    let store = microkit::greeter::serve("store").await.unwrap();
    let health = Health::new(&[GREETER]);
    let channel = Channel::from_shared(store.url()).unwrap().connect_lazy();
    let follower = tokio::spawn(follow_dependency(channel, health.clone()));
    until(&health, true).await;
    store.health().unwrap().set_serving(false).await;
    until(&health, false).await;
    store.health().unwrap().set_serving(true).await;
    until(&health, true).await;
    store.shutdown().await.unwrap();
    until(&health, false).await;
    follower.abort();
}

#[tokio::test]
async fn while_stopping_ready_is_503_live_stays_200_and_the_node_is_still_listed() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let node = GreeterNode::start(&registry, "n1", Duration::from_secs(5)).await.unwrap();
    let probes = probe(&node.probes).await.unwrap();
    assert_eq!((probes.live, probes.ready), (200, 200));
    node.grpc.not_serving().await;
    let probes = probe(&node.probes).await.unwrap();
    assert_eq!((probes.live, probes.ready), (200, 503));
    assert_eq!(registry.nodes(SERVICE).await.unwrap().len(), 1);
    node.grpc.deregister_and_drain().await.unwrap();
    assert!(registry.nodes(SERVICE).await.unwrap().is_empty());
}

#[tokio::test]
async fn reflection_lists_the_greeter_and_the_standard_services() {
    let server = microkit::greeter::serve("n1").await.unwrap();
    let channel = Channel::from_shared(server.url()).unwrap().connect_lazy();
    let names = list_services(channel).await.unwrap();
    assert_eq!(
        names,
        ["greeter.v1.Greeter", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"]
    );
}

#[tokio::test]
async fn roles_refuse_to_run_without_a_shared_nats() {
    let args = Args::parse_from(["health", "--backend", "memory", "node", "--id", "n1"]);
    let error = run(args).await.unwrap_err().to_string();
    assert!(error.contains("NATS_URL"), "{error}");
}

#[test]
fn bad_flags_are_refused() {
    assert!(Args::try_parse_from(["health", "node"]).is_err(), "--id is required");
    assert!(Args::try_parse_from(["health", "--ttl-ms", "5"]).is_err());
}
