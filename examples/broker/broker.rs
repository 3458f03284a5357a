//! The broker: publish a message to a topic, and whoever subscribed to it gets a copy.
//!
//! go-micro's `broker` package, ported: the [`Broker`] trait below and the rules it keeps,
//! with two implementations that keep them alike, so an example prints the same lines on
//! either: [`MemoryBroker`] (`memory.rs`: this process, tokio channels, nothing to install)
//! and [`NatsBroker`] (`nats.rs`: core NATS, publishers and subscribers in any process).

mod memory;
mod nats;
mod subscription;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use microkit_backend::Backend;
use tokio::sync::watch;

pub use memory::MemoryBroker;
pub use nats::NatsBroker;
pub use subscription::{Handler, Subscription};

/// Publish and subscribe: go-micro's `broker.Broker`. Both implementations keep these rules,
/// and `conformance.rs` checks them on both:
///
/// 1. **Asynchronous.** `publish` returns once the broker has taken the message, not when
///    anyone has handled it. Subscribers run in their own tasks.
/// 2. **Broadcast, unless grouped.** Every plain subscriber of a topic gets every message;
///    the members of one queue group share the messages, each going to exactly one member.
/// 3. **At-most-once.** A message published while nobody listens is gone, without an
///    error. No acks, no redelivery (for those, see the `event` example and JetStream).
/// 4. **Ordered per publisher.** One publisher's messages reach one subscriber in the order
///    they were published. Nothing is promised across publishers.
/// 5. **Nobody waits for the slowest.** Each subscription has a buffer of a set size; when a
///    subscriber falls that far behind, further messages *for it* are dropped, counted and
///    logged (a "slow consumer"), and the publisher and the other subscribers go on. A
///    queue group's member is picked without looking at its buffer, so a stuck member goes
///    on being picked, and loses its share.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Hands `payload` with `headers` to the broker for `topic` and returns: it does not
    /// wait for any subscriber. With no subscriber the message is dropped, and that is
    /// not an error.
    async fn publish(
        &self,
        topic: &str,
        headers: Headers,
        payload: Bytes,
    ) -> Result<(), BrokerError>;

    /// Waits until everything this client published so far has reached the broker (on
    /// NATS: a round trip to the server). `publish` alone may return while the message is
    /// still queued in the client.
    async fn flush(&self) -> Result<(), BrokerError>;

    /// Subscribes to `topic`; with `queue`, as a member of that queue group. Once this
    /// returns, the subscription is in place: messages published after it arrive, when
    /// they are published through the same server. (In a NATS cluster the subscription
    /// reaches the other servers a moment later; see `notes/broker.md`.)
    async fn subscribe(
        &self,
        topic: &str,
        queue: Option<&str>,
    ) -> Result<Subscription, BrokerError>;

    /// Shuts down gracefully: messages already published are delivered, subscriptions then
    /// end (their streams return `None`), and publishing fails with [`BrokerError::Closed`].
    async fn drain(&self) -> Result<(), BrokerError>;

    /// How many messages were dropped because a subscriber fell behind (rule 5).
    fn slow_consumer_drops(&self) -> u64 {
        *self.watch_slow_consumer_drops().borrow()
    }

    /// The same count as a watch, so a caller can wait for a drop to be counted instead of
    /// polling: on NATS a drop is counted when the client's event about it is handled, a
    /// moment after the message was dropped.
    fn watch_slow_consumer_drops(&self) -> watch::Receiver<u64>;

    /// `memory` or `nats`, for logs.
    fn name(&self) -> &'static str;
}

/// Headers travel beside the payload: one value per name, names as given.
pub type Headers = BTreeMap<String, String>;

/// How many messages a subscription may fall behind before messages for it are dropped.
///
/// async-nats's own default is 65,536. Measured on a 2-core machine, a single subscriber fed
/// a million small messages at full speed lost up to a quarter of them with that buffer,
/// and none with a larger one. The buffer only costs memory while a subscriber is behind.
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 1 << 20;

/// A message as a subscriber receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Shared, not copied per message: every message of a subscription has the same topic.
    pub topic: Arc<str>,
    pub headers: Headers,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Topics are dot-separated words: no spaces and no wildcards (`*`, `>`).
    #[error("invalid topic {0:?}: use dot-separated words without spaces or wildcards")]
    InvalidTopic(String),
    /// Header names are printable ASCII without `:`; values are one line.
    #[error("invalid header {0:?}: names are printable ASCII without ':', values one line")]
    InvalidHeader(String),
    /// The broker was drained (or its connection closed): it takes no more work.
    #[error("the broker is closed")]
    Closed,
    /// A wait the broker bounds ran out: `operation` names it, `limit` is its bound. On NATS,
    /// `publish` waits for room in the client's queue of commands, which fills while the
    /// server is unreachable or stalled; a publish that gives up this way was not queued.
    #[error(
        "{operation} gave up after {limit:?}: the NATS server did not take it (unreachable or stalled?)"
    )]
    TimedOut { operation: String, limit: std::time::Duration },
    /// The NATS connection refused the request, or did not answer.
    #[error("NATS: {what}")]
    Nats {
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// A new broker client on `backend`: on NATS its own connection (sized for no silent drops,
/// see `nats.rs`); in memory, another client of the program's one hub, so a publisher and
/// its subscribers in the same program always meet.
pub async fn on(backend: &Backend) -> anyhow::Result<Arc<dyn Broker>> {
    Ok(match backend {
        Backend::Memory(shared) => Arc::new(shared.get::<MemoryBroker>().connect_another()),
        Backend::Nats { url, .. } => Arc::new(NatsBroker::connect(url).await?),
    })
}

/// Checks a topic the same way on both brokers, so a topic that works in memory works on
/// NATS too.
pub(crate) fn check_topic(topic: &str) -> Result<(), BrokerError> {
    let valid = !topic.is_empty()
        && topic.split('.').all(|word| {
            !word.is_empty()
                && !word
                    .chars()
                    .any(|c| matches!(c, '*' | '>') || c.is_whitespace() || c.is_control())
        });
    if valid { Ok(()) } else { Err(BrokerError::InvalidTopic(topic.to_owned())) }
}

/// Checks headers the same way on both brokers (NATS headers travel like HTTP/1 headers).
pub(crate) fn check_headers(headers: &Headers) -> Result<(), BrokerError> {
    for (name, value) in headers {
        let name_ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_graphic() && c != ':');
        if !name_ok || value.contains(['\r', '\n']) {
            return Err(BrokerError::InvalidHeader(name.clone()));
        }
    }
    Ok(())
}

/// The rules both brokers keep, run against each of them.
#[cfg(test)]
mod conformance;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_checked_alike_for_both_brokers() {
        for good in ["orders", "orders.created", "user-1.login_ok"] {
            assert!(check_topic(good).is_ok(), "{good}");
        }
        for bad in ["", "a..b", ".a", "a.", "a b", "orders.*", "orders.>", "tab\there"] {
            assert!(matches!(check_topic(bad), Err(BrokerError::InvalidTopic(_))), "{bad:?}");
        }
    }

    #[test]
    fn headers_are_checked_alike_for_both_brokers() {
        let ok =
            Headers::from([("x-seq".into(), "1".into()), ("Content-Type".into(), "a/b".into())]);
        assert!(check_headers(&ok).is_ok());
        for (name, value) in [("", "v"), ("a:b", "v"), ("sp ace", "v"), ("x", "two\nlines")] {
            let bad = Headers::from([(name.to_owned(), value.to_owned())]);
            assert!(matches!(check_headers(&bad), Err(BrokerError::InvalidHeader(_))), "{name:?}");
        }
    }
}
