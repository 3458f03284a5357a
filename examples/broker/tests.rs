use std::collections::BTreeMap;

use clap::Parser;
use microkit_backend::{Backend, BackendArgs, BackendChoice};
use microkit_testing::NatsServer;

use crate::Args;
use crate::story::{GroupShare, Observed, observe, order_headers};

async fn on(choice: BackendChoice, server: Option<&NatsServer>) -> Backend {
    let args = BackendArgs { backend: choice };
    args.connect_with(server.map(NatsServer::url).as_deref()).await.unwrap()
}

/// Every rule the default run prints, checked on the values behind the lines.
fn assert_the_rules_hold(seen: &Observed, messages: u32) {
    assert_eq!(seen.handled_while_held, 0, "publish waited for a handler");
    for name in ["a", "b"] {
        assert!(seen.in_publish_order(name), "{name}: {:?}", seen.got(name));
    }
    assert_eq!(
        seen.queue_group(),
        GroupShare { distinct: messages as usize, twice: 0 },
        "one copy per group"
    );
    assert_eq!(seen.delivered(), 3 * messages as usize);
    assert_eq!(seen.bad_headers, 0);
    assert_eq!(seen.example_headers, Some(order_headers(1)));
    assert_eq!(seen.order_zero_delivered(), 0, "a message nobody heard stays lost");
    assert_eq!(seen.dropped, 0);
}

#[tokio::test]
async fn the_rules_hold_in_memory() {
    let seen = observe(&on(BackendChoice::Memory, None).await, 10).await.unwrap();
    assert_the_rules_hold(&seen, 10);
}

#[tokio::test]
async fn the_rules_hold_on_nats() {
    let server = NatsServer::start().await.unwrap();
    let seen = observe(&on(BackendChoice::Nats, Some(&server)).await, 10).await.unwrap();
    assert_the_rules_hold(&seen, 10);
}

#[tokio::test]
async fn many_messages_on_nats_lose_nothing() {
    let server = NatsServer::start().await.unwrap();
    let seen = observe(&on(BackendChoice::Nats, Some(&server)).await, 5000).await.unwrap();
    assert_the_rules_hold(&seen, 5000);
}

#[test]
fn the_accounting_notices_what_a_broken_broker_would_do() {
    let seen = Observed {
        messages: 3,
        seqs: BTreeMap::from([
            ("a", vec![1, 3, 2]),
            ("b", vec![1, 2]),
            ("w1", vec![1, 2]),
            ("w2", vec![2, 3, 0]),
        ]),
        ..Observed::default()
    };
    assert!(!seen.in_publish_order("a"), "reordered");
    assert!(!seen.in_publish_order("b"), "one missing");
    assert_eq!(
        seen.queue_group(),
        GroupShare { distinct: 4, twice: 1 },
        "order 2 reached both members"
    );
    assert_eq!(seen.order_zero_delivered(), 1);
}

#[test]
fn a_bad_message_count_is_refused() {
    for bad in ["0", "-1", "lots", "100001"] {
        assert!(Args::try_parse_from(["broker", "--messages", bad]).is_err(), "{bad}");
    }
}
