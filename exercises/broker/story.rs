//! The default run: [`observe`] puts the broker's rules to work (two broadcast subscribers
//! and a two-member queue group, every handler held while the orders are published), and
//! [`tell`] prints what they came to.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use broker::{Headers, Message};
use bytes::Bytes;
use futures::future::BoxFuture;
use microkit::PATIENCE;
use microkit_backend::Backend;
use tokio::sync::{Semaphore, watch};

const TOPIC: &str = "orders";
const QUEUE: &str = "workers";
/// The subscribers, and the queue group each is in (`None`: a broadcast subscriber).
const SUBSCRIBERS: [(&str, Option<&str>); 4] =
    [("a", None), ("b", None), ("w1", Some(QUEUE)), ("w2", Some(QUEUE))];

/// Runs the broker's rules with `messages` orders and returns what each subscriber got.
pub async fn observe(backend: &Backend, messages: u32) -> anyhow::Result<Observed> {
    tracing::info!(backend = backend.name(), "running");
    // Two clients, as two services would have: the order service publishes, the others
    // subscribe. On NATS they are two connections.
    let publisher = broker::on(backend).await?;
    let subscribers = broker::on(backend).await?;

    // Rule: at-most-once. Nobody listens yet, so this message is simply gone, and
    // `publish` does not say so: there is nobody to say it to.
    publisher.publish(TOPIC, order_headers(0), Bytes::from("order 0")).await?;
    publisher.flush().await?;

    // Every handler waits at this gate until it is opened, so what `publish` waited for
    // (nothing) shows in the count of handlers that had run.
    let gate = Arc::new(Semaphore::new(0));
    let (observed, mut progress) = watch::channel(Observed { messages, ..Observed::default() });
    let mut handlers = Vec::new();
    for (name, queue) in SUBSCRIBERS {
        let subscription = subscribers.subscribe(TOPIC, queue).await?;
        handlers.push(subscription.handle(record(name, gate.clone(), observed.clone())));
    }

    // Rule: asynchronous. Each publish returns as soon as the broker has the message.
    for n in 1..=messages {
        publisher.publish(TOPIC, order_headers(n), Bytes::from(format!("order {n}"))).await?;
    }
    publisher.flush().await?;
    let handled_while_held = observed.borrow().delivered();

    // Rule: broadcast unless grouped. a and b get every order; the group shares one copy.
    let expected = 3 * messages as usize;
    gate.add_permits(expected);
    tokio::time::timeout(PATIENCE, progress.wait_for(|seen| seen.delivered() >= expected))
        .await
        .map_err(|_| {
            let got = observed.borrow().delivered();
            anyhow::anyhow!("only {got} of {expected} deliveries within {PATIENCE:?}")
        })?
        .context("the handlers ended early")?;
    for handler in handlers {
        handler.stop().await;
    }

    let mut observed = observed.send_replace(Observed::default());
    observed.handled_while_held = handled_while_held;
    observed.dropped = subscribers.slow_consumer_drops();
    publisher.drain().await?;
    subscribers.drain().await?;
    Ok(observed)
}

/// The headers the order service puts on each message.
pub fn order_headers(n: u32) -> Headers {
    Headers::from([
        ("seq".to_owned(), n.to_string()),
        ("sender".to_owned(), "order-service".into()),
    ])
}

/// A handler for subscriber `name`: waits at the gate, then records the delivery.
fn record(
    name: &'static str,
    gate: Arc<Semaphore>,
    observed: watch::Sender<Observed>,
) -> impl FnMut(Message) -> BoxFuture<'static, ()> + Send + 'static {
    move |message| {
        let (gate, observed) = (gate.clone(), observed.clone());
        Box::pin(async move {
            // A closed gate means the example is ending; nothing is left to record.
            let Ok(_permit) = gate.acquire().await else { return };
            let seq: u32 = message.headers.get("seq").and_then(|s| s.parse().ok()).unwrap_or(0);
            tracing::info!(subscriber = name, seq, "handled");
            observed.send_modify(|seen| {
                if message.headers != order_headers(seq)
                    || message.payload != format!("order {seq}")
                {
                    seen.bad_headers += 1;
                }
                if name == "a" && seq == 1 {
                    seen.example_headers = Some(message.headers);
                }
                seen.seqs.entry(name).or_default().push(seq);
            });
        })
    }
}

/// What a queue group's members got between them.
#[derive(Debug, PartialEq, Eq)]
pub struct GroupShare {
    /// Distinct orders.
    pub distinct: usize,
    /// Orders that reached more than one member: a broken group.
    pub twice: usize,
}

/// What one run observed: each field answers one question about the broker.
#[derive(Debug, Default)]
pub struct Observed {
    /// How many orders were published once the subscribers were in place.
    pub messages: u32,
    /// How many deliveries had been handled when the last `publish` returned.
    pub handled_while_held: usize,
    /// Subscriber name -> the sequence numbers it got, in arrival order.
    pub seqs: BTreeMap<&'static str, Vec<u32>>,
    /// Deliveries whose headers or payload were not what the publisher sent.
    pub bad_headers: usize,
    /// The headers subscriber `a` got with order 1: what travels beside a payload.
    pub example_headers: Option<Headers>,
    /// Messages the broker dropped because a subscriber fell behind.
    pub dropped: u64,
}

impl Observed {
    pub fn delivered(&self) -> usize {
        self.seqs.values().map(Vec::len).sum()
    }

    pub fn got(&self, name: &str) -> &[u32] {
        self.seqs.get(name).map_or(&[], Vec::as_slice)
    }

    /// Whether `name` got every order, each once, in publish order.
    pub fn in_publish_order(&self, name: &str) -> bool {
        self.got(name).iter().copied().eq(1..=self.messages)
    }

    /// What the queue group got between its members.
    pub fn queue_group(&self) -> GroupShare {
        let (w1, w2) = (self.got("w1"), self.got("w2"));
        tracing::info!(w1 = w1.len(), w2 = w2.len(), "queue group shares");
        let mut shared: Vec<u32> = w1.iter().chain(w2).copied().collect();
        shared.sort_unstable();
        let total = shared.len();
        shared.dedup();
        GroupShare { distinct: shared.len(), twice: total - shared.len() }
    }

    /// How many times order 0, published before anyone subscribed, was delivered.
    pub fn order_zero_delivered(&self) -> usize {
        self.seqs.values().flatten().filter(|&&seq| seq == 0).count()
    }
}

/// The default run: the rules, then what they came to.
pub async fn tell(backend: &Backend, messages: u32) -> anyhow::Result<()> {
    let seen = observe(backend, messages).await?;
    println!("published order 0 before anyone subscribed: accepted, no error");
    println!(
        "subscribed: broadcast a, broadcast b, queue group \"{QUEUE}\" with members w1 and w2"
    );
    println!("published orders 1..={messages} while every handler was held");
    println!(
        "  publish returned {messages} times, handlers had run {} times: delivery is \
         asynchronous",
        seen.handled_while_held
    );
    println!("released the handlers");
    for name in ["a", "b"] {
        let order = if seen.in_publish_order(name) { "in publish order" } else { "OUT OF ORDER" };
        println!("broadcast {name}: {} of {messages} messages, {order}", seen.got(name).len());
    }
    let GroupShare { distinct, twice } = seen.queue_group();
    let twice = if twice == 0 { "none twice".to_owned() } else { format!("{twice} TWICE") };
    println!(
        "queue group \"{QUEUE}\": {distinct} of {messages} messages between its 2 members, {twice}"
    );
    let example = seen
        .example_headers
        .as_ref()
        .map(|headers| format!("{{seq: {:?}, sender: {:?}}}", headers["seq"], headers["sender"]))
        .unwrap_or_default();
    let intact = seen.delivered() - seen.bad_headers;
    println!("headers intact on all {intact} deliveries, e.g. {example}");
    println!(
        "order 0: delivered {} times (at-most-once: nobody was subscribed)",
        seen.order_zero_delivered()
    );
    println!("dropped by slow consumers: {}", seen.dropped);
    Ok(())
}
