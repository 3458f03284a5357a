//! The example's roles, for separate terminals on one NATS server: the HTTP service and
//! the durable consumer. Both run until a stop request (SIGTERM, SIGINT, SIGHUP), then
//! finish what is in hand, print their tally and exit 0; a second signal exits at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use axum::response::Response;
use cloudevents::{AttributesReader, Event};
use microkit::PATIENCE;

use crate::bus::EventBus;
use crate::http;
use crate::story::{AUDIT, user_of};

/// The `serve` role: the HTTP endpoints on `listen`, until stopped.
///
/// Served by `microkit_http` rather than `axum::serve`, which has no header timeout
/// and no drain deadline: a client gets 10 s to send a request's headers (counted from the
/// connection's start, so one that sends nothing is closed too), and a stop lets requests
/// in flight run for 5 s, then cuts them, so a login whose body never comes holds neither a
/// connection nor the stop.
pub async fn serve(bus: Arc<EventBus>, listen: SocketAddr) -> anyhow::Result<()> {
    // Counted on the way out, so every answer is counted, whichever handler gave it.
    let (accepted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let count = {
        let (accepted, refused) = (accepted.clone(), refused.clone());
        move |response: Response| {
            let counter = if response.status().is_success() { &accepted } else { &refused };
            counter.fetch_add(1, Ordering::Relaxed);
            std::future::ready(response)
        }
    };
    // The probes are merged after the counting layer: a probe is not a login.
    let router = http::router(bus).layer(axum::middleware::map_response(count));
    let server = microkit_http::start_on(listen, router, microkit::health::Health::default())
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    // Armed before saying so: from here on a signal is a stop request, never a kill.
    let stop = microkit::signal::stop_requested();
    // The bound address: with port 0 the system picks a free one.
    println!("serving POST /user/login and POST /events on {} (Ctrl-C to stop)", server.url());
    microkit::signal::stopping(stop.await, "finishing the requests in flight")?;
    // Not ready first (a balancer probing /health/ready stops sending), then the drain.
    if let Some(health) = server.health() {
        health.set_serving(false).await;
    }
    server.shutdown().await?;
    let (accepted, refused) = (accepted.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    println!("served: {accepted} accepted, {refused} refused");
    Ok(())
}

/// The `audit` role: the durable consumer, printing each login until stopped.
pub async fn audit(bus: &EventBus) -> anyhow::Result<()> {
    let consumer = bus.durable(AUDIT).await?;
    // Armed before saying so: from here on a signal is a stop request, never a kill.
    let stop = microkit::signal::stop_requested();
    tokio::pin!(stop);
    println!("audit: resuming where the last run acknowledged (Ctrl-C to stop)");
    let (mut taken, mut skipped) = (0, 0);
    loop {
        let print = |event: Option<Event>| match event {
            Some(event) => {
                taken += 1;
                let time = event.time().map_or_else(|| "(no time)".to_owned(), |t| t.to_rfc3339());
                println!("audit: {} at {time}", user_of(&event));
            }
            None => {
                skipped += 1;
                println!("audit: skipped a payload that is not a CloudEvent");
            }
        };
        tokio::select! {
            result = consumer.take(100, PATIENCE, print) => drop(result?),
            // An event handled but not yet acknowledged when the stop comes is delivered
            // again to the next run: at-least-once.
            signal = &mut stop => {
                microkit::signal::stopping(signal, "the durable consumer")?;
                break;
            }
        }
    }
    // Duplicates are caught within this run only: its memory of handled ids ends with it.
    let duplicates = consumer.duplicates();
    println!("audit: {taken} events taken, {skipped} skipped, {duplicates} duplicates dropped");
    Ok(())
}
