//! The default run: four services in one process (mailer and analytics each get every
//! sign-up, two billing instances share the orders), and what each ended with. The
//! services and the publishing are the roles' too.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use broker::{Broker, Handler, Headers};
use bytes::Bytes;
use clap::ValueEnum;
use microkit::PATIENCE;
use microkit::proto::events::{OrderPlaced, UserSignedUp};
use microkit_backend::Backend;
use tokio::sync::watch;

use crate::typed_events::{Event, Tally, publish, subscribe};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Sends a welcome mail per sign-up: subscribes to user.signed_up (broadcast).
    Mailer,
    /// Counts sign-ups: also subscribes to user.signed_up (broadcast).
    Analytics,
    /// Charges each order once: subscribes to order.placed in queue group "billing".
    Billing,
}

/// A service's subscriber: its name, its tally, and what it saw.
pub struct Running {
    pub name: String,
    pub tally: watch::Sender<Tally>,
    pub seen: Arc<Mutex<Vec<String>>>,
    pub handler: Handler,
}

/// Starts one service's subscriber. With `print_each`, each event is printed as it comes
/// (the role mode); the default run prints totals instead.
pub async fn start(
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

pub async fn publish_users(
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

pub async fn publish_orders(broker: &dyn Broker, count: u32) -> anyhow::Result<()> {
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
pub struct Seen {
    /// The broadcast subscribers, in the order they were started.
    pub broadcast: Vec<Heard>,
    /// Every order the billing instances handled, one entry per delivery ("id cents").
    pub orders: Vec<String>,
}

/// What one broadcast subscriber ended with.
#[derive(Debug)]
pub struct Heard {
    pub name: String,
    /// The users it saw, in arrival order.
    pub users: Vec<String>,
    pub tally: Tally,
}

/// What the billing instances charged between them.
#[derive(Debug, PartialEq, Eq)]
pub struct Billed {
    /// Distinct orders.
    pub orders: usize,
    /// Orders charged more than once: a broken queue group.
    pub twice: usize,
    /// The cents charged, each order counted once.
    pub cents: u64,
}

impl Seen {
    pub fn billing(&self) -> Billed {
        let distinct: BTreeSet<&String> = self.orders.iter().collect();
        let cents = distinct.iter().filter_map(|o| o.rsplit(' ').next()?.parse::<u64>().ok());
        Billed {
            orders: distinct.len(),
            twice: self.orders.len() - distinct.len(),
            cents: cents.sum(),
        }
    }
}

/// The default run: four services in one process, 3 sign-ups (and a bad payload), 6 orders.
pub async fn run_all_here(backend: &Backend) -> anyhow::Result<Seen> {
    // Each service has its own broker client, as separate processes would.
    let mut services = Vec::new();
    let mut brokers = Vec::new();
    for (service, instance) in [
        (Service::Mailer, "mailer"),
        (Service::Analytics, "analytics"),
        (Service::Billing, "billing-1"),
        (Service::Billing, "billing-2"),
    ] {
        let broker = broker::on(backend).await?;
        services.push(start(&*broker, service, instance, false).await?);
        brokers.push(broker);
    }

    let publisher = broker::on(backend).await?;
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
            let tally = *running.tally.borrow();
            seen.broadcast.push(Heard { name: running.name, users: events, tally });
        }
    }
    for broker in brokers {
        broker.drain().await?;
    }
    publisher.drain().await?;
    Ok(seen)
}

pub async fn tell(backend: &Backend) -> anyhow::Result<()> {
    let seen = run_all_here(backend).await?;
    println!("registered mailer on {} (broadcast)", UserSignedUp::TOPIC);
    println!("registered analytics on {} (broadcast)", UserSignedUp::TOPIC);
    println!("registered billing-1, billing-2 on {} (queue group \"billing\")", OrderPlaced::TOPIC);
    println!("published 3 UserSignedUp, 1 undecodable payload, then 6 OrderPlaced");
    for Heard { name, users, tally } in &seen.broadcast {
        println!(
            "{name}: {} UserSignedUp ({}), {} undecodable skipped, still subscribed",
            tally.handled,
            users.join(", "),
            tally.undecodable
        );
    }
    let Billed { orders: distinct, twice, cents } = seen.billing();
    let twice = if twice == 0 { "none twice".to_owned() } else { format!("{twice} TWICE") };
    println!(
        "billing: {distinct} OrderPlaced between 2 instances, {twice}, {}.{:02} in total",
        cents / 100,
        cents % 100
    );
    Ok(())
}
