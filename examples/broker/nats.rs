//! The NATS broker: core NATS publish/subscribe through async-nats.
//!
//! Core NATS already keeps the broker's rules (at-most-once, queue groups, per-publisher
//! order), so this file is mostly translation. Two things are deliberate:
//!
//! - The subscription buffer is sized here ([`DEFAULT_SUBSCRIPTION_CAPACITY`]) instead of
//!   taking async-nats's default, which a fast publisher can overrun.
//! - When a buffer does overflow, async-nats drops the message in the client (the server
//!   never knows) and reports a `SlowConsumer` event. We count those events and log them,
//!   so a drop is never silent. (async-nats passes events through a small queue of its own
//!   that can itself overflow in a storm of drops, so the count is a lower bound; any count
//!   above zero means the subscriber is too slow for its buffer.)

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::{Event, HeaderMap};
use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::subscription::Source;
use crate::{
    Broker, BrokerError, DEFAULT_SUBSCRIPTION_CAPACITY, Headers, Message, Subscription,
    check_headers, check_topic,
};

/// How long a round trip to the server may take before the broker gives up on it.
const ROUND_TRIP_LIMIT: Duration = Duration::from_secs(10);

/// How long `publish` may wait for the client to take a message.
///
/// async-nats hands each publish to its connection task through a queue of 2,048 commands
/// and waits, without limit, for room in it. Room never comes while the server is down
/// (the client is busy reconnecting) or stalled (the socket does not drain): publishes are
/// queued until the queue is full, and then each one hangs, and so does the request that
/// made it. Taking a message normally takes microseconds; five seconds without room means
/// the connection is not working, and the caller is better told so.
const PUBLISH_LIMIT: Duration = Duration::from_secs(5);

/// A broker on one NATS connection. Cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct NatsBroker {
    client: async_nats::Client,
    slow_consumer_drops: Arc<watch::Sender<u64>>,
    closed: Arc<AtomicBool>,
    publish_limit: Duration,
}

impl NatsBroker {
    /// Connects to `url` (a comma-separated list for a cluster) with the default buffer.
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        Self::connect_with_capacity(url, DEFAULT_SUBSCRIPTION_CAPACITY).await
    }

    /// Connects with each subscription buffering up to `capacity` messages.
    pub(crate) async fn connect_with_capacity(
        url: &str,
        capacity: usize,
    ) -> Result<Self, BrokerError> {
        let slow_consumer_drops = Arc::new(watch::Sender::new(0));
        let closed = Arc::new(AtomicBool::new(false));
        let (counter, draining) = (slow_consumer_drops.clone(), closed.clone());
        let options = async_nats::ConnectOptions::new()
            .subscription_capacity(capacity.max(1))
            .event_callback(move |event| {
                let (counter, draining) = (counter.clone(), draining.clone());
                async move { on_event(event, &counter, draining.load(Ordering::Acquire)) }
            });
        let client = microkit_backend::connect(url, options).await.map_err(|error| {
            BrokerError::Nats { what: "connecting".into(), source: Some(error.into()) }
        })?;
        Ok(NatsBroker { client, slow_consumer_drops, closed, publish_limit: PUBLISH_LIMIT })
    }

    /// Sets how long `publish` may wait for the client to take a message before it fails
    /// with [`BrokerError::TimedOut`] (default: 5 s, the reason is at `PUBLISH_LIMIT`).
    pub fn with_publish_limit(mut self, limit: Duration) -> Self {
        self.publish_limit = limit;
        self
    }

    /// The underlying connection, for what the broker does not cover (JetStream, requests).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Waits until the server has processed everything sent on this connection so far.
    ///
    /// async-nats's `flush` only waits for our socket write, and the server reads each
    /// connection separately: a subscription flushed that way can still be unknown to the
    /// server when another connection publishes. So we send ourselves a message and wait
    /// for it to come back; the server handles one connection's operations in order.
    async fn round_trip(&self) -> Result<(), BrokerError> {
        use futures::StreamExt;
        let inbox = self.client.new_inbox();
        // The bound covers the whole trip: subscribing and publishing wait for room in the
        // client's queue of commands just as `publish` does (see `PUBLISH_LIMIT`).
        let trip = async {
            let mut echo = self.client.subscribe(inbox.clone()).await.map_err(nats_error)?;
            self.client.publish(inbox, Bytes::new()).await.map_err(nats_error)?;
            echo.next().await.map(drop).ok_or(BrokerError::Closed)
        };
        tokio::time::timeout(ROUND_TRIP_LIMIT, trip).await.unwrap_or_else(|_| {
            Err(BrokerError::TimedOut {
                operation: "a round trip to the NATS server".into(),
                limit: ROUND_TRIP_LIMIT,
            })
        })
    }

    fn check_open(&self) -> Result<(), BrokerError> {
        if self.closed.load(Ordering::Acquire) { Err(BrokerError::Closed) } else { Ok(()) }
    }
}

/// The connection's events, as logs; slow-consumer drops are counted too.
fn on_event(event: Event, slow_consumer_drops: &watch::Sender<u64>, draining: bool) {
    match event {
        Event::SlowConsumer(sid) => {
            let mut dropped = 0;
            slow_consumer_drops.send_modify(|count| {
                *count += 1;
                dropped = *count;
            });
            if dropped == 1 || dropped.is_multiple_of(1000) {
                tracing::warn!(
                    sid,
                    dropped,
                    "slow consumer: a subscription's buffer is full, dropping"
                );
            }
        }
        // After `drain` the connection closes on purpose.
        Event::Disconnected if draining => tracing::debug!("NATS connection closed after drain"),
        Event::Disconnected => tracing::warn!("NATS connection lost; reconnecting"),
        Event::Connected => tracing::info!("NATS connected"),
        other => tracing::info!(event = %other, "NATS event"),
    }
}

fn nats_error(error: impl std::error::Error + Send + Sync + 'static) -> BrokerError {
    BrokerError::Nats { what: "a NATS request".into(), source: Some(error.into()) }
}

#[async_trait]
impl Broker for NatsBroker {
    async fn publish(
        &self,
        topic: &str,
        headers: Headers,
        payload: Bytes,
    ) -> Result<(), BrokerError> {
        check_topic(topic)?;
        check_headers(&headers)?;
        self.check_open()?;
        let subject = topic.to_owned();
        let taken = async {
            if headers.is_empty() {
                self.client.publish(subject, payload).await
            } else {
                let mut map = HeaderMap::new();
                for (name, value) in headers {
                    map.insert(name, value);
                }
                self.client.publish_with_headers(subject, map, payload).await
            }
        };
        // Dropping the wait at the bound leaves nothing half-sent: async-nats's queue takes a
        // command whole or not at all.
        match tokio::time::timeout(self.publish_limit, taken).await {
            Ok(taken) => taken.map_err(nats_error),
            Err(_) => Err(BrokerError::TimedOut {
                operation: format!("publish to {topic:?}"),
                limit: self.publish_limit,
            }),
        }
    }

    async fn flush(&self) -> Result<(), BrokerError> {
        self.round_trip().await
    }

    async fn subscribe(
        &self,
        topic: &str,
        queue: Option<&str>,
    ) -> Result<Subscription, BrokerError> {
        check_topic(topic)?;
        if let Some(queue) = queue {
            check_topic(queue)?;
        }
        self.check_open()?;
        let subscriber = match queue {
            None => self.client.subscribe(topic.to_owned()).await,
            Some(queue) => self.client.queue_subscribe(topic.to_owned(), queue.to_owned()).await,
        }
        .map_err(nats_error)?;
        // Once the server has answered a round trip, it knows of the subscription, so a
        // publish from any other connection to that server after this returns reaches it.
        // Other servers of a cluster learn of it over their routes, later: no round trip
        // on this connection can wait for that.
        self.round_trip().await?;
        let source = NatsSource { subscriber, topic: topic.into() };
        Ok(Subscription::new(topic, queue, Box::new(source)))
    }

    async fn drain(&self) -> Result<(), BrokerError> {
        self.closed.store(true, Ordering::Release);
        // Send what is still queued in the client, then let the subscriptions run dry.
        self.round_trip().await?;
        self.client.drain().await.map_err(nats_error)
    }

    fn watch_slow_consumer_drops(&self) -> watch::Receiver<u64> {
        self.slow_consumer_drops.subscribe()
    }

    fn name(&self) -> &'static str {
        "nats"
    }
}

struct NatsSource {
    subscriber: async_nats::Subscriber,
    /// Every message's subject is this topic (the broker refuses wildcards), so it is
    /// shared rather than copied out of each message.
    topic: Arc<str>,
}

/// NATS headers may repeat a name; the broker's headers keep the first value of each.
fn headers_of(message: &async_nats::Message) -> Headers {
    let Some(map) = &message.headers else { return Headers::new() };
    map.iter()
        .filter_map(|(name, values)| Some((name.to_string(), values.first()?.as_str().to_owned())))
        .collect()
}

impl Stream for NatsSource {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        Pin::new(&mut self.subscriber).poll_next(cx).map(|next| {
            next.map(|message| Message {
                topic: self.topic.clone(),
                headers: headers_of(&message),
                payload: message.payload,
            })
        })
    }
}

impl Source for NatsSource {
    fn unsubscribe(&mut self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async { self.subscriber.unsubscribe().await.map_err(nats_error) })
    }
}
