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

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::connection::State;
use async_nats::jetstream::context::{PublishError as JetStreamError, PublishErrorKind};
use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use cloudevents::{AttributesReader, Event};
use futures::StreamExt;
use microkit::backend::Backend;
use microkit::broker::{Broker, Headers, Subscription};
use tokio::sync::watch;

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

/// Why an event was not stored, or not surely: each asks the sender for something else.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the event is {size} bytes, over the {MAX_EVENT_BYTES}-byte bound")]
    TooLarge { size: usize },
    /// Nothing was sent (the client is not connected), so nothing can arrive later.
    #[error("NATS is unreachable, so the event was not stored")]
    Unreachable,
    /// Sent, but the confirmation did not come: it may be stored. Sending it again with the
    /// same id is safe (de-duplicated), and the only way to know.
    #[error("JetStream did not confirm the event, so it may or may not be stored")]
    Unconfirmed(#[source] JetStreamError),
    #[error("the event was not stored")]
    NotStored(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub struct EventBus {
    broker: Arc<dyn Broker>,
    store: Store,
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

impl EventBus {
    pub async fn connect(backend: &Backend) -> anyhow::Result<Self> {
        let broker = backend.broker().await?;
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
        Ok(EventBus { broker, store })
    }

    /// Publishes an event for both kinds of consumer, and returns once the stream has it:
    /// from then on it cannot be lost. The same `(source, id)` again within
    /// [`DEDUP_WINDOW`] is taken without being stored twice.
    pub async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        let json = serde_json::to_vec(event).map_err(|e| PublishError::NotStored(e.into()))?;
        if json.len() > MAX_EVENT_BYTES {
            return Err(PublishError::TooLarge { size: json.len() });
        }
        let (payload, key) = (Bytes::from(json), format!("{} {}", event.source(), event.id()));
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
        match &self.store {
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
                            ..Default::default()
                        },
                    )
                    .await?;
                Ok(Durable::JetStream(Box::new(consumer)))
            }
            Store::Memory(stream) => {
                stream.send_modify(|memory| {
                    let end = memory.events.len();
                    memory.cursors.entry(name.to_owned()).or_insert(end);
                });
                Ok(Durable::Memory { stream: stream.clone(), name: name.to_owned() })
            }
        }
    }
}

/// A durable consumer, bound.
pub enum Durable {
    JetStream(Box<jetstream::consumer::Consumer<pull::Config>>),
    Memory { stream: watch::Sender<MemoryStream>, name: String },
}

impl Durable {
    /// Takes up to `max` events, waiting at most `within` for them to arrive: each goes to
    /// `handle` (`None`: a payload that is not a CloudEvent), then is acknowledged. Returns
    /// how many it took, which is fewer than `max` only when `within` ran out.
    ///
    /// Acknowledging after handling is what makes this at-least-once: a consumer that dies
    /// between the two gets the event again, so handlers must tolerate a duplicate (the
    /// CloudEvent's `id` is there to spot one).
    pub async fn take(
        &self,
        max: usize,
        within: Duration,
        mut handle: impl FnMut(Option<Event>),
    ) -> anyhow::Result<usize> {
        let mut taken = 0;
        match self {
            Durable::JetStream(consumer) => {
                // One pull request for up to `max`, held by the server until they are there
                // or `within` ends: a wait on the server, not a poll.
                let batch = consumer.batch().max_messages(max).expires(within);
                let mut batch = batch.messages().await?;
                while let Some(message) = batch.next().await {
                    let message = message.map_err(|e| anyhow::anyhow!(e))?;
                    handle(decode(&message.payload));
                    // Wait for the server to confirm the ack: then a restart cannot replay it.
                    message.double_ack().await.map_err(|e| anyhow::anyhow!(e))?;
                    taken += 1;
                }
            }
            Durable::Memory { stream, name } => {
                let deadline = tokio::time::Instant::now() + within;
                let mut stored = stream.subscribe();
                while taken < max {
                    let next = stored.wait_for(|stream| stream.next_for(name).is_some());
                    let Ok(next) = tokio::time::timeout_at(deadline, next).await else { break };
                    let payload = next?.next_for(name).cloned().expect("waited for it");
                    handle(decode(&payload));
                    stream.send_modify(|stream| {
                        *stream.cursors.entry(name.clone()).or_default() += 1
                    });
                    taken += 1;
                }
            }
        }
        Ok(taken)
    }
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
