//! # pubsub: typed events, and the services that subscribe to them
//!
//! go-micro's pubsub example published typed (protobuf) events on two topics, with one
//! subscriber in a queue; its subscribers were registered on the service by topic, and a
//! message that did not decode was an error the learner never saw. Here the same shape:
//! a topic is bound to one event type, services register a handler per topic, one topic is
//! broadcast (mailer and analytics each get every sign-up) and one is worked by a queue
//! group (two billing instances share the orders). An undecodable payload is logged,
//! counted and skipped, and the subscriber lives on.
//!
//! Run it:
//!
//! ```text
//! cargo run --example pubsub                       # NATS if installed, else in-process
//! cargo run --example pubsub -- --backend memory
//! ```
//!
//! Or across terminals, on one NATS server (`nats-server -js`, then in each terminal
//! `export NATS_URL=nats://127.0.0.1:4222`):
//!
//! ```text
//! cargo run --example pubsub -- subscriber --service mailer
//! cargo run --example pubsub -- subscriber --service billing     # run this one twice
//! cargo run --example pubsub -- publisher --users 3 --orders 6
//! ```
//!
//! The default run prints (the golden file `tests/golden/pubsub.txt` holds exactly this):
//!
//! ```text
//! registered mailer on user.signed_up (broadcast)
//! registered analytics on user.signed_up (broadcast)
//! registered billing-1, billing-2 on order.placed (queue group "billing")
//! published 3 UserSignedUp, 1 undecodable payload, then 6 OrderPlaced
//! mailer: 3 UserSignedUp (ada, grace, linus), 1 undecodable skipped, still subscribed
//! analytics: 3 UserSignedUp (ada, grace, linus), 1 undecodable skipped, still subscribed
//! billing: 6 OrderPlaced between 2 instances, none twice, 210.00 in total
//! ```
//!
//! Read it beside `notes/pubsub.md`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use microkit::backend::{Backend, BackendArgs};
use microkit::broker::{Broker, Handler, Headers};
use microkit::proto::events::{OrderPlaced, UserSignedUp};
use microkit::{Out, say};

#[derive(Parser, Debug)]
#[command(about = "Typed events: a topic per event type, broadcast and queue-group subscribers")]
struct Args {
    #[command(flatten)]
    backend: BackendArgs,

    /// Run one role against a shared NATS server; without a role, everything runs here.
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Publishes sign-ups and orders, then exits.
    Publisher {
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=10_000))]
        users: u32,
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(0..=10_000))]
        orders: u32,
    },
    /// Runs one service's subscriber until Ctrl-C (or until it has handled --max-events).
    Subscriber {
        #[arg(long, value_enum)]
        service: Service,
        /// Stop after this many events (default: run until Ctrl-C).
        #[arg(long)]
        max_events: Option<u64>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    /// Sends a welcome mail per sign-up: subscribes to user.signed_up (broadcast).
    Mailer,
    /// Counts sign-ups: also subscribes to user.signed_up (broadcast).
    Analytics,
    /// Charges each order once: subscribes to order.placed in queue group "billing".
    Billing,
}

/// An event type bound to its topic: whatever arrives on `TOPIC` is decoded as `Self`.
trait Event: prost::Message + Default + 'static {
    const TOPIC: &'static str;
    /// Sent in the `event-type` header, so a subscriber can refuse a stranger early.
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
async fn publish<E: Event>(broker: &dyn Broker, event: &E) -> anyhow::Result<()> {
    let headers = Headers::from([
        ("content-type".to_owned(), "application/protobuf".to_owned()),
        ("event-type".to_owned(), E::TYPE.to_owned()),
    ]);
    broker.publish(E::TOPIC, headers, Bytes::from(event.encode_to_vec())).await?;
    Ok(())
}

/// What a subscriber counted.
#[derive(Debug, Default)]
struct Tally {
    handled: u64,
    undecodable: u64,
}

/// Registers `handler` for `E`'s topic (in `queue`, if given): go-micro's
/// `micro.RegisterSubscriber(topic, server, handler)`. A payload that is not an `E` is
/// logged, counted and skipped; the subscription goes on.
async fn subscribe<E, F>(
    broker: &dyn Broker,
    service: &str,
    queue: Option<&str>,
    tally: Arc<Mutex<Tally>>,
    mut handler: F,
) -> anyhow::Result<Handler>
where
    E: Event,
    F: FnMut(E) + Send + 'static,
{
    let subscription = broker.subscribe(E::TOPIC, queue).await?;
    let service = service.to_owned();
    Ok(subscription.handle(move |message| {
        let decoded = match message.headers.get("event-type") {
            Some(kind) if kind != E::TYPE => Err(format!("event-type {kind:?}, not {}", E::TYPE)),
            _ => E::decode(message.payload).map_err(|error| error.to_string()),
        };
        match decoded {
            Ok(event) => {
                handler(event);
                tally.lock().unwrap().handled += 1;
            }
            Err(reason) => {
                tracing::warn!(service, topic = E::TOPIC, %reason, "undecodable payload skipped");
                tally.lock().unwrap().undecodable += 1;
            }
        }
        std::future::ready(())
    }))
}

/// A service's subscriber: its name, its tally, and what it saw.
struct Running {
    name: String,
    tally: Arc<Mutex<Tally>>,
    seen: Arc<Mutex<Vec<String>>>,
    handler: Handler,
}

/// Starts one service's subscriber. `out`, when given, prints each event as it comes
/// (the role mode); the default run prints totals instead.
async fn start(
    broker: &dyn Broker,
    service: Service,
    instance: &str,
    out: Option<Out>,
) -> anyhow::Result<Running> {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = {
        let seen = seen.clone();
        let name = instance.to_owned();
        move |line: String| {
            if let Some(out) = &out {
                say!(out, "{name}: {line}");
            }
            seen.lock().unwrap().push(line);
        }
    };
    let handler = match service {
        Service::Mailer | Service::Analytics => {
            subscribe(broker, instance, None, tally.clone(), move |e: UserSignedUp| {
                record(e.user_id)
            })
            .await?
        }
        Service::Billing => {
            subscribe(broker, instance, Some("billing"), tally.clone(), move |e: OrderPlaced| {
                record(format!("{} {}", e.order_id, e.amount_cents))
            })
            .await?
        }
    };
    Ok(Running { name: instance.to_owned(), tally, seen, handler })
}

const USERS: [&str; 5] = ["ada", "grace", "linus", "barbara", "ken"];

async fn publish_users(
    broker: &dyn Broker,
    count: u32,
    garbage_after: Option<u32>,
) -> anyhow::Result<()> {
    for n in 0..count {
        let name = USERS[n as usize % USERS.len()];
        let user_id = if n < USERS.len() as u32 { name.to_owned() } else { format!("{name}-{n}") };
        publish(broker, &UserSignedUp { email: format!("{user_id}@example.com"), user_id }).await?;
        if garbage_after == Some(n) {
            // Not protobuf at all (a truncated varint): every subscriber must survive it.
            broker
                .publish(UserSignedUp::TOPIC, Headers::new(), Bytes::from_static(&[0xff; 3]))
                .await?;
        }
    }
    Ok(())
}

async fn publish_orders(broker: &dyn Broker, count: u32) -> anyhow::Result<()> {
    for n in 1..=count {
        let order = OrderPlaced {
            order_id: format!("order-{n}"),
            user_id: USERS[n as usize % USERS.len()].to_owned(),
            amount_cents: 1000 * u64::from(n), // 10.00, 20.00, ...
        };
        publish(broker, &order).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse(), &Out::stdout()).await)
}

async fn run(args: Args, out: &Out) -> anyhow::Result<()> {
    let nats_url = std::env::var(microkit::backend::NATS_URL).ok().filter(|url| !url.is_empty());
    run_with(args, nats_url.as_deref(), out).await
}

/// `run`, with `NATS_URL`'s value passed in (so tests need not touch the environment).
async fn run_with(args: Args, nats_url: Option<&str>, out: &Out) -> anyhow::Result<()> {
    let Some(role) = args.role else {
        let backend = args.backend.connect_with(nats_url).await?;
        return run_all_here(&backend, out).await;
    };
    // Roles meet on one server, so they need a URL: a private server per process would
    // leave each role alone with itself.
    let Some(url) = nats_url else {
        bail!(
            "the publisher and subscriber roles run in separate processes and meet on NATS: \
             start `nats-server -js` and set NATS_URL=nats://127.0.0.1:4222 in each terminal"
        );
    };
    let backend = args.backend.connect_with(Some(url)).await?;
    if matches!(backend, Backend::Memory { .. }) {
        bail!("the roles need NATS; drop --backend memory (or MICRO_BACKEND=memory)");
    }
    run_role(&backend, role, out).await
}

async fn run_role(backend: &Backend, role: Role, out: &Out) -> anyhow::Result<()> {
    let broker = backend.broker().await?;
    match role {
        Role::Publisher { users, orders } => {
            publish_users(&*broker, users, None).await?;
            publish_orders(&*broker, orders).await?;
            broker.drain().await?;
            say!(out, "published {users} UserSignedUp and {orders} OrderPlaced");
        }
        Role::Subscriber { service, max_events } => {
            let name = format!("{service:?}").to_lowercase();
            let running = start(&*broker, service, &name, Some(out.clone())).await?;
            say!(out, "{name}: listening (Ctrl-C to stop)");
            let limit_reached = async {
                while max_events.is_none_or(|max| running.tally.lock().unwrap().handled < max) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            tokio::select! {
                () = limit_reached => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            running.handler.stop().await;
            let tally = running.tally.lock().unwrap();
            say!(
                out,
                "{name}: {} handled, {} undecodable skipped",
                tally.handled,
                tally.undecodable
            );
        }
    }
    Ok(())
}

async fn run_all_here(backend: &Backend, out: &Out) -> anyhow::Result<()> {
    // Each service has its own broker client, as separate processes would.
    let mut services = Vec::new();
    for (service, instance) in [
        (Service::Mailer, "mailer"),
        (Service::Analytics, "analytics"),
        (Service::Billing, "billing-1"),
        (Service::Billing, "billing-2"),
    ] {
        let broker = backend.broker().await?;
        services.push((start(&*broker, service, instance, None).await?, broker));
    }
    say!(out, "registered mailer on {} (broadcast)", UserSignedUp::TOPIC);
    say!(out, "registered analytics on {} (broadcast)", UserSignedUp::TOPIC);
    say!(
        out,
        "registered billing-1, billing-2 on {} (queue group \"billing\")",
        OrderPlaced::TOPIC
    );

    let publisher = backend.broker().await?;
    publish_users(&*publisher, 3, Some(0)).await?;
    publish_orders(&*publisher, 6).await?;
    publisher.flush().await?;
    say!(out, "published 3 UserSignedUp, 1 undecodable payload, then 6 OrderPlaced");

    // Wait (capped) until every copy has been handled: 4 per broadcast subscriber (3 events
    // and the bad payload), 6 orders between the two billing instances.
    let settled = || {
        let count = |i: usize| {
            let tally = services[i].0.tally.lock().unwrap();
            tally.handled + tally.undecodable
        };
        count(0) == 4 && count(1) == 4 && count(2) + count(3) == 6
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while !settled() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .context("the subscribers did not get every event within 10 s")?;

    for (running, _) in &services[..2] {
        let seen = running.seen.lock().unwrap().join(", ");
        let tally = running.tally.lock().unwrap();
        say!(
            out,
            "{}: {} UserSignedUp ({seen}), {} undecodable skipped, still subscribed",
            running.name,
            tally.handled,
            tally.undecodable
        );
    }
    let mut orders: Vec<String> = Vec::new();
    for (running, _) in &services[2..] {
        tracing::info!(
            instance = running.name,
            share = running.seen.lock().unwrap().len(),
            "billing share"
        );
        orders.extend(running.seen.lock().unwrap().iter().cloned());
    }
    let distinct: BTreeSet<&String> = orders.iter().collect();
    let twice = orders.len() - distinct.len();
    let cents: u64 =
        distinct.iter().filter_map(|o| o.rsplit(' ').next()?.parse::<u64>().ok()).sum();
    let twice = if twice == 0 { "none twice".to_owned() } else { format!("{twice} TWICE") };
    say!(
        out,
        "billing: {} OrderPlaced between 2 instances, {twice}, {}.{:02} in total",
        distinct.len(),
        cents / 100,
        cents % 100
    );

    for (running, broker) in services {
        running.handler.stop().await;
        broker.drain().await?;
    }
    publisher.drain().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use microkit::backend::BackendChoice;
    use microkit::nats::{INSTALL_HINT, NatsServer};
    use prost::Message as _;

    #[tokio::test]
    async fn prints_its_golden_output_in_process() {
        let out = Out::capture();
        run(Args::parse_from(["pubsub", "--backend", "memory"]), &out).await.unwrap();
        microkit::golden::assert_matches("pubsub", &out.text());
    }

    #[tokio::test]
    async fn prints_the_same_on_nats() {
        let server = NatsServer::start().await.expect(INSTALL_HINT);
        let args = BackendArgs { backend: BackendChoice::Nats };
        let backend = args.connect_with(Some(&server.url())).await.unwrap();
        let out = Out::capture();
        run_all_here(&backend, &out).await.unwrap();
        microkit::golden::assert_matches("pubsub", &out.text());
    }

    #[test]
    fn the_bad_payload_really_is_not_protobuf() {
        assert!(UserSignedUp::decode(&[0xff_u8; 3][..]).is_err());
        let good = UserSignedUp { user_id: "ada".into(), email: "ada@example.com".into() };
        assert_eq!(UserSignedUp::decode(&good.encode_to_vec()[..]).unwrap(), good);
    }

    #[tokio::test]
    async fn an_event_of_another_type_is_counted_and_skipped() {
        let broker = microkit::broker::MemoryBroker::new();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let handler =
            subscribe(&broker, "test", None, tally.clone(), |_: UserSignedUp| {}).await.unwrap();
        // An OrderPlaced on the sign-up topic: it might even decode, but its header says no.
        let headers = Headers::from([("event-type".to_owned(), OrderPlaced::TYPE.to_owned())]);
        let order = OrderPlaced { order_id: "o".into(), ..Default::default() };
        let payload = Bytes::from(order.encode_to_vec());
        broker.publish(UserSignedUp::TOPIC, headers, payload).await.unwrap();
        publish(&broker, &UserSignedUp::default()).await.unwrap();
        broker.drain().await.unwrap();
        assert_eq!(handler.finished().await, 2);
        let tally = tally.lock().unwrap();
        assert_eq!((tally.handled, tally.undecodable), (1, 1));
    }

    #[tokio::test]
    async fn roles_refuse_to_run_without_a_shared_server() {
        let args = Args::parse_from(["pubsub", "publisher"]);
        let error = run_with(args, None, &Out::capture()).await.unwrap_err().to_string();
        assert!(error.contains("NATS_URL"), "{error}");
    }

    #[test]
    fn a_subscriber_needs_a_known_service() {
        let error = Args::try_parse_from(["pubsub", "subscriber", "--service", "payroll"]);
        assert!(error.unwrap_err().to_string().contains("mailer"));
    }
}
