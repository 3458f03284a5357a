//! The memory broker: a table of subscribers per topic, each fed by a bounded channel.
//!
//! It is shaped like NATS so the two behave alike: a [`Hub`] plays the server (the topic
//! table), and each [`MemoryBroker`] is one client of it, with its own subscriptions, its
//! own slow-consumer count, and its own `drain`. Every client made from one broker by
//! [`MemoryBroker::connect_another`] shares its hub, as all the clients of a NATS
//! deployment share its servers; the memory backend holds one hub and hands out clients.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use futures::future::BoxFuture;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::watch;

use crate::subscription::Source;
use crate::{
    Broker, BrokerError, DEFAULT_SUBSCRIPTION_CAPACITY, Headers, Message, Subscription,
    check_headers, check_topic,
};

/// A memory broker client. Cheap to clone (clones are the same client).
#[derive(Clone)]
pub struct MemoryBroker {
    hub: Arc<Hub>,
    client: Arc<Client>,
}

/// The topic table every client of one hub shares: the "server".
#[derive(Default)]
struct Hub {
    /// A B-tree rather than a hash map: a process has a handful of topics, and comparing a
    /// short name against a few keys is cheaper than hashing it on every publish.
    topics: Mutex<BTreeMap<String, Topic>>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Topic {
    /// Plain subscribers: each gets every message.
    plain: Vec<Member>,
    /// Queue groups by name: each message goes to one member of each group.
    groups: BTreeMap<String, Group>,
}

#[derive(Default)]
struct Group {
    members: Vec<Member>,
    /// Round robin: the member the next message goes to.
    next: usize,
}

/// What travels through a subscriber's channel: the topic is added on the other side.
#[derive(Clone)]
struct Envelope {
    headers: Headers,
    payload: Bytes,
}

struct Member {
    id: u64,
    tx: mpsc::Sender<Envelope>,
    client: Arc<Client>,
}

/// What belongs to one client rather than to the hub.
struct Client {
    closed: AtomicBool,
    slow_consumer_drops: watch::Sender<u64>,
    capacity: usize,
}

impl MemoryBroker {
    /// A broker on a hub of its own: nothing else in the process sees its topics.
    pub fn new() -> Self {
        Self::on_hub(Arc::default(), DEFAULT_SUBSCRIPTION_CAPACITY)
    }

    /// Another client of the same hub (like a second connection to the same NATS server).
    pub fn connect_another(&self) -> Self {
        Self::on_hub(self.hub.clone(), self.client.capacity)
    }

    /// Sets how far each of this client's subscriptions may fall behind (rule 5 on
    /// [`Broker`]). Applies to subscriptions made after the call.
    pub fn with_subscription_capacity(self, capacity: usize) -> Self {
        Self::on_hub(self.hub, capacity.max(1))
    }

    fn on_hub(hub: Arc<Hub>, capacity: usize) -> Self {
        let client = Client {
            closed: AtomicBool::new(false),
            slow_consumer_drops: watch::Sender::new(0),
            capacity,
        };
        MemoryBroker { hub, client: Arc::new(client) }
    }

    fn check_open(&self) -> Result<(), BrokerError> {
        if self.client.closed.load(Ordering::Acquire) { Err(BrokerError::Closed) } else { Ok(()) }
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

/// Offers a message to one member without waiting; a refused message comes back.
fn offer(member: &Member, message: Envelope) -> Delivery {
    match member.tx.try_send(message) {
        Ok(()) => Delivery::Sent,
        Err(TrySendError::Full(_)) => Delivery::Full,
        Err(TrySendError::Closed(message)) => Delivery::Gone(message),
    }
}

enum Delivery {
    Sent,
    /// The member is behind by its whole buffer: a slow consumer.
    Full,
    /// The member unsubscribed: it is removed from the table.
    Gone(Envelope),
}

fn count_drop(member: &Member, topic: &str) {
    let mut dropped = 0;
    member.client.slow_consumer_drops.send_modify(|count| {
        *count += 1;
        dropped = *count;
    });
    // One line for the first drop and then one per thousand: a log, not a flood.
    if dropped == 1 || dropped.is_multiple_of(1000) {
        tracing::warn!(topic, dropped, "slow consumer: a subscriber's buffer is full, dropping");
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(
        &self,
        topic: &str,
        headers: Headers,
        payload: Bytes,
    ) -> Result<(), BrokerError> {
        check_headers(&headers)?;
        self.check_open()?;
        // The lock is held while offering, so that messages from one publisher enter every
        // subscriber's channel in the order they were published. `try_send` never waits.
        let mut topics = self.hub.topics.lock().unwrap();
        let Some(subscribers) = topics.get_mut(topic) else {
            // Nobody listens: at-most-once means it is gone. A bad topic is still an error.
            return check_topic(topic);
        };
        // A topic in the table was checked when it was subscribed to: no need to check it
        // again on every message (measured: checking was the largest cost of a publish).
        let message = Envelope { headers, payload };
        subscribers.plain.retain(|member| match offer(member, message.clone()) {
            Delivery::Sent => true,
            Delivery::Full => {
                count_drop(member, topic);
                true
            }
            Delivery::Gone(_) => false,
        });
        for group in subscribers.groups.values_mut() {
            deliver_to_group(group, message.clone(), topic);
        }
        subscribers.groups.retain(|_, group| !group.members.is_empty());
        if subscribers.plain.is_empty() && subscribers.groups.is_empty() {
            topics.remove(topic);
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), BrokerError> {
        Ok(()) // `publish` hands each message to the subscribers' channels before returning.
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
        let (tx, rx) = mpsc::channel(self.client.capacity);
        let id = self.hub.next_id.fetch_add(1, Ordering::Relaxed);
        let member = Member { id, tx, client: self.client.clone() };
        let mut topics = self.hub.topics.lock().unwrap();
        let subscribers = topics.entry(topic.to_owned()).or_default();
        match queue {
            None => subscribers.plain.push(member),
            Some(queue) => {
                subscribers.groups.entry(queue.to_owned()).or_default().members.push(member)
            }
        }
        let source = MemorySource {
            rx,
            id,
            topic: topic.to_owned(),
            topic_name: topic.into(),
            hub: self.hub.clone(),
        };
        Ok(Subscription::new(topic, queue, Box::new(source)))
    }

    async fn drain(&self) -> Result<(), BrokerError> {
        self.client.closed.store(true, Ordering::Release);
        // Dropping this client's senders ends its subscriptions once their buffers are read.
        let mut topics = self.hub.topics.lock().unwrap();
        let mine = |member: &Member| Arc::ptr_eq(&member.client, &self.client);
        for subscribers in topics.values_mut() {
            subscribers.plain.retain(|member| !mine(member));
            for group in subscribers.groups.values_mut() {
                group.members.retain(|member| !mine(member));
            }
            subscribers.groups.retain(|_, group| !group.members.is_empty());
        }
        topics.retain(|_, subscribers| {
            !subscribers.plain.is_empty() || !subscribers.groups.is_empty()
        });
        Ok(())
    }

    fn watch_slow_consumer_drops(&self) -> watch::Receiver<u64> {
        self.client.slow_consumer_drops.subscribe()
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

/// One member of the group gets the message: the next in turn, whether or not it has room.
///
/// This is what a NATS server does: it picks a member without knowing how full that
/// member's client buffer is (it cannot: the buffer is in the client), and the client drops
/// the message if the buffer is full. Offering it to the next member with room instead
/// would make a stuck member lose nothing here and half its share on NATS. So a full member
/// loses the message, counted for its client as any slow consumer's drop; only a member that
/// has left is skipped.
fn deliver_to_group(group: &mut Group, mut message: Envelope, topic: &str) {
    // EXERCISE: give the message to one member of the group, the next in turn, even a full one
    // Check it with `scripts/exercise.sh broker`; `scripts/exercise.sh broker hint` helps.
    // Every member gets the message, as if there were no group.
    for member in &group.members {
        let _ = offer(member, message.clone());
    }
    // END OF EXERCISE
}

/// A subscription's receiving end. Unsubscribing removes it from the hub's table.
struct MemorySource {
    rx: mpsc::Receiver<Envelope>,
    /// Put on each message here, on the receiving side: sharing one counted pointer
    /// between the publishing and the receiving thread would make them fight over it.
    topic_name: Arc<str>,
    id: u64,
    topic: String,
    hub: Arc<Hub>,
}

impl MemorySource {
    fn remove_from_hub(&self) {
        let mut topics = self.hub.topics.lock().unwrap();
        if let Some(subscribers) = topics.get_mut(&self.topic) {
            subscribers.plain.retain(|member| member.id != self.id);
            for group in subscribers.groups.values_mut() {
                group.members.retain(|member| member.id != self.id);
            }
            subscribers.groups.retain(|_, group| !group.members.is_empty());
            if subscribers.plain.is_empty() && subscribers.groups.is_empty() {
                topics.remove(&self.topic);
            }
        }
    }
}

impl Stream for MemorySource {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx).map(|next| {
            next.map(|Envelope { headers, payload }| Message {
                topic: self.topic_name.clone(),
                headers,
                payload,
            })
        })
    }
}

impl Source for MemorySource {
    fn unsubscribe(&mut self) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.remove_from_hub();
        // Closing keeps what is buffered readable, then the stream ends.
        self.rx.close();
        Box::pin(async { Ok(()) })
    }
}

impl Drop for MemorySource {
    fn drop(&mut self) {
        self.remove_from_hub();
    }
}
