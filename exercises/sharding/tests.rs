use std::sync::Arc;

use clap::Parser;
use health::LiveNodes;
use microkit::PATIENCE;
use microkit::proto::greeter::greeter_client::GreeterClient;
use registry::{MemoryRegistry, Node, Registered, Registry};
use round_robin::{SERVICE, start_node};
use sharding::hashing::{crc32, crc32_modulo, fnv1a, moved_fraction, rendezvous};
use tonic::Status;
use tonic::body::Body;
use tower::ServiceExt;

use crate::affinity::{ShardRouter, USER_HEADER, hello};
use crate::story::{POPULATION, same_node_every_time};
use crate::{Args, TTL, run};

fn nodes(ids: &[&str]) -> Vec<Node> {
    ids.iter().map(|id| Node::new(SERVICE, id, "127.0.0.1:1")).collect()
}

fn population() -> Vec<String> {
    (0..POPULATION).map(|i| format!("user-{i}")).collect()
}

/// A memory registry with `names` registered, and a router that sees them all.
async fn cluster(names: &[&str]) -> (Arc<dyn Registry>, Vec<Registered>, ShardRouter) {
    let (registry, running, live) = round_robin::memory_cluster(names, TTL).await;
    (registry, running, ShardRouter::new(live))
}

#[tokio::test]
async fn every_user_reaches_one_node_over_many_calls() {
    let (_registry, _running, router) = cluster(&["n1", "n2", "n3"]).await;
    let mut client = GreeterClient::new(router);
    let mut used = std::collections::BTreeSet::new();
    for user in (0..30).map(|i| format!("u{i}")) {
        used.insert(same_node_every_time(&mut client, &user, 10).await.unwrap());
    }
    assert_eq!(used.len(), 3, "30 users spread over all three nodes");
}

#[tokio::test]
async fn a_joined_node_takes_over_only_the_users_it_wins() {
    let (registry, mut running, router) = cluster(&["n1", "n2", "n3"]).await;
    let mut client = GreeterClient::new(router.clone());
    let users: Vec<String> = (0..40).map(|i| format!("u{i}")).collect();
    let mut before = Vec::new();
    for user in &users {
        before.push(hello(&mut client, Some(user)).await.unwrap());
    }
    running.push(start_node(&registry, "n4", TTL).await.unwrap());
    router.nodes.wait_for_ids(&["n1", "n2", "n3", "n4"], PATIENCE).await.unwrap();
    let mut moved = 0;
    for (user, old) in users.iter().zip(&before) {
        let now = hello(&mut client, Some(user)).await.unwrap();
        if &now != old {
            assert_eq!(now, "n4", "{user} moved between old nodes");
            moved += 1;
        }
    }
    assert!((1..20).contains(&moved), "about a quarter moved, not {moved} of 40");
}

#[tokio::test]
async fn without_the_header_calls_go_round_robin() {
    let (_registry, _running, router) = cluster(&["n1", "n2", "n3"]).await;
    let mut client = GreeterClient::new(router);
    let mut turns = Vec::new();
    for _ in 0..6 {
        turns.push(hello(&mut client, None).await.unwrap());
    }
    assert_eq!(turns, ["n1", "n2", "n3", "n1", "n2", "n3"]);
}

#[tokio::test]
async fn no_node_is_unavailable_naming_the_service() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let live = LiveNodes::watch(&registry, SERVICE).await.unwrap();
    let mut client = GreeterClient::new(ShardRouter::new(live));
    let status = hello(&mut client, Some("ada")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("\"greeter\""), "{}", status.message());
}

#[tokio::test]
async fn a_user_that_is_not_printable_ascii_is_refused_not_sent_round_robin() {
    let (_registry, _running, router) = cluster(&["n1", "n2", "n3"]).await;
    let mut client = GreeterClient::new(router.clone());
    for user in ["é", "tab\there", "bell\u{7}"] {
        let status = hello(&mut client, Some(user)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{user:?}: {status:?}");
        assert!(status.message().contains("printable ASCII"), "{}", status.message());
    }
    // The router itself never treats an unreadable header as no header.
    let mut request = http::Request::new(Body::empty());
    let value = http::HeaderValue::from_bytes("é".as_bytes()).unwrap();
    request.headers_mut().insert(USER_HEADER, value);
    let error = router.clone().oneshot(request).await.unwrap_err();
    let status = error.downcast_ref::<Status>().expect("a Status");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
}

#[test]
fn adding_a_node_moves_about_one_in_n_and_only_to_it() {
    let users = population();
    for n in 2..=8 {
        let ids: Vec<String> = (0..=n).map(|i| format!("node-{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let (before, after) = (nodes(&ids[..n]), nodes(&ids));
        let moved = moved_fraction(&users, &before, &after, rendezvous);
        let ideal = 1.0 / (n + 1) as f64;
        assert!((moved - ideal).abs() < 0.02, "{n} -> {}: moved {moved}, ideal {ideal}", n + 1);
        for user in &users {
            let (old, new) =
                (rendezvous(user, &before).unwrap(), rendezvous(user, &after).unwrap());
            assert!(old.id == new.id || new.id == ids[n], "{user} moved between old nodes");
        }
        assert!(moved_fraction(&users, &before, &after, crc32_modulo) > 0.5);
    }
}

#[test]
fn removing_a_node_moves_only_its_users() {
    let users = population();
    let (before, after) = (nodes(&["a", "b", "c", "d"]), nodes(&["a", "b", "d"]));
    for user in &users {
        let old = rendezvous(user, &before).unwrap();
        if old.id != "c" {
            assert_eq!(rendezvous(user, &after).unwrap().id, old.id, "{user}");
        }
    }
}

#[test]
fn the_hashes_are_the_standard_ones() {
    assert_eq!(crc32(b"123456789"), 0xcbf4_3926); // the CRC-32 check value
    assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c); // FNV-1a 64 of "a"
}

#[tokio::test]
async fn roles_refuse_to_run_without_a_shared_nats() {
    let args = Args::parse_from(["sharding", "--backend", "memory", "server", "--name", "a"]);
    let error = run(args).await.unwrap_err().to_string();
    assert!(error.contains("NATS_URL"), "{error}");
}

#[test]
fn bad_flags_are_refused() {
    assert!(Args::try_parse_from(["sharding", "client", "--calls", "many"]).is_err());
    assert!(Args::try_parse_from(["sharding", "server"]).is_err(), "--name is required");
    let error = Args::try_parse_from(["sharding", "client", "--user", "é"]).unwrap_err();
    assert!(error.to_string().contains("printable ASCII"), "{error}");
}
