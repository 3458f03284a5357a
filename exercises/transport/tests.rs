use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use microkit::proto::greeter::{HelloReply, HelloRequest};
use microkit_backend::{BackendArgs, BackendChoice};
use microkit_testing::NatsServer;
use prost::Message;

use crate::bus::{self, Answer, Bus, CallError, Ping};
use crate::memory::{Envelope, MemoryBus};
use crate::service::{METHOD, Refusal, SERVICE, on_message, say_hello, serve_over_nats};
use crate::story::{CALLS, Tally, demo};

#[test]
fn the_handler_refuses_an_empty_name_and_a_payload_that_is_not_a_request() {
    let refused = say_hello("n", HelloRequest { name: "  ".into() }).unwrap_err();
    assert_eq!(refused, Refusal { code: 400, reason: "name is empty".into() });
    // Field 1 announced as 5 bytes long, with 1 byte after it.
    let refused = on_message("n", &[0x0a, 0x05, b'a']).unwrap_err();
    assert_eq!(refused.code, 400);
    assert!(refused.reason.starts_with("not a HelloRequest"), "{refused:?}");
    let reply = HelloReply::decode(on_message("n", &[0x0a, 0x02, b'b', b'o']).unwrap()).unwrap();
    assert_eq!((reply.message.as_str(), reply.node.as_str()), ("hello bo", "n"));
}

/// What the story must see on either backend (NATS's queue group shares at random, so only
/// the totals are fixed there).
fn check(tally: &Tally) {
    let both = |a, b| BTreeMap::from([("greeter-1".to_owned(), a), ("greeter-2".to_owned(), b)]);
    assert_eq!(tally.http2, both(16, 16), "the round robin alternates");
    assert_eq!(tally.nats.len(), 2, "both instances took a share: {:?}", tally.nats);
    assert_eq!(tally.nats.values().sum::<usize>(), CALLS);
    assert_eq!(tally.after_stop, BTreeMap::from([("greeter-1".to_owned(), CALLS / 4)]));
    // 32 calls and the refused one reached the instances before STATS was asked ...
    assert_eq!(tally.stats, (CALLS as u64 + 1, 1));
    // ... and 8 more after; each instance counts what it served as it stops.
    assert_eq!(tally.served, CALLS as u64 + 1 + CALLS as u64 / 4);
    assert_eq!(tally.lost, 0);
}

#[tokio::test]
async fn the_story_on_the_memory_backend() {
    let backend = BackendArgs { backend: BackendChoice::Memory }.connect_with(None).await.unwrap();
    check(&demo(&backend).await.unwrap());
}

#[tokio::test]
async fn the_story_on_nats_through_the_real_service_protocol() {
    let server = NatsServer::start().await.expect("these tests need nats-server installed");
    let choice = BackendArgs { backend: BackendChoice::Nats };
    let backend = choice.connect_with(Some(&server.url())).await.unwrap();
    check(&demo(&backend).await.unwrap());
}

#[tokio::test]
async fn the_memory_bus_gives_each_request_to_one_queue_member_and_every_plain_subscriber() {
    let bus = MemoryBus::new();
    let mut members = [bus.subscribe("s", Some("q")), bus.subscribe("s", Some("q"))];
    let mut watcher = bus.subscribe("s", None);
    for n in 0..10u8 {
        let delivered = bus.publish(Envelope::new("s", None, Bytes::from(vec![n])));
        assert_eq!(delivered, 2, "one queue member and the watcher");
    }
    let mut taken = [0, 0];
    for (member, count) in members.iter_mut().zip(&mut taken) {
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(10), member.next()).await
        {
            *count += 1;
        }
    }
    assert_eq!(taken.iter().sum::<usize>(), 10, "each message to exactly one member: {taken:?}");
    assert!(taken.iter().all(|&n| n > 0), "both members shared: {taken:?}");
    for n in 0..10u8 {
        assert_eq!(watcher.next().await.unwrap().payload, Bytes::from(vec![n]), "in order");
    }
}

#[tokio::test]
async fn the_memory_bus_says_no_responders_at_once_once_the_last_member_leaves() {
    let bus = MemoryBus::new();
    let member = bus.subscribe("s", Some("q"));
    drop(member);
    let started = std::time::Instant::now();
    assert!(matches!(bus.request("s", Bytes::new()).await, Err(CallError::NoResponders)));
    assert!(started.elapsed() < Duration::from_secs(1), "it did not wait for a reply");
}

#[tokio::test]
async fn a_memory_instance_answers_discovery_and_counts_what_it_served() {
    let bus = MemoryBus::new();
    let client = Bus::Memory(bus.clone());
    let instance = serve_over_nats(&client, "only").await.unwrap();
    let pings: Vec<Ping> = bus::parse_all(client.gather("$SRV.PING").await.unwrap());
    assert_eq!(pings.iter().map(bus::node_of).collect::<Vec<_>>(), ["only"]);
    let answer = client.request(&format!("{SERVICE}.{METHOD}"), Bytes::new()).await.unwrap();
    let Answer::ServiceError { code, description } = answer else { panic!("{answer:?}") };
    assert_eq!((code.as_str(), description.as_str()), ("400", "name is empty"));
    assert_eq!(instance.stop().await.unwrap(), 1);
    assert!(client.gather("$SRV.PING").await.unwrap().is_empty(), "it left discovery");
}

#[test]
fn bad_flags_are_refused() {
    for flags in [
        &["serve", "--id", "two words"][..],
        &["serve", "--id", "a.b"],
        &["client", "--calls", "0"],
        &["client", "--name", ""],
    ] {
        let args = ["transport"].iter().chain(flags);
        assert!(crate::Args::try_parse_from(args).is_err(), "{flags:?} was accepted");
    }
}

#[test]
fn discovery_answers_need_only_the_fields_read_and_an_odd_one_is_skipped() {
    let answers = [
        r#"{"type":"io.nats.micro.v1.ping_response","name":"s","id":"A","version":"1.0.0"}"#,
        r#"{"name":"s","id":"B","version":"1.0.0"}"#, // the preview dialect: no type
        r#"{"name":"s"}"#,
        "not json",
    ];
    let pings: Vec<Ping> = bus::parse_all(answers.iter().map(|a| Bytes::from(*a)).collect());
    let ids: Vec<&str> = pings.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["A", "B"]);
}
