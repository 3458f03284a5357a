//! # broker: raw publish/subscribe, and the rules it keeps
//!
//! go-micro's broker example published a message every second and printed what a
//! subscriber got. It also defined a queue-group subscriber and never ran it, and it never
//! said what the broker promises: is delivery synchronous? What happens to a message
//! nobody listens for? Here the rules are run, not described: two broadcast subscribers
//! and a two-member queue group listen side by side, every handler is held while the
//! messages are published, and the totals printed at the end are the answers.
//!
//! Run it:
//!
//! ```text
//! cargo run --example broker                       # NATS if installed, else in-process
//! cargo run --example broker -- --backend memory   # the in-process broker
//! cargo run --example broker -- --messages 1000
//! ```
//!
//! It prints (the golden file `tests/golden/broker.txt` holds exactly this, on either
//! backend):
//!
//! ```text
//! published order 0 before anyone subscribed: accepted, no error
//! subscribed: broadcast a, broadcast b, queue group "workers" with members w1 and w2
//! published orders 1..=10 while every handler was held
//!   publish returned 10 times, handlers had run 0 times: delivery is asynchronous
//! released the handlers
//! broadcast a: 10 of 10 messages, in publish order
//! broadcast b: 10 of 10 messages, in publish order
//! queue group "workers": 10 of 10 messages between its 2 members, none twice
//! headers intact on all 30 deliveries, e.g. {seq: "1", sender: "order-service"}
//! order 0: delivered 0 times (at-most-once: nobody was subscribed)
//! dropped by slow consumers: 0
//! ```
//!
//! Which member of the queue group got which message is up to the broker (round robin
//! in-process, random on NATS): it is logged with `RUST_LOG=info`, not printed.
//!
//! Read it beside `notes/broker.md`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use microkit::backend::{Backend, BackendArgs};
use microkit::broker::{Headers, Message};
use microkit::{Out, say};
use tokio::sync::Semaphore;

#[derive(Parser, Debug)]
#[command(
    about = "The broker's rules, shown: asynchronous, broadcast vs queue group, at-most-once"
)]
struct Args {
    #[command(flatten)]
    backend: BackendArgs,

    /// How many orders to publish after the subscribers are in place.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    messages: u32,
}

const TOPIC: &str = "orders";
const QUEUE: &str = "workers";
/// Every wait in this example is capped; this only turns a hang into an error.
const PATIENCE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse(), &Out::stdout()).await)
}

async fn run(args: Args, out: &Out) -> anyhow::Result<()> {
    let backend = args.backend.connect().await?;
    run_on(&backend, args.messages, out).await
}

/// Who received what, recorded by the handlers.
#[derive(Default)]
struct Deliveries {
    /// Subscriber name -> sequence numbers, in arrival order.
    seqs: BTreeMap<&'static str, Vec<u32>>,
    /// Deliveries whose headers were not what the publisher sent.
    bad_headers: usize,
    example_headers: Option<Headers>,
}

async fn run_on(backend: &Backend, messages: u32, out: &Out) -> anyhow::Result<()> {
    tracing::info!(backend = backend.name(), "running");
    // Two clients, as two services would have: the order service publishes, the others
    // subscribe. On NATS they are two connections.
    let publisher = backend.broker().await?;
    let subscribers = backend.broker().await?;

    // Rule: at-most-once. Nobody listens yet, so this message is simply gone.
    publisher.publish(TOPIC, order_headers(0), Bytes::from("order 0")).await?;
    publisher.flush().await?;
    say!(out, "published order 0 before anyone subscribed: accepted, no error");

    // Every handler waits at this gate until we open it, so we can see what `publish`
    // waited for (nothing).
    let gate = Arc::new(Semaphore::new(0));
    let deliveries = Arc::new(Mutex::new(Deliveries::default()));
    let mut handlers = Vec::new();
    for (name, queue) in [("a", None), ("b", None), ("w1", Some(QUEUE)), ("w2", Some(QUEUE))] {
        let subscription = subscribers.subscribe(TOPIC, queue).await?;
        handlers.push(subscription.handle(record(name, gate.clone(), deliveries.clone())));
    }
    say!(
        out,
        "subscribed: broadcast a, broadcast b, queue group \"{QUEUE}\" with members w1 and w2"
    );

    // Rule: asynchronous. Each publish returns as soon as the broker has the message.
    for n in 1..=messages {
        publisher.publish(TOPIC, order_headers(n), Bytes::from(format!("order {n}"))).await?;
    }
    publisher.flush().await?;
    let handled = deliveries.lock().unwrap().seqs.values().map(Vec::len).sum::<usize>();
    say!(out, "published orders 1..={messages} while every handler was held");
    say!(
        out,
        "  publish returned {messages} times, handlers had run {handled} times: delivery is \
         asynchronous"
    );

    let expected = 3 * messages as usize; // a and b get all; the group shares one copy
    gate.add_permits(expected);
    say!(out, "released the handlers");
    wait_for(&deliveries, expected).await?;
    for handler in handlers {
        handler.stop().await;
    }
    report_totals(&deliveries.lock().unwrap(), messages, out);
    say!(out, "dropped by slow consumers: {}", subscribers.slow_consumer_drops());

    publisher.drain().await?;
    subscribers.drain().await?;
    Ok(())
}

/// The headers the order service puts on each message.
fn order_headers(n: u32) -> Headers {
    Headers::from([
        ("seq".to_owned(), n.to_string()),
        ("sender".to_owned(), "order-service".into()),
    ])
}

/// A handler for subscriber `name`: waits at the gate, then records the delivery.
fn record(
    name: &'static str,
    gate: Arc<Semaphore>,
    deliveries: Arc<Mutex<Deliveries>>,
) -> impl FnMut(Message) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static {
    move |message| {
        let (gate, deliveries) = (gate.clone(), deliveries.clone());
        Box::pin(async move {
            // A closed gate means the example is ending; nothing is left to record.
            let Ok(_permit) = gate.acquire().await else { return };
            let seq: u32 = message.headers.get("seq").and_then(|s| s.parse().ok()).unwrap_or(0);
            tracing::info!(subscriber = name, seq, "handled");
            let mut deliveries = deliveries.lock().unwrap();
            if message.headers != order_headers(seq) || message.payload != format!("order {seq}") {
                deliveries.bad_headers += 1;
            }
            if name == "a" && seq == 1 {
                deliveries.example_headers = Some(message.headers);
            }
            deliveries.seqs.entry(name).or_default().push(seq);
        })
    }
}

async fn wait_for(deliveries: &Mutex<Deliveries>, expected: usize) -> anyhow::Result<()> {
    let count = || deliveries.lock().unwrap().seqs.values().map(Vec::len).sum::<usize>();
    tokio::time::timeout(PATIENCE, async {
        while count() < expected {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .with_context(|| format!("only {} of {expected} deliveries within {PATIENCE:?}", count()))
}

fn report_totals(deliveries: &Deliveries, messages: u32, out: &Out) {
    let all: Vec<u32> = (1..=messages).collect();
    let none = Vec::new();
    for name in ["a", "b"] {
        let got = deliveries.seqs.get(name).unwrap_or(&none);
        let order = if *got == all { "in publish order" } else { "OUT OF ORDER" };
        say!(out, "broadcast {name}: {} of {messages} messages, {order}", got.len());
    }

    let w1 = deliveries.seqs.get("w1").unwrap_or(&none);
    let w2 = deliveries.seqs.get("w2").unwrap_or(&none);
    tracing::info!(w1 = w1.len(), w2 = w2.len(), "queue group shares");
    let mut shared: Vec<u32> = w1.iter().chain(w2).copied().collect();
    shared.sort_unstable();
    let total = shared.len();
    shared.dedup();
    let twice = total - shared.len();
    let twice = if twice == 0 { "none twice".to_owned() } else { format!("{twice} TWICE") };
    say!(
        out,
        "queue group \"{QUEUE}\": {} of {messages} messages between its 2 members, {twice}",
        shared.len()
    );

    let intact = 3 * messages as usize - deliveries.bad_headers;
    let example = deliveries
        .example_headers
        .as_ref()
        .map(|headers| {
            let fields: Vec<String> = [("seq", &headers["seq"]), ("sender", &headers["sender"])]
                .iter()
                .map(|(name, value)| format!("{name}: {value:?}"))
                .collect();
            format!("{{{}}}", fields.join(", "))
        })
        .unwrap_or_default();
    say!(out, "headers intact on all {intact} deliveries, e.g. {example}");

    let zero_seen = deliveries.seqs.values().flatten().filter(|&&seq| seq == 0).count();
    say!(out, "order 0: delivered {zero_seen} times (at-most-once: nobody was subscribed)");
}

#[cfg(test)]
mod tests {
    use super::*;
    use microkit::backend::BackendChoice;
    use microkit::nats::{INSTALL_HINT, NatsServer};

    #[tokio::test]
    async fn prints_its_golden_output_in_process() {
        let out = Out::capture();
        run(Args::parse_from(["broker", "--backend", "memory"]), &out).await.unwrap();
        microkit::golden::assert_matches("broker", &out.text());
    }

    #[tokio::test]
    async fn prints_the_same_on_nats() {
        let server = NatsServer::start().await.expect(INSTALL_HINT);
        let args = BackendArgs { backend: BackendChoice::Nats };
        let backend = args.connect_with(Some(&server.url())).await.unwrap();
        let out = Out::capture();
        run_on(&backend, 10, &out).await.unwrap();
        microkit::golden::assert_matches("broker", &out.text());
    }

    #[tokio::test]
    async fn many_messages_on_nats_lose_nothing() {
        let server = NatsServer::start().await.expect(INSTALL_HINT);
        let args = BackendArgs { backend: BackendChoice::Nats };
        let backend = args.connect_with(Some(&server.url())).await.unwrap();
        let out = Out::capture();
        run_on(&backend, 5000, &out).await.unwrap();
        let text = out.text();
        assert!(text.contains("broadcast a: 5000 of 5000 messages, in publish order"), "{text}");
        assert!(text.contains("5000 of 5000 messages between its 2 members, none twice"));
        assert!(text.contains("dropped by slow consumers: 0\n"), "{text}");
    }

    #[test]
    fn a_bad_message_count_is_refused() {
        for bad in ["0", "-1", "lots", "100001"] {
            assert!(Args::try_parse_from(["broker", "--messages", bad]).is_err(), "{bad}");
        }
    }
}
