//! A subscription, as a stream of messages or as a handler running in a task of its own:
//! the same on both brokers, which differ only in the [`Source`] they plug in.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{BrokerError, Message};

/// What each implementation plugs into a [`Subscription`]: its stream of messages, and how
/// to stop it.
pub(crate) trait Source: Stream<Item = Message> + Send + Unpin {
    /// Stops new messages; those already buffered are still yielded, then the stream ends.
    fn unsubscribe(&mut self) -> BoxFuture<'_, Result<(), BrokerError>>;
}

/// One subscription: a stream of messages, or (with [`Subscription::handle`]) a handler
/// run for each message in a task of its own.
pub struct Subscription {
    topic: String,
    queue: Option<String>,
    source: Box<dyn Source>,
}

impl Subscription {
    pub(crate) fn new(topic: &str, queue: Option<&str>, source: Box<dyn Source>) -> Self {
        Subscription { topic: topic.to_owned(), queue: queue.map(str::to_owned), source }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn queue(&self) -> Option<&str> {
        self.queue.as_deref()
    }

    /// Stops the subscription; messages already buffered are still returned by the stream.
    pub async fn unsubscribe(&mut self) -> Result<(), BrokerError> {
        self.source.unsubscribe().await
    }

    /// Runs `handler` on every message, one at a time and in order, in a spawned task:
    /// go-micro's `broker.Subscribe(topic, handler)`. The publisher never waits for it.
    pub fn handle<F, Fut>(mut self, mut handler: F) -> Handler
    where
        F: FnMut(Message) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let stop = CancellationToken::new();
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let mut handled = 0;
            loop {
                tokio::select! {
                    message = self.next() => match message {
                        Some(message) => {
                            handler(message).await;
                            handled += 1;
                        }
                        None => return handled,
                    },
                    () = stopping.cancelled() => break,
                }
            }
            // Stopping drains: no new messages, but the buffered ones are still handled.
            if let Err(error) = self.unsubscribe().await {
                tracing::warn!(%error, topic = self.topic, "unsubscribe failed");
            }
            while let Some(message) = self.next().await {
                handler(message).await;
                handled += 1;
            }
            handled
        });
        Handler { stop, task }
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        Pin::new(&mut *self.source).poll_next(cx)
    }
}

/// A handler running for a subscription.
pub struct Handler {
    stop: CancellationToken,
    task: JoinHandle<u64>,
}

impl Handler {
    /// Unsubscribes, handles what was already buffered, and returns how many messages
    /// the handler saw in all.
    pub async fn stop(self) -> u64 {
        self.stop.cancel();
        self.task.await.unwrap_or_else(|error| {
            tracing::error!(%error, "a message handler panicked");
            0
        })
    }

    /// Waits until the subscription ends by itself (the broker was drained).
    pub async fn finished(self) -> u64 {
        self.task.await.unwrap_or(0)
    }
}
