//! Typed events on a raw broker: a topic is bound to one (protobuf) event type, a service
//! registers a handler per topic, and a payload that is not that type is logged, counted
//! and skipped while the subscriber lives on.

use broker::{Broker, Handler, Headers};
use bytes::Bytes;
use microkit::proto::events::{OrderPlaced, UserSignedUp};
use tokio::sync::watch;

/// An event type bound to its topic: whatever arrives on `TOPIC` is decoded as `Self`.
pub trait Event: prost::Message + Default + 'static {
    const TOPIC: &'static str;
    /// Sent in the `event-type` header; a subscriber refuses a message without it, or with
    /// another type in it, before decoding.
    const TYPE: &'static str;
}

impl Event for UserSignedUp {
    const TOPIC: &'static str = "user.signed_up";
    const TYPE: &'static str = "events.v1.UserSignedUp";
}

impl Event for OrderPlaced {
    const TOPIC: &'static str = "order.placed";
    const TYPE: &'static str = "events.v1.OrderPlaced";
}

/// Publishes a typed event: protobuf bytes, with its type in the headers.
pub async fn publish<E: Event>(broker: &dyn Broker, event: &E) -> anyhow::Result<()> {
    let headers = Headers::from([
        ("content-type".to_owned(), "application/protobuf".to_owned()),
        ("event-type".to_owned(), E::TYPE.to_owned()),
    ]);
    broker.publish(E::TOPIC, headers, Bytes::from(event.encode_to_vec())).await?;
    Ok(())
}

/// What a subscriber counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub handled: u64,
    pub undecodable: u64,
}

impl Tally {
    /// Every payload that reached the subscriber, good or not.
    pub fn seen(&self) -> u64 {
        self.handled + self.undecodable
    }
}

/// Registers `handler` for `E`'s topic (in `queue`, if given): go-micro's
/// `micro.RegisterSubscriber(topic, server, handler)`. A payload that is not an `E` is
/// logged, counted and skipped; the subscription goes on. `tally` is a watch, so whoever
/// waits for a count is woken by each change instead of polling.
pub async fn subscribe<E, F>(
    broker: &dyn Broker,
    service: &str,
    queue: Option<&str>,
    tally: watch::Sender<Tally>,
    mut handler: F,
) -> anyhow::Result<Handler>
where
    E: Event,
    F: FnMut(E) + Send + 'static,
{
    // EXERCISE: subscribe to the event's topic, in the queue group when one is given
    // Check it with `scripts/exercise.sh pubsub`; `scripts/exercise.sh pubsub hint` helps.
    let subscription = broker.subscribe(E::TOPIC, None).await?; // never grouped
    // END OF EXERCISE
    let service = service.to_owned();
    Ok(subscription.handle(move |message| {
        // No label, no event: protobuf decodes almost any bytes (even none) into something,
        // so the header is what tells an `E` from a stranger.
        let decoded = match message.headers.get("event-type") {
            Some(kind) if kind == E::TYPE => {
                E::decode(message.payload).map_err(|error| error.to_string())
            }
            Some(kind) => Err(format!("event-type {kind:?}, not {}", E::TYPE)),
            None => Err(format!("no event-type header (expected {})", E::TYPE)),
        };
        match decoded {
            Ok(event) => {
                handler(event);
                tally.send_modify(|tally| tally.handled += 1);
            }
            Err(reason) => {
                tracing::warn!(service, topic = E::TOPIC, %reason, "undecodable payload skipped");
                tally.send_modify(|tally| tally.undecodable += 1);
            }
        }
        std::future::ready(())
    }))
}
