//! Where events go: one publish, two kinds of consumer.
//!
//! - A **plain subscription** on the broker (at-most-once): it gets what is published
//!   while it listens, and nothing else.
//! - A **durable consumer** on a stream (at-least-once): the stream keeps every event, the
//!   consumer has a name, and the stream remembers, per name, what was acknowledged. A
//!   consumer that was down resumes where it left off.
//!
//! On NATS the stream is JetStream (file storage: it survives a server restart too), and
//! one JetStream publish reaches both kinds, since a JetStream publish is also a core NATS
//! message. On the memory backend the stream is a list and a cursor per consumer name,
//! which is exactly what JetStream keeps for us, minus the disk and the server.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::connection::State;
use async_nats::jetstream::context::{PublishError as JetStreamError, PublishErrorKind};
use async_nats::jetstream::{self, consumer::pull, stream};
use broker::{Broker, Headers, Subscription};
use bytes::Bytes;
use cloudevents::{AttributesReader, Event};
use futures::StreamExt;
use microkit_backend::Backend;
use tokio::sync::watch;

/// One publish, two kinds of consumer: a plain subscription on the broker, and durable
/// consumers of a stream.
pub struct EventBus {
    broker: Arc<dyn Broker>,
    store: Store,
    /// Per durable consumer name, what it has handled: kept here rather than in each
    /// [`Durable`], so a consumer bound again in this process still knows.
    handled: Mutex<HashMap<String, Arc<Mutex<Handled>>>>,
}

/// A durable consumer, bound: where its events come from, and what it already handled.
pub struct Durable {
    source: Source,
    handled: Arc<Mutex<Handled>>,
}

impl EventBus {
    pub async fn connect(backend: &Backend) -> anyhow::Result<Self> {
        let broker = broker::on(backend).await?;
        let store = match backend {
            Backend::Memory { .. } => {
                tracing::warn!(
                    "memory backend: the durable stream lives in this process's memory, so it \
                     survives a consumer restart but not a process restart; run with NATS \
                     (JetStream, file storage) for events that outlive the process"
                );
                Store::Memory(watch::Sender::default())
            }
            Backend::Nats { client, .. } => {
                let jetstream = jetstream::new(client.clone());
                jetstream
                    .get_or_create_stream(stream::Config {
                        name: STREAM.to_owned(),
                        subjects: vec!["events.>".to_owned()],
                        storage: stream::StorageType::File,
                        duplicate_window: DEDUP_WINDOW,
                        ..Default::default()
                    })
                    .await
                    .context("creating the JetStream stream (is JetStream enabled: -js?)")?;
                Store::JetStream(Box::new(jetstream))
            }
        };
        Ok(EventBus { broker, store, handled: Mutex::default() })
    }

    /// Publishes an event for both kinds of consumer, and returns once the stream has it:
    /// from then on it cannot be lost. The same `(source, id)` again within
    /// [`DEDUP_WINDOW`] is taken without being stored twice.
    pub async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        let json = serde_json::to_vec(event).map_err(|e| PublishError::NotStored(e.into()))?;
        if json.len() > MAX_EVENT_BYTES {
            return Err(PublishError::TooLarge { size: json.len() });
        }
        let (payload, key) = (Bytes::from(json), key_of(event));
        match &self.store {
            Store::JetStream(jetstream) => {
                // A publish while disconnected is queued in the client and sent on
                // reconnecting, whatever was answered meanwhile: so send nothing then, and
                // "not stored" stays true.
                if jetstream.client().connection_state() != State::Connected {
                    return Err(PublishError::Unreachable);
                }
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("content-type", CONTENT_TYPE);
                // JetStream drops a second message with the same id within the window.
                headers.insert("Nats-Msg-Id", key.as_str());
                let sent = jetstream.publish_with_headers(SUBJECT, headers, payload).await;
                sent.map_err(unconfirmed)?.await.map_err(unconfirmed)?;
            }
            Store::Memory(stream) => {
                stream.send_modify(|stream| {
                    // What JetStream does with a duplicate: drop it, and answer as if stored.
                    let now = Instant::now();
                    stream.stored.retain(|_, at| now.duration_since(*at) < DEDUP_WINDOW);
                    if let Entry::Vacant(first) = stream.stored.entry(key) {
                        first.insert(now);
                        stream.events.push(payload.clone());
                    }
                });
                // As on NATS, where a duplicate is dropped by the stream, not by the subject.
                // Stored is what counts; a plain subscriber missing it is at-most-once.
                let headers = Headers::from([("content-type".to_owned(), CONTENT_TYPE.to_owned())]);
                if let Err(error) = self.broker.publish(SUBJECT, headers, payload).await {
                    tracing::warn!(%error, "stored, but not sent to the plain subscribers");
                }
            }
        }
        Ok(())
    }

    /// A plain subscription: at-most-once.
    pub async fn subscribe(&self) -> anyhow::Result<Subscription> {
        Ok(self.broker.subscribe(SUBJECT, None).await?)
    }

    /// Forgets a durable consumer, so a demo run starts from a clean slate.
    pub async fn forget(&self, name: &str) -> anyhow::Result<()> {
        self.handled.lock().unwrap().remove(name);
        match &self.store {
            Store::JetStream(jetstream) => {
                let stream = jetstream.get_stream(STREAM).await?;
                // Not there is fine: that is the state we want.
                let _ = stream.delete_consumer(name).await;
            }
            Store::Memory(stream) => {
                stream.send_modify(|stream| {
                    stream.cursors.remove(name);
                });
            }
        }
        Ok(())
    }

    /// Binds to the durable consumer `name`, creating it (from now on) if it is new, or
    /// resuming it where its last acknowledgement left it.
    pub async fn durable(&self, name: &str) -> anyhow::Result<Durable> {
        let handled = self.handled.lock().unwrap().entry(name.to_owned()).or_default().clone();
        let source = match &self.store {
            Store::JetStream(jetstream) => {
                let stream = jetstream.get_stream(STREAM).await?;
                let consumer = stream
                    .get_or_create_consumer(
                        name,
                        pull::Config {
                            durable_name: Some(name.to_owned()),
                            filter_subject: SUBJECT.to_owned(),
                            // A new consumer starts with events published after it exists.
                            deliver_policy: jetstream::consumer::DeliverPolicy::New,
                            ack_policy: jetstream::consumer::AckPolicy::Explicit,
                            ack_wait: ACK_WAIT,
                            ..Default::default()
                        },
                    )
                    .await?;
                Source::JetStream(Box::new(consumer))
            }
            Store::Memory(stream) => {
                stream.send_modify(|memory| {
                    let end = memory.events.len();
                    // EXERCISE: a consumer name resumes where it stopped; only a new name starts at the end
                    // Check it with `scripts/exercise.sh event`; `scripts/exercise.sh event hint` helps.
                    memory.cursors.insert(name.to_owned(), end); // every start at the end
                    // END OF EXERCISE
                });
                Source::Memory { stream: stream.clone(), name: name.to_owned() }
            }
        };
        Ok(Durable { source, handled })
    }
}

impl Durable {
    /// Takes up to `max` events, waiting at most `within` for them to arrive: each goes to
    /// `handle` (`None`: a payload that is not a CloudEvent), then is acknowledged. Returns
    /// how many it handled, which is fewer than `max` only when `within` ran out.
    ///
    /// Acknowledging after handling is what makes this at-least-once: a consumer that dies
    /// between the two, or whose ack the server lost (a server killed before it wrote the
    /// ack down), gets the event again. So an event whose `(source, id)` was handled already
    /// is acknowledged, counted in [`Durable::duplicates`], and not handled again.
    pub async fn take(
        &self,
        max: usize,
        within: Duration,
        mut handle: impl FnMut(Option<Event>),
    ) -> anyhow::Result<usize> {
        let deadline = tokio::time::Instant::now() + within;
        let mut taken = 0;
        let mut once = |payload: &[u8]| match decode(payload) {
            Some(event) if !self.handled.lock().unwrap().first_time(key_of(&event)) => 0,
            event => {
                handle(event);
                1
            }
        };
        match &self.source {
            Source::JetStream(consumer) => {
                // One pull request for what is still wanted, held by the server until it is
                // there or the deadline: a wait on the server, not a poll. Another follows
                // only when duplicates took up places in the last one.
                while taken < max {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left < Duration::from_millis(10) {
                        break;
                    }
                    let batch = consumer.batch().max_messages(max - taken).expires(left);
                    let mut batch = batch.messages().await?;
                    let mut delivered = 0;
                    while let Some(message) = batch.next().await {
                        let message = message.map_err(|e| anyhow::anyhow!(e))?;
                        delivered += 1;
                        taken += once(&message.payload);
                        // Wait for the server to confirm the ack: then a restart cannot
                        // replay it (unless the server loses it, hence `once`).
                        message.double_ack().await.map_err(|e| anyhow::anyhow!(e))?;
                    }
                    if delivered == 0 {
                        break; // the pull expired with nothing: `within` ran out
                    }
                }
            }
            Source::Memory { stream, name } => {
                let mut stored = stream.subscribe();
                while taken < max {
                    let next = stored.wait_for(|stream| stream.next_for(name).is_some());
                    let Ok(next) = tokio::time::timeout_at(deadline, next).await else { break };
                    let payload = next?.next_for(name).cloned().expect("waited for it");
                    taken += once(&payload);
                    stream.send_modify(|stream| {
                        *stream.cursors.entry(name.clone()).or_default() += 1
                    });
                }
            }
        }
        Ok(taken)
    }

    /// How many deliveries this consumer (under its name, in this process) dropped as
    /// duplicates of an event it had handled.
    pub fn duplicates(&self) -> u64 {
        self.handled.lock().unwrap().duplicates
    }
}

/// The subject every login event is published on.
pub const SUBJECT: &str = "events.user.login";
/// The JetStream stream that keeps every `events.>` message.
pub const STREAM: &str = "EVENTS";
/// CloudEvents' media type for an event in JSON "structured mode".
const CONTENT_TYPE: &str = "application/cloudevents+json";
/// The largest event (as JSON) the bus takes. An event states a fact; a file belongs
/// elsewhere. It is also well under NATS's default message limit (1 MiB), so an event the
/// HTTP side accepted is never one the server refuses for its size.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// How long the stream remembers an event's `(source, id)` to drop a second copy: a client
/// retrying within this window after an unanswered request stores its event once.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(120);
/// How many events a durable consumer remembers having handled, to drop a second delivery
/// of one. A redelivery comes soon after the first (a lost ack, a restart), so the latest
/// 10,000 are plenty here, and the memory stays bounded (about 1 MB of keys) however long
/// the consumer runs.
pub const REMEMBERED: usize = 10_000;
/// How long JetStream waits for a durable consumer's ack before it delivers an event again.
/// An event handed to a pull request that never reached the consumer (a partition cut the
/// way back, a crash before the ack) is lost to it until then, so this bounds how late such
/// an event arrives. The server's default is 30 s; the handling here takes microseconds, and
/// a redelivery that comes while the first is still being handled is dropped as a duplicate.
pub const ACK_WAIT: Duration = Duration::from_secs(10);

/// Why an event was not stored, or not surely: each asks the sender for something else.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the event is {size} bytes, over the {MAX_EVENT_BYTES}-byte bound")]
    TooLarge { size: usize },
    /// Nothing was sent (the client is not connected), so nothing can arrive later.
    #[error("NATS is unreachable, so the event was not stored")]
    Unreachable,
    /// Sent, but the confirmation did not come: it may be stored now, or later (a paused
    /// server answers when it resumes). Sending it again with the same id is safe
    /// (de-duplicated), and the only way to know.
    #[error(
        "unknown whether the event was stored: it was sent, and JetStream did not confirm it \
         in time; sending it again with the same source and id is safe, a copy within {}s \
         is dropped",
        DEDUP_WINDOW.as_secs()
    )]
    Unconfirmed(#[source] JetStreamError),
    #[error("the event was not stored")]
    NotStored(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The `(source, id)` of the last [`REMEMBERED`] events a consumer handled, oldest first,
/// and how many deliveries it dropped as duplicates of one of them.
#[derive(Default)]
pub struct Handled {
    keys: HashSet<String>,
    order: VecDeque<String>,
    duplicates: u64,
}

impl Handled {
    /// True the first time `key` comes; a later time it is counted as a duplicate.
    fn first_time(&mut self, key: String) -> bool {
        if self.keys.contains(&key) {
            self.duplicates += 1;
            return false;
        }
        if self.order.len() == REMEMBERED
            && let Some(oldest) = self.order.pop_front()
        {
            self.keys.remove(&oldest);
        }
        self.keys.insert(key.clone());
        self.order.push_back(key);
        true
    }
}

/// What spots a duplicate: unique per source, as CloudEvents requires of `id`.
fn key_of(event: &Event) -> String {
    format!("{} {}", event.source(), event.id())
}

enum Store {
    // Boxed: a JetStream handle is large, and there is one per bus.
    JetStream(Box<jetstream::Context>),
    /// A watch, so a consumer waiting for the next event is woken when one is stored.
    Memory(watch::Sender<MemoryStream>),
}

/// The memory backend's stand-in for a stream: every event, per consumer name the position
/// of the next event it has not acknowledged, and when each `(source, id)` was stored.
#[derive(Default)]
pub struct MemoryStream {
    events: Vec<Bytes>,
    cursors: HashMap<String, usize>,
    stored: HashMap<String, Instant>,
}

impl MemoryStream {
    /// The next event `name` has not acknowledged, if one is stored.
    fn next_for(&self, name: &str) -> Option<&Bytes> {
        self.events.get(self.cursors.get(name).copied().unwrap_or(self.events.len()))
    }
}

enum Source {
    JetStream(Box<jetstream::consumer::Consumer<pull::Config>>),
    Memory { stream: watch::Sender<MemoryStream>, name: String },
}

/// A failed JetStream publish: if the message may have left, the outcome is unknown.
fn unconfirmed(error: JetStreamError) -> PublishError {
    match error.kind() {
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
            PublishError::Unconfirmed(error)
        }
        _ => PublishError::NotStored(error.into()),
    }
}

/// An event from its JSON, or `None` (logged) if it is not one: a consumer skips it.
pub fn decode(payload: &[u8]) -> Option<Event> {
    serde_json::from_slice(payload)
        .inspect_err(|error| tracing::warn!(%error, "not a CloudEvent; skipped"))
        .ok()
}
