//! The roles, for separate terminals on one NATS server: a publisher that sends and exits,
//! and one service's subscriber that runs until stopped (SIGTERM, SIGINT, SIGHUP), then
//! handles what is already buffered, prints its tally and exits 0.

use broker::Broker;

use crate::story::{Running, Service, publish_orders, publish_users, start};
use crate::typed_events::Tally;

/// The `publisher` role: `users` sign-ups, then `orders` orders.
pub async fn publisher(broker: &dyn Broker, users: u32, orders: u32) -> anyhow::Result<()> {
    publish_users(broker, users, None).await?;
    publish_orders(broker, orders).await?;
    broker.drain().await?;
    println!("published {users} UserSignedUp and {orders} OrderPlaced");
    Ok(())
}

/// The `subscriber` role: `service`'s subscriber, printing each event as it comes.
pub async fn subscriber(
    broker: &dyn Broker,
    service: Service,
    max_events: Option<u64>,
) -> anyhow::Result<()> {
    let name = format!("{service:?}").to_lowercase();
    let running = start(broker, service, &name, true).await?;
    let tally = until_stopped(running, max_events).await?;
    broker.drain().await?;
    println!("{name}: {} handled, {} undecodable skipped", tally.handled, tally.undecodable);
    Ok(())
}

/// The subscriber role, once subscribed: runs until stopped or until `max_events` are
/// handled, then handles what is already buffered and returns the tally.
pub async fn until_stopped(running: Running, max_events: Option<u64>) -> anyhow::Result<Tally> {
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
            microkit::signal::stopping(signal, "draining the subscription")?;
        }
    }
    running.handler.stop().await;
    Ok(*running.tally.borrow())
}
