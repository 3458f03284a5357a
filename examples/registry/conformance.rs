//! One suite, two registries: every behaviour a client relies on is checked against the
//! in-process [`MemoryRegistry`] and the NATS [`NatsRegistry`] alike, in real time, so
//! an example behaves the same whichever backend it runs on.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use microkit_testing::NatsServer;
use registry::{Change, MemoryRegistry, Node, Registration, Registry};
use registry::{DEFAULT_BUCKET, NatsRegistry};

const TTL: Duration = Duration::from_millis(900);
/// Only turns a hang into a failure.
const PATIENCE: Duration = Duration::from_secs(10);

/// A registry, and the private server behind it (if any) kept alive for the test.
struct Fixture {
    registry: Arc<dyn Registry>,
    nats: Option<(NatsServer, async_nats::Client)>,
}

fn in_memory() -> Fixture {
    Fixture { registry: Arc::new(MemoryRegistry::new()), nats: None }
}

async fn on_nats() -> Fixture {
    let server = NatsServer::start().await.unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    Fixture { registry: Arc::new(NatsRegistry::new(client.clone())), nats: Some((server, client)) }
}

fn node(id: &str) -> Node {
    Node::new("greeter", id, format!("127.0.0.1:{}", 9000 + id.len()))
}

async fn ids(registry: &Arc<dyn Registry>) -> Vec<String> {
    registry.nodes("greeter").await.unwrap().into_iter().map(|n| n.id).collect()
}

async fn next(changes: &mut BoxStream<'static, Change>) -> Change {
    tokio::time::timeout(PATIENCE, changes.next())
        .await
        .expect("a change within the patience limit")
        .expect("the watch stays open")
}

fn left(id: &str) -> Change {
    Change::Left { service: "greeter".into(), id: id.into() }
}

async fn lists_registered_nodes_sorted_and_per_service(f: Fixture) {
    let registry = f.registry;
    registry.register(&node("b"), TTL).await.unwrap();
    registry.register(&node("a"), TTL).await.unwrap();
    registry.register(&Node::new("other", "x", "127.0.0.1:1"), TTL).await.unwrap();
    assert_eq!(ids(&registry).await, ["a", "b"]);
    assert_eq!(registry.nodes("greeter").await.unwrap()[0], node("a"), "address kept");
    assert!(registry.nodes("missing").await.unwrap().is_empty());
}

async fn deregister_removes_at_once(f: Fixture) {
    let registry = f.registry;
    registry.register(&node("a"), TTL).await.unwrap();
    registry.register(&node("b"), TTL).await.unwrap();
    registry.deregister("greeter", "a").await.unwrap();
    assert_eq!(ids(&registry).await, ["b"]);
    registry.deregister("greeter", "a").await.unwrap(); // unknown now: not an error
}

async fn a_node_without_heartbeat_expires_and_one_with_it_lives(f: Fixture) {
    let registry = f.registry;
    let _beating = Registration::start(registry.clone(), node("beating"), TTL).await.unwrap();
    registry.register(&node("silent"), TTL).await.unwrap();
    assert_eq!(ids(&registry).await, ["beating", "silent"]);
    tokio::time::sleep(TTL * 2).await;
    assert_eq!(ids(&registry).await, ["beating"]);
}

async fn watch_reports_current_nodes_then_joins_and_leaves(f: Fixture) {
    let registry = f.registry;
    registry.register(&node("a"), TTL * 10).await.unwrap();
    let mut changes = registry.watch("greeter").await.unwrap();
    assert_eq!(next(&mut changes).await, Change::Joined(node("a")));

    registry.register(&node("a"), TTL * 10).await.unwrap(); // a heartbeat: no news
    registry.register(&Node::new("other", "x", "127.0.0.1:1"), TTL).await.unwrap(); // not ours
    registry.register(&node("b"), TTL).await.unwrap();
    assert_eq!(next(&mut changes).await, Change::Joined(node("b")));
    registry.deregister("greeter", "a").await.unwrap();
    assert_eq!(next(&mut changes).await, left("a"));
    // b sends no heartbeat: its TTL runs out and the watcher is told.
    assert_eq!(next(&mut changes).await, left("b"));
}

async fn a_watch_opens_with_the_nodes_listed_now_sorted_by_id(f: Fixture) {
    let registry = f.registry;
    let _b = Registration::start(registry.clone(), node("b"), TTL).await.unwrap();
    let _a = Registration::start(registry.clone(), node("a"), TTL).await.unwrap();
    // A lease and a half: b's heartbeat is now the newest write, whatever the order before.
    tokio::time::sleep(TTL * 3 / 2).await;
    for _ in 0..3 {
        let mut changes = registry.watch("greeter").await.unwrap();
        assert_eq!(next(&mut changes).await, Change::Joined(node("a")));
        assert_eq!(next(&mut changes).await, Change::Joined(node("b")));
        tokio::time::sleep(TTL / 3).await; // another round of heartbeats
    }
}

async fn a_watcher_hears_a_crashed_registration_leave(f: Fixture) {
    let registry = f.registry;
    let mut changes = registry.watch("greeter").await.unwrap();
    let registration = Registration::start(registry.clone(), node("a"), TTL).await.unwrap();
    assert_eq!(next(&mut changes).await, Change::Joined(node("a")));
    tokio::time::sleep(TTL * 2).await;
    assert_eq!(ids(&registry).await, ["a"], "the heartbeat keeps it past its TTL");
    drop(registration); // no deregister: the heartbeat just stops, as in a crash
    assert_eq!(next(&mut changes).await, left("a"));
    assert!(ids(&registry).await.is_empty());
}

/// A listing taken while heartbeats rewrite keys holds every node once. On NATS, a listing
/// read from a replay of the keys (a watch's first values, or the bucket's `keys()`) can end
/// early while keys are rewritten, missing one node and holding another twice.
async fn lists_each_node_once_while_heartbeats_rewrite_keys(f: Fixture) {
    let registry = f.registry;
    for id in ["a", "b", "c"] {
        registry.register(&node(id), TTL * 10).await.unwrap();
    }
    let beating = registry.clone();
    let beats = tokio::spawn(async move {
        loop {
            for id in ["a", "b"] {
                beating.register(&node(id), TTL * 10).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    for listing in 1..=100 {
        assert_eq!(ids(&registry).await, ["a", "b", "c"], "listing {listing}");
    }
    beats.abort();
}

macro_rules! conformance {
    ($($behaviour:ident),* $(,)?) => {
        mod in_memory {
            $( #[tokio::test] async fn $behaviour() { super::$behaviour(super::in_memory()).await } )*
        }
        mod nats {
            $( #[tokio::test] async fn $behaviour() { super::$behaviour(super::on_nats().await).await } )*
        }
    };
}

conformance!(
    lists_registered_nodes_sorted_and_per_service,
    deregister_removes_at_once,
    a_node_without_heartbeat_expires_and_one_with_it_lives,
    watch_reports_current_nodes_then_joins_and_leaves,
    a_watch_opens_with_the_nodes_listed_now_sorted_by_id,
    a_watcher_hears_a_crashed_registration_leave,
    lists_each_node_once_while_heartbeats_rewrite_keys,
);

/// What someone else wrote into the bucket is skipped, and the good nodes still show.
#[tokio::test]
async fn nats_entries_that_are_not_nodes_are_skipped() {
    let f = on_nats().await;
    let registry = f.registry;
    let (_server, client) = f.nats.unwrap();
    registry.register(&node("a"), TTL * 10).await.unwrap(); // creates the bucket
    let mut changes = registry.watch("greeter").await.unwrap();
    assert_eq!(next(&mut changes).await, Change::Joined(node("a")));

    let bucket = async_nats::jetstream::new(client).get_key_value(DEFAULT_BUCKET).await.unwrap();
    bucket.put("greeter.junk", "not json".into()).await.unwrap();
    let misfiled = serde_json::json!({ "node": node("elsewhere"), "ttl_ms": 60_000 });
    bucket.put("greeter.mismatch", misfiled.to_string().into()).await.unwrap();
    registry.register(&node("b"), TTL * 10).await.unwrap();

    assert_eq!(ids(&registry).await, ["a", "b"]);
    assert_eq!(next(&mut changes).await, Change::Joined(node("b")), "bad entries skipped");
}

/// The key and the JSON value of a node are a contract: peers in other languages read and
/// write the bucket directly (`notes/registry.md` spells the format out).
#[tokio::test]
async fn nats_keys_and_values_keep_the_format_peers_rely_on() {
    let f = on_nats().await;
    let registry = f.registry;
    let (_server, client) = f.nats.unwrap();
    let mut labelled = Node::new("greeter", "greeter-1", "127.0.0.1:50051");
    labelled.metadata.insert("version".into(), "1.2".into());
    registry.register(&labelled, Duration::from_millis(1500)).await.unwrap();
    registry.register(&Node::new("billing.eu", "node.1", "127.0.0.1:1"), TTL).await.unwrap();

    let bucket = async_nats::jetstream::new(client).get_key_value(DEFAULT_BUCKET).await.unwrap();
    let value = bucket.get("greeter.greeter-1").await.unwrap().expect("one key per node");
    assert_eq!(
        std::str::from_utf8(&value).unwrap(),
        r#"{"node":{"service":"greeter","id":"greeter-1","address":"127.0.0.1:50051","metadata":{"version":"1.2"}},"ttl_ms":1500}"#
    );
    // A dot would split a key into more tokens: it is escaped as `=2E`.
    assert!(bucket.get("billing=2Eeu.node=2E1").await.unwrap().is_some());
    registry.deregister("greeter", "greeter-1").await.unwrap();
    assert!(bucket.get("greeter.greeter-1").await.unwrap().is_none(), "deregister deletes it");
}
