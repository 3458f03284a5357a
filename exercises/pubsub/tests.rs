use std::sync::{Arc, Mutex};

use broker::{Broker, Headers};
use bytes::Bytes;
use clap::Parser;
use microkit::PATIENCE;
use microkit::proto::events::{OrderPlaced, UserSignedUp};
use microkit_backend::{BackendArgs, BackendChoice};
use microkit_testing::NatsServer;
use prost::Message as _;
use tokio::sync::watch;

use crate::roles::until_stopped;
use crate::story::{Billed, Seen, Service, publish_orders, run_all_here, start};
use crate::typed_events::{Event, Tally, publish, subscribe};
use crate::{Args, run};

fn assert_every_service_got_its_share(seen: &Seen) {
    let users = vec!["ada".to_owned(), "grace".into(), "linus".into()];
    let tally = Tally { handled: 3, undecodable: 1 };
    let names: Vec<&str> = seen.broadcast.iter().map(|heard| heard.name.as_str()).collect();
    assert_eq!(names, ["mailer", "analytics"]);
    for heard in &seen.broadcast {
        assert_eq!((&heard.users, &heard.tally), (&users, &tally), "{}", heard.name);
    }
    let billed = Billed { orders: 6, twice: 0, cents: 21_000 };
    assert_eq!(seen.billing(), billed, "{:?}", seen.orders);
}

#[tokio::test]
async fn every_service_gets_its_share_in_memory() {
    let backend = BackendArgs { backend: BackendChoice::Memory }.connect_with(None).await;
    assert_every_service_got_its_share(&run_all_here(&backend.unwrap()).await.unwrap());
}

#[tokio::test]
async fn every_service_gets_its_share_on_nats() {
    let server = NatsServer::start().await.unwrap();
    let args = BackendArgs { backend: BackendChoice::Nats };
    let backend = args.connect_with(Some(&server.url())).await.unwrap();
    assert_every_service_got_its_share(&run_all_here(&backend).await.unwrap());
}

#[test]
fn billing_notices_an_order_charged_twice() {
    let orders = ["order-1 1000", "order-2 2000", "order-1 1000"];
    let seen = Seen { broadcast: Vec::new(), orders: orders.map(str::to_owned).to_vec() };
    assert_eq!(seen.billing(), Billed { orders: 2, twice: 1, cents: 3000 });
}

#[test]
fn the_bad_payload_really_is_not_protobuf() {
    assert!(UserSignedUp::decode(&[0xff_u8; 3][..]).is_err());
    let good = UserSignedUp { user_id: "ada".into(), email: "ada@example.com".into() };
    assert_eq!(UserSignedUp::decode(&good.encode_to_vec()[..]).unwrap(), good);
}

#[tokio::test]
async fn an_event_of_another_type_is_counted_and_skipped() {
    let broker = broker::MemoryBroker::new();
    let tally = watch::Sender::new(Tally::default());
    let handler =
        subscribe(&broker, "test", None, tally.clone(), |_: UserSignedUp| {}).await.unwrap();
    // An OrderPlaced on the sign-up topic: it might even decode, but its header says no.
    let headers = Headers::from([("event-type".to_owned(), OrderPlaced::TYPE.to_owned())]);
    let order = OrderPlaced { order_id: "o".into(), ..Default::default() };
    let payload = Bytes::from(order.encode_to_vec());
    broker.publish(UserSignedUp::TOPIC, headers, payload).await.unwrap();
    publish(&broker, &UserSignedUp::default()).await.unwrap();
    broker.drain().await.unwrap();
    assert_eq!(handler.finished().await, 2);
    assert_eq!(*tally.borrow(), Tally { handled: 1, undecodable: 1 });
}

#[tokio::test]
async fn a_message_without_an_event_type_is_counted_and_skipped() {
    let broker = broker::MemoryBroker::new();
    let tally = watch::Sender::new(Tally::default());
    let handled = Arc::new(Mutex::new(Vec::new()));
    let record = handled.clone();
    let handler = subscribe(&broker, "test", None, tally.clone(), move |e: UserSignedUp| {
        record.lock().unwrap().push(e.user_id)
    })
    .await
    .unwrap();
    // Both decode "successfully" as a UserSignedUp: an OrderPlaced's bytes (its
    // order_id lands in user_id) and no bytes at all. Neither says what it is.
    let order = OrderPlaced { order_id: "o-1".into(), ..Default::default() };
    for payload in [Bytes::from(order.encode_to_vec()), Bytes::new()] {
        assert!(UserSignedUp::decode(payload.clone()).is_ok());
        broker.publish(UserSignedUp::TOPIC, Headers::new(), payload).await.unwrap();
    }
    publish(&broker, &UserSignedUp { user_id: "ada".into(), ..Default::default() }).await.unwrap();
    broker.drain().await.unwrap();
    assert_eq!(handler.finished().await, 3);
    assert_eq!(*tally.borrow(), Tally { handled: 1, undecodable: 2 });
    assert_eq!(*handled.lock().unwrap(), ["ada"], "only the labelled event was handled");
}

#[tokio::test]
async fn a_subscriber_stops_at_max_events_with_its_tally() {
    let backend = BackendArgs { backend: BackendChoice::Memory }.connect_with(None).await;
    let backend = backend.unwrap();
    let broker = broker::on(&backend).await.unwrap();
    let running = start(&*broker, Service::Billing, "billing", true).await.unwrap();
    publish_orders(&*broker::on(&backend).await.unwrap(), 2).await.unwrap();
    let tally = tokio::time::timeout(PATIENCE, until_stopped(running, Some(2)))
        .await
        .expect("the role stops by itself at --max-events");
    assert_eq!(tally.unwrap(), Tally { handled: 2, undecodable: 0 });
}

#[tokio::test]
async fn roles_refuse_to_run_without_a_shared_server() {
    let args = Args::parse_from(["pubsub", "--backend", "memory", "publisher"]);
    let error = run(args).await.unwrap_err().to_string();
    assert!(error.contains("NATS_URL"), "{error}");
}

#[test]
fn a_subscriber_needs_a_known_service() {
    let error = Args::try_parse_from(["pubsub", "subscriber", "--service", "payroll"]);
    assert!(error.unwrap_err().to_string().contains("mailer"));
}
