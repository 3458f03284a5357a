//! # pubsub: typed events, and the services that subscribe to them
//!
//! The lesson is [`Event`], [`publish`] and [`subscribe`]: a topic is bound to one
//! (protobuf) event type, a service registers a handler per topic, and a payload that is not
//! that type is logged, counted and skipped while the subscriber lives on. The default run
//! has one topic broadcast (mailer and analytics each get every sign-up) and one worked by
//! a queue group (two billing instances share the orders).
//!
//! go-micro's example had this shape, but a payload that did not decode was an error unseen.
//!
//! Run it:
//!
//! ```text
//! cargo run --example pubsub                       # NATS if installed, else in memory
//! cargo run --example pubsub -- --backend memory
//! ```
//!
//! Or across terminals, on one NATS server (`nats-server -js`; `NATS_URL` set in each):
//!
//! ```text
//! cargo run --example pubsub -- subscriber --service mailer    # billing: run it twice
//! cargo run --example pubsub -- publisher --users 3 --orders 6
//! ```
//!
//! Prints `tests/golden/pubsub.txt`; explained in `notes/pubsub.md`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use clap::{Subcommand, ValueEnum};
use microkit::PATIENCE;
use microkit::backend::Backend;
use microkit::broker::{Broker, Handler, Headers};
use microkit::proto::events::{OrderPlaced, UserSignedUp};
use tokio::sync::watch;

/// An event type bound to its topic: whatever arrives on `TOPIC` is decoded as `Self`.
trait Event: prost::Message + Default + 'static {
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
async fn publish<E: Event>(broker: &dyn Broker, event: &E) -> anyhow::Result<()> {
    let headers = Headers::from([
        ("content-type".to_owned(), "application/protobuf".to_owned()),
        ("event-type".to_owned(), E::TYPE.to_owned()),
    ]);
    broker.publish(E::TOPIC, headers, Bytes::from(event.encode_to_vec())).await?;
    Ok(())
}

/// What a subscriber counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    handled: u64,
    undecodable: u64,
}

impl Tally {
    /// Every payload that reached the subscriber, good or not.
    fn seen(&self) -> u64 {
        self.handled + self.undecodable
    }
}

/// Registers `handler` for `E`'s topic (in `queue`, if given): go-micro's
/// `micro.RegisterSubscriber(topic, server, handler)`. A payload that is not an `E` is
/// logged, counted and skipped; the subscription goes on. `tally` is a watch, so whoever
/// waits for a count is woken by each change instead of polling.
async fn subscribe<E, F>(
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
    let subscription = broker.subscribe(E::TOPIC, queue).await?;
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

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    /// Sends a welcome mail per sign-up: subscribes to user.signed_up (broadcast).
    Mailer,
    /// Counts sign-ups: also subscribes to user.signed_up (broadcast).
    Analytics,
    /// Charges each order once: subscribes to order.placed in queue group "billing".
    Billing,
}

/// A service's subscriber: its name, its tally, and what it saw.
struct Running {
    name: String,
    tally: watch::Sender<Tally>,
    seen: Arc<Mutex<Vec<String>>>,
    handler: Handler,
}

/// Starts one service's subscriber. With `print_each`, each event is printed as it comes
/// (the role mode); the default run prints totals instead.
async fn start(
    broker: &dyn Broker,
    service: Service,
    instance: &str,
    print_each: bool,
) -> anyhow::Result<Running> {
    let tally = watch::Sender::new(Tally::default());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = {
        let seen = seen.clone();
        let name = instance.to_owned();
        move |line: String| {
            if print_each {
                println!("{name}: {line}");
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

/// Waits (capped) until the subscribers of `group` have seen `expected` payloads between
/// them: woken by every change of their tallies.
async fn settle(group: &[Running], expected: u64) -> anyhow::Result<()> {
    let mut tallies: Vec<_> = group.iter().map(|running| running.tally.subscribe()).collect();
    let seen = |tallies: &[watch::Receiver<Tally>]| -> u64 {
        tallies.iter().map(|tally| tally.borrow().seen()).sum()
    };
    tokio::time::timeout(PATIENCE, async {
        while seen(&tallies) < expected {
            let changes = tallies.iter_mut().map(|tally| Box::pin(tally.changed()));
            let _ = futures::future::select_all(changes).await;
        }
    })
    .await
    .with_context(|| format!("{} got under {expected} events in {PATIENCE:?}", group[0].name))
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

/// What the default run's subscribers ended with.
#[derive(Debug)]
struct Seen {
    /// Per broadcast subscriber: its name, the users it saw, its tally.
    broadcast: Vec<(String, Vec<String>, Tally)>,
    /// Every order the billing instances handled, one entry per delivery ("id cents").
    orders: Vec<String>,
}

impl Seen {
    /// Distinct orders billed, how many were billed twice, and the cents billed in all.
    fn billing(&self) -> (usize, usize, u64) {
        let distinct: BTreeSet<&String> = self.orders.iter().collect();
        let cents = distinct.iter().filter_map(|o| o.rsplit(' ').next()?.parse::<u64>().ok());
        (distinct.len(), self.orders.len() - distinct.len(), cents.sum())
    }
}

/// The default run: four services in one process, 3 sign-ups (and a bad payload), 6 orders.
async fn run_all_here(backend: &Backend) -> anyhow::Result<Seen> {
    // Each service has its own broker client, as separate processes would.
    let mut services = Vec::new();
    let mut brokers = Vec::new();
    for (service, instance) in [
        (Service::Mailer, "mailer"),
        (Service::Analytics, "analytics"),
        (Service::Billing, "billing-1"),
        (Service::Billing, "billing-2"),
    ] {
        let broker = backend.broker().await?;
        services.push(start(&*broker, service, instance, false).await?);
        brokers.push(broker);
    }

    let publisher = backend.broker().await?;
    publish_users(&*publisher, 3, Some(0)).await?;
    publish_orders(&*publisher, 6).await?;
    publisher.flush().await?;

    // Every copy handled: 4 per broadcast subscriber (3 events and the bad payload), 6
    // orders between the two billing instances.
    settle(&services[0..1], 4).await?;
    settle(&services[1..2], 4).await?;
    settle(&services[2..4], 6).await?;

    let mut seen = Seen { broadcast: Vec::new(), orders: Vec::new() };
    for running in services {
        running.handler.stop().await;
        let events = std::mem::take(&mut *running.seen.lock().unwrap());
        if running.name.starts_with("billing") {
            tracing::info!(instance = running.name, share = events.len(), "billing share");
            seen.orders.extend(events);
        } else {
            seen.broadcast.push((running.name, events, *running.tally.borrow()));
        }
    }
    for broker in brokers {
        broker.drain().await?;
    }
    publisher.drain().await?;
    Ok(seen)
}

async fn tell(backend: &Backend) -> anyhow::Result<()> {
    let seen = run_all_here(backend).await?;
    println!("registered mailer on {} (broadcast)", UserSignedUp::TOPIC);
    println!("registered analytics on {} (broadcast)", UserSignedUp::TOPIC);
    println!("registered billing-1, billing-2 on {} (queue group \"billing\")", OrderPlaced::TOPIC);
    println!("published 3 UserSignedUp, 1 undecodable payload, then 6 OrderPlaced");
    for (name, users, tally) in &seen.broadcast {
        println!(
            "{name}: {} UserSignedUp ({}), {} undecodable skipped, still subscribed",
            tally.handled,
            users.join(", "),
            tally.undecodable
        );
    }
    let (distinct, twice, cents) = seen.billing();
    let twice = if twice == 0 { "none twice".to_owned() } else { format!("{twice} TWICE") };
    println!(
        "billing: {distinct} OrderPlaced between 2 instances, {twice}, {}.{:02} in total",
        cents / 100,
        cents % 100
    );
    Ok(())
}

/// `--backend`, and the role to run (none: the whole story, in this one process).
type Args = microkit::backend::Cli<Role>;

#[derive(Subcommand, Debug)]
enum Role {
    /// Publishes sign-ups and orders, then exits.
    Publisher {
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=10_000))]
        users: u32,
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(0..=10_000))]
        orders: u32,
    },
    /// Runs one service's subscriber until stopped (SIGTERM, SIGINT, SIGHUP) or until it
    /// has handled --max-events.
    Subscriber {
        #[arg(long, value_enum)]
        service: Service,
        /// Stop after this many events (default: run until stopped).
        #[arg(long)]
        max_events: Option<u64>,
    },
}

impl microkit::backend::Roles for Role {
    const ABOUT: &'static str =
        "Typed events: a topic per event type, broadcast and queue-group subscribers";
}

fn main() -> std::process::ExitCode {
    microkit::main(run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let backend = args.backend.connect().await?;
    let Some(role) = args.role else { return tell(&backend).await };
    backend.require_shared_nats("the publisher and subscriber roles")?;
    let broker = backend.broker().await?;
    match role {
        Role::Publisher { users, orders } => {
            publish_users(&*broker, users, None).await?;
            publish_orders(&*broker, orders).await?;
            broker.drain().await?;
            println!("published {users} UserSignedUp and {orders} OrderPlaced");
        }
        Role::Subscriber { service, max_events } => {
            let name = format!("{service:?}").to_lowercase();
            let running = start(&*broker, service, &name, true).await?;
            let tally = until_stopped(running, max_events).await?;
            broker.drain().await?;
            println!(
                "{name}: {} handled, {} undecodable skipped",
                tally.handled, tally.undecodable
            );
        }
    }
    Ok(())
}

/// The subscriber role, once subscribed: runs until stopped or until `max_events` are
/// handled, then handles what is already buffered and returns the tally.
async fn until_stopped(running: Running, max_events: Option<u64>) -> anyhow::Result<Tally> {
    let name = &running.name;
    // Armed before saying so: from here on a signal is a stop request, never a kill.
    let stop = microkit::signal::stop_requested();
    println!("{name}: listening (Ctrl-C to stop)");
    let mut tally = running.tally.subscribe();
    let enough = async {
        match max_events {
            Some(max) => drop(tally.wait_for(|tally| tally.handled >= max).await),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = enough => {}
        signal = stop => {
            tracing::info!(signal = signal?, "stopping: draining the subscription");
            microkit::signal::exit_on_next();
        }
    }
    running.handler.stop().await;
    Ok(*running.tally.borrow())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use microkit::backend::{BackendArgs, BackendChoice};
    use microkit::nats::{INSTALL_HINT, NatsServer};
    use prost::Message as _;

    fn assert_every_service_got_its_share(seen: &Seen) {
        let users = vec!["ada".to_owned(), "grace".into(), "linus".into()];
        let tally = Tally { handled: 3, undecodable: 1 };
        let names: Vec<&str> = seen.broadcast.iter().map(|(name, ..)| name.as_str()).collect();
        assert_eq!(names, ["mailer", "analytics"]);
        for (name, got, counted) in &seen.broadcast {
            assert_eq!((got, counted), (&users, &tally), "{name}");
        }
        assert_eq!(seen.billing(), (6, 0, 21_000), "{:?}", seen.orders);
    }

    #[tokio::test]
    async fn every_service_gets_its_share_in_memory() {
        let backend = BackendArgs { backend: BackendChoice::Memory }.connect_with(None).await;
        assert_every_service_got_its_share(&run_all_here(&backend.unwrap()).await.unwrap());
    }

    #[tokio::test]
    async fn every_service_gets_its_share_on_nats() {
        let server = NatsServer::start().await.expect(INSTALL_HINT);
        let args = BackendArgs { backend: BackendChoice::Nats };
        let backend = args.connect_with(Some(&server.url())).await.unwrap();
        assert_every_service_got_its_share(&run_all_here(&backend).await.unwrap());
    }

    #[test]
    fn billing_notices_an_order_charged_twice() {
        let orders = ["order-1 1000", "order-2 2000", "order-1 1000"];
        let seen = Seen { broadcast: Vec::new(), orders: orders.map(str::to_owned).to_vec() };
        assert_eq!(seen.billing(), (2, 1, 3000));
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
        let tally = watch::Sender::new(Tally::default());
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
        assert_eq!(*tally.borrow(), Tally { handled: 1, undecodable: 1 });
    }

    #[tokio::test]
    async fn a_message_without_an_event_type_is_counted_and_skipped() {
        let broker = microkit::broker::MemoryBroker::new();
        let tally = watch::Sender::new(Tally::default());
        let handled = Arc::new(Mutex::new(Vec::new()));
        let record = handled.clone();
        let handler = subscribe(&broker, "test", None, tally.clone(), move |e: UserSignedUp| {
            record.lock().unwrap().push(e.user_id)
        })
        .await
        .unwrap();
        // Both decode "successfully" as a UserSignedUp: an OrderPlaced's bytes (its
        // order_id lands in user_id) and no bytes at all. Neither says what it is.
        let order = OrderPlaced { order_id: "o-1".into(), ..Default::default() };
        for payload in [Bytes::from(order.encode_to_vec()), Bytes::new()] {
            assert!(UserSignedUp::decode(payload.clone()).is_ok());
            broker.publish(UserSignedUp::TOPIC, Headers::new(), payload).await.unwrap();
        }
        publish(&broker, &UserSignedUp { user_id: "ada".into(), ..Default::default() })
            .await
            .unwrap();
        broker.drain().await.unwrap();
        assert_eq!(handler.finished().await, 3);
        assert_eq!(*tally.borrow(), Tally { handled: 1, undecodable: 2 });
        assert_eq!(*handled.lock().unwrap(), ["ada"], "only the labelled event was handled");
    }

    #[tokio::test]
    async fn a_subscriber_stops_at_max_events_with_its_tally() {
        let backend = BackendArgs { backend: BackendChoice::Memory }.connect_with(None).await;
        let backend = backend.unwrap();
        let broker = backend.broker().await.unwrap();
        let running = start(&*broker, Service::Billing, "billing", true).await.unwrap();
        publish_orders(&*backend.broker().await.unwrap(), 2).await.unwrap();
        let tally = tokio::time::timeout(PATIENCE, until_stopped(running, Some(2)))
            .await
            .expect("the role stops by itself at --max-events");
        assert_eq!(tally.unwrap(), Tally { handled: 2, undecodable: 0 });
    }

    #[tokio::test]
    async fn roles_refuse_to_run_without_a_shared_server() {
        let args = Args::parse_from(["pubsub", "--backend", "memory", "publisher"]);
        let error = run(args).await.unwrap_err().to_string();
        assert!(error.contains("NATS_URL"), "{error}");
    }

    #[test]
    fn a_subscriber_needs_a_known_service() {
        let error = Args::try_parse_from(["pubsub", "subscriber", "--service", "payroll"]);
        assert!(error.unwrap_err().to_string().contains("mailer"));
    }
}
