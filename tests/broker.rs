//! The NATS broker where one machine's happy path ends: a server restart under a running
//! publisher, a server that stalls, and a publisher and a subscriber on different nodes of
//! a cluster.

use std::time::Duration;

use broker::{Broker, BrokerError, Headers, NatsBroker, Subscription};
use bytes::Bytes;
use futures::StreamExt;
use microkit_testing::NatsCluster;
use microkit_testing::NatsServer;

const PATIENCE: Duration = Duration::from_secs(20);

fn seq(n: u32) -> Bytes {
    Bytes::from(n.to_string())
}

/// Publishes probes until the subscription gets one, retrying through reconnects and
/// route set-up: the way to know a path is open, when messages sent before are just lost.
/// Returns the numbered messages that arrived meanwhile (survivors of an outage).
async fn probe_until_open(publisher: &NatsBroker, sub: &mut Subscription) -> Vec<u32> {
    let mut others = Vec::new();
    let mut note = |payload: &Bytes| {
        if let Ok(n) = std::str::from_utf8(payload).unwrap().parse::<u32>() {
            others.push(n);
        }
    };
    tokio::time::timeout(PATIENCE, async {
        loop {
            let _ = publisher.publish(sub.topic(), Headers::new(), Bytes::from("probe")).await;
            let _ = publisher.flush().await;
            while let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(100), sub.next()).await
            {
                if m.payload == "probe" {
                    return;
                }
                note(&m.payload);
            }
        }
    })
    .await
    .expect("the path opens");
    // Probes still in flight arrive before anything published next: read them off.
    publisher.publish(sub.topic(), Headers::new(), Bytes::from("last-probe")).await.unwrap();
    while let Some(m) = tokio::time::timeout(PATIENCE, sub.next()).await.unwrap() {
        if m.payload == "last-probe" {
            break;
        }
        note(&m.payload);
    }
    others
}

/// Reads numbered messages until `end` arrives; returns the numbers seen before it.
async fn numbers_until(sub: &mut Subscription, end: u32) -> Vec<u32> {
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(message) = sub.next().await {
            let Ok(n) = std::str::from_utf8(&message.payload).unwrap().parse::<u32>() else {
                continue; // a late probe
            };
            if n == end {
                return;
            }
            got.push(n);
        }
        panic!("the subscription ended");
    })
    .await
    .unwrap_or_else(|_| panic!("message {end} never came; got {} before", got.len()));
    got
}

#[tokio::test]
async fn core_nats_across_a_server_restart_reconnects_and_says_what_was_lost() {
    let mut server = NatsServer::start().await.unwrap();
    let publisher = NatsBroker::connect(&server.url()).await.unwrap();
    let subscriber = NatsBroker::connect(&server.url()).await.unwrap();
    let mut sub = subscriber.subscribe("ticks", None).await.unwrap();

    // Before: 100 messages, all delivered.
    for n in 0..100 {
        publisher.publish("ticks", Headers::new(), seq(n)).await.unwrap();
    }
    publisher.publish("ticks", Headers::new(), seq(1000)).await.unwrap();
    assert_eq!(numbers_until(&mut sub, 1000).await, (0..100).collect::<Vec<_>>());

    // During: the server is down. Publishing does not fail (the client queues while it
    // reconnects), but core NATS promises nothing for these.
    server.stop().await.unwrap();
    let mut accepted_while_down = 0;
    for n in 100..200 {
        if publisher.publish("ticks", Headers::new(), seq(n)).await.is_ok() {
            accepted_while_down += 1;
        }
    }
    server.restart().await.unwrap();

    // After: both clients reconnect by themselves (the subscriber re-subscribes), and the
    // path is open again. Whatever of the outage's messages still arrives, arrives first.
    let survived = probe_until_open(&publisher, &mut sub).await;
    for n in 200..300 {
        publisher.publish("ticks", Headers::new(), seq(n)).await.unwrap();
    }
    publisher.publish("ticks", Headers::new(), seq(2000)).await.unwrap();
    let after = numbers_until(&mut sub, 2000).await;

    assert_eq!(after, (200..300).collect::<Vec<_>>(), "after the restart nothing is lost");
    // What survived the outage is a subset of what was sent then, in order, no duplicates.
    assert!(survived.iter().all(|n| (100..200).contains(n)), "{survived:?}");
    assert!(survived.windows(2).all(|w| w[0] < w[1]), "{survived:?}");
    assert_eq!(accepted_while_down, 100, "publishing while disconnected does not error");
    // State what was lost instead of hiding it: core NATS is at-most-once.
    println!(
        "core NATS across a restart: 100 publishes accepted while the server was down, {} of \
         them delivered after reconnecting, {} lost; before and after the outage 200 of 200 \
         delivered",
        survived.len(),
        100 - survived.len()
    );
}

#[tokio::test]
async fn a_publisher_and_a_subscriber_on_different_cluster_nodes_exchange_messages() {
    let cluster = NatsCluster::start(3).await.unwrap();
    let urls = cluster.urls();
    let subscriber = NatsBroker::connect(&urls[0]).await.unwrap();
    let worker_a = NatsBroker::connect(&urls[1]).await.unwrap();
    let publisher = NatsBroker::connect(&urls[2]).await.unwrap();

    let mut sub = subscriber.subscribe("orders", None).await.unwrap();
    // Routes between nodes form in the background: probe until node 3 reaches node 1.
    assert!(probe_until_open(&publisher, &mut sub).await.is_empty());

    // A queue group spanning two nodes: each message still goes to exactly one member.
    let mut member_1 = subscriber.subscribe("jobs", Some("workers")).await.unwrap();
    let mut member_2 = worker_a.subscribe("jobs", Some("workers")).await.unwrap();
    // Interest from node 2 must have reached node 3 too: probe that path as well.
    let mut via_node_2 = worker_a.subscribe("jobs.probe", None).await.unwrap();
    assert!(probe_until_open(&publisher, &mut via_node_2).await.is_empty());

    for n in 0..100 {
        publisher.publish("orders", Headers::new(), seq(n)).await.unwrap();
        publisher.publish("jobs", Headers::new(), seq(n)).await.unwrap();
    }
    publisher.publish("orders", Headers::new(), seq(1000)).await.unwrap();
    assert_eq!(numbers_until(&mut sub, 1000).await, (0..100).collect::<Vec<_>>());

    let mut shares = [0, 0];
    let mut all = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while all.len() < 100 {
            let (member, message) = tokio::select! {
                m = member_1.next() => (0, m),
                m = member_2.next() => (1, m),
            };
            let payload = message.expect("the member stays subscribed").payload;
            all.push(std::str::from_utf8(&payload).unwrap().parse::<u32>().unwrap());
            shares[member] += 1;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the queue group got {} of 100", all.len()));
    all.sort_unstable();
    assert_eq!(all, (0..100).collect::<Vec<_>>(), "each job once across nodes");
    println!("queue group across two nodes: shares {shares:?}");
}

/// Sends `signal` (`STOP`, `CONT`) to the private server's process.
fn signal_server(server: &NatsServer, signal: &str) {
    let pid = server.pid().expect("the server wrote its process id").to_string();
    let sent = std::process::Command::new("kill").args([&format!("-{signal}"), &pid]).status();
    assert!(sent.unwrap().success(), "kill -{signal} {pid}");
}

#[tokio::test]
async fn a_publish_to_a_stalled_server_gives_up_at_its_bound_instead_of_hanging() {
    let server = NatsServer::start().await.unwrap();
    let limit = Duration::from_millis(500);
    let publisher = NatsBroker::connect(&server.url()).await.unwrap().with_publish_limit(limit);

    // A paused server keeps its socket open and reads nothing: the socket buffers fill,
    // then the client's queue of commands, then a publish has nowhere to go.
    signal_server(&server, "STOP");
    let payload = Bytes::from(vec![0_u8; 16 * 1024]); // shared, not copied, while queued
    let mut accepted = 0_u32;
    let outcome = tokio::time::timeout(PATIENCE, async {
        loop {
            match publisher.publish("bulk", Headers::new(), payload.clone()).await {
                Ok(()) => accepted += 1,
                Err(error) => return error,
            }
        }
    })
    .await;
    signal_server(&server, "CONT");

    let error = outcome.unwrap_or_else(|_| {
        panic!("a publish hung for {PATIENCE:?} after {accepted} were accepted")
    });
    match &error {
        BrokerError::TimedOut { operation, limit: hit } => {
            assert_eq!((operation.as_str(), *hit), ("publish to \"bulk\"", limit));
        }
        other => panic!("expected the publish bound, got {other:?}"),
    }
    assert!(error.to_string().contains("publish to \"bulk\" gave up after 500ms"), "{error}");
    // async-nats queues 2,048 commands on top of what the sockets hold before it waits.
    assert!(accepted > 2048, "only {accepted} accepted before the bound");
    println!("stalled server: {accepted} publishes accepted, then: {error}");

    // Resumed, the connection works again: the bound failed one publish, not the client.
    publisher.flush().await.expect("a round trip once the server runs again");
}
