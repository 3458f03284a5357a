//! The broker: publish-to-subscribe throughput, each broker beside the raw library under it.
//!
//! - `broker::NatsBroker` vs raw async-nats, on a private `nats-server`: the same
//!   128-byte payloads, one connection publishing and another subscribed, with the same
//!   subscription buffer on both (the broker's, which is larger than async-nats's default:
//!   with the default the raw side would drop messages and look faster for it).
//! - `broker::MemoryBroker` vs a raw tokio mpsc channel of the same capacity: a
//!   publisher task sending and a subscriber reading on another task.
//!
//! A round publishes a batch and ends when the subscriber has received all of it. Nothing
//! may be dropped: a round that loses messages waits out its limit and the table says how
//! many were lost.

use std::time::Duration;

use broker::{Broker, DEFAULT_SUBSCRIPTION_CAPACITY, Headers, MemoryBroker, NatsBroker};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use micro_benches::{Effort, Row, Target, throughput_pair};
use microkit_testing::NatsServer;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const TOPIC: &str = "bench.orders";
/// How long a round may wait for messages that were published: a loss, not a slow run.
const LIMIT: Duration = Duration::from_secs(20);

/// 128-byte payloads, as the raw figures in the design were measured with.
fn payload() -> Bytes {
    Bytes::from(vec![b'x'; 128])
}

pub async fn nats_rows(effort: Effort) -> Vec<Row> {
    let (payload, count) = (payload(), effort.messages_per_round);
    let nats = NatsServer::start().await.unwrap();
    let url = nats.url();
    let raw_publisher = raw_nats(&url).await;
    let raw_subscriber = raw_nats(&url).await;
    let mut raw_subscription = raw_subscriber.subscribe(TOPIC).await.unwrap();
    raw_subscriber.flush().await.unwrap();
    let publisher = NatsBroker::connect(&url).await.unwrap();
    let subscriber = NatsBroker::connect(&url).await.unwrap();
    let mut subscription = subscriber.subscribe("bench.broker", None).await.unwrap();
    let (mut raw_lost, mut lost) = (0, 0);
    let throughput = throughput_pair(
        effort,
        async || {
            let publishing = async {
                for _ in 0..count {
                    raw_publisher.publish(TOPIC, payload.clone()).await.unwrap();
                }
                raw_publisher.flush().await.unwrap();
            };
            let (_, received) = tokio::join!(publishing, receive(&mut raw_subscription, count));
            raw_lost += u64::from(count) - received;
            received
        },
        async || {
            let publishing = async {
                for _ in 0..count {
                    publisher
                        .publish("bench.broker", Headers::new(), payload.clone())
                        .await
                        .unwrap();
                }
                publisher.flush().await.unwrap();
            };
            let (_, received) = tokio::join!(publishing, receive(&mut subscription, count));
            lost += u64::from(count) - received;
            received
        },
    )
    .await;
    lost += subscriber.slow_consumer_drops();
    vec![Row::throughput(
        &format!("broker, NATS: NatsBroker vs async-nats (lost {lost}, raw {raw_lost})"),
        throughput,
        if lost == 0 { Target::AtLeast(0.95) } else { Target::Lost(lost) },
    )]
}

/// In-process: the broker's hub and channel vs a bare tokio channel.
pub async fn memory_rows(effort: Effort) -> Vec<Row> {
    let (payload, count) = (payload(), effort.messages_per_round);
    let (raw_tx, raw_rx) = mpsc::channel::<Bytes>(DEFAULT_SUBSCRIPTION_CAPACITY);
    let mut raw_rx = ReceiverStream::new(raw_rx);
    let broker = MemoryBroker::new();
    let mut subscription = broker.subscribe(TOPIC, None).await.unwrap();
    let (mut raw_lost, mut lost) = (0, 0);
    let throughput = throughput_pair(
        effort,
        async || {
            let (tx, payload) = (raw_tx.clone(), payload.clone());
            let publishing = async move {
                for _ in 0..count {
                    tx.try_send(payload.clone()).unwrap();
                }
            };
            let received = spawn_both(publishing, receive(&mut raw_rx, count)).await;
            raw_lost += u64::from(count) - received;
            received
        },
        async || {
            let (broker, payload) = (broker.clone(), payload.clone());
            let publishing = async move {
                for _ in 0..count {
                    broker.publish(TOPIC, Headers::new(), payload.clone()).await.unwrap();
                }
            };
            let received = spawn_both(publishing, receive(&mut subscription, count)).await;
            lost += u64::from(count) - received;
            received
        },
    )
    .await;
    lost += broker.slow_consumer_drops();
    vec![Row::throughput(
        &format!("broker, memory: MemoryBroker vs mpsc (lost {lost}, raw {raw_lost})"),
        throughput,
        if lost == 0 { Target::AtLeast(0.7) } else { Target::Lost(lost) },
    )]
}

async fn raw_nats(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .subscription_capacity(DEFAULT_SUBSCRIPTION_CAPACITY)
        .connect(url)
        .await
        .unwrap()
}

/// Reads `count` messages, or what came within [`LIMIT`]: one timer for the whole round,
/// not one per message, which would cost more than the messages themselves.
async fn receive<S: Stream + Unpin>(messages: &mut S, count: u32) -> u64 {
    let mut received = 0;
    let reading = async {
        while received < count && messages.next().await.is_some() {
            received += 1;
        }
    };
    let _ = tokio::time::timeout(LIMIT, reading).await;
    u64::from(received)
}

/// Runs the publisher on a task of its own, as a real publisher would be, so publishing and
/// receiving may use both cores; returns what the receiver counted.
async fn spawn_both(
    publishing: impl Future<Output = ()> + Send + 'static,
    receiving: impl Future<Output = u64>,
) -> u64 {
    let publisher = tokio::spawn(publishing);
    let received = receiving.await;
    publisher.await.unwrap();
    received
}
