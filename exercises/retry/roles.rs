//! The roles: one part of the chain per process (`a`, `b`, `c`, `client`), meeting through a
//! shared NATS registry.

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use registry::Registry;
use tokio::sync::watch;

use crate::deadline::{Next, Tally};
use crate::story::{self, HOPS, WORK};

#[derive(Subcommand, Debug)]
pub(crate) enum Role {
    /// Serve hop a (service retry-a), which calls b, until stopped.
    A(HopArgs),
    /// Serve hop b (service retry-b), which calls c, until stopped.
    B(HopArgs),
    /// Serve hop c (service retry-c), the last, until stopped.
    C(HopArgs),
    /// Call a once, with a deadline; optionally give up (drop the call) before it answers.
    Client {
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        deadline_ms: u64,
        /// Drop the call after this long, whatever the deadline.
        #[arg(long, value_name = "MS")]
        give_up_ms: Option<u64>,
    },
}

#[derive(Args, Debug)]
pub(crate) struct HopArgs {
    /// How long this hop works on each call before it answers or calls the next hop
    /// [default: 10 for a and b, 200 for c].
    #[arg(long, value_name = "MS")]
    work_ms: Option<u64>,
}

/// One role in this process, until it is done (the client) or stopped (a hop).
pub(crate) async fn run(role: Role, registry: &Arc<dyn Registry>) -> anyhow::Result<()> {
    let (index, hop) = match role {
        Role::A(hop) => (0, hop),
        Role::B(hop) => (1, hop),
        Role::C(hop) => (2, hop),
        Role::Client { deadline_ms, give_up_ms } => {
            return client(registry, deadline_ms, give_up_ms).await;
        }
    };
    let work = hop.work_ms.map_or(WORK[index], Duration::from_millis);
    serve_hop(registry, index, work).await
}

/// One call to a, printed; or, after `give_up_ms`, the call dropped.
async fn client(
    registry: &Arc<dyn Registry>,
    deadline_ms: u64,
    give_up_ms: Option<u64>,
) -> anyhow::Result<()> {
    let (id, service) = HOPS[0];
    let entry = Next::find(registry, service, Some(id)).await?;
    let call = entry.call(Duration::from_millis(deadline_ms));
    let give_up = give_up_ms.map_or(Duration::MAX, Duration::from_millis);
    tokio::select! {
        answer = call => match answer {
            Ok(reply) => println!("client: {}", reply.message),
            Err(status) => println!("client: {:?} \"{}\"", status.code(), status.message()),
        },
        () = tokio::time::sleep(give_up) => {
            println!("client: gave up after {}ms, dropping the call", give_up.as_millis());
        }
    }
    Ok(())
}

/// One hop as a process: serves until a stop signal, printing what happens to its calls.
async fn serve_hop(
    registry: &Arc<dyn Registry>,
    index: usize,
    work: Duration,
) -> anyhow::Result<()> {
    let (id, service) = HOPS[index];
    let (node, tally) = story::hop(registry, index, work, false).await?;
    let next = HOPS.get(index + 1).map_or(String::new(), |(_, s)| format!(", calling {s}"));
    // Armed before the ready line: a signal that follows it is a stop request.
    let stop = microkit::signal::stop_requested();
    println!("{id}: serving {service}{next}");
    let reporter = tokio::spawn(report(id, tally.clone()));
    microkit::signal::stopping(stop.await, "deregistering, then draining")?;
    reporter.abort();
    node.stop().await?;
    let t = tally.borrow().clone();
    println!(
        "{id}: {} started, {} replied, {} out of time, {} failed, {} cancelled",
        t.started, t.replied, t.out_of_time, t.failed, t.cancelled
    );
    Ok(())
}

/// Prints each call's arrival (with the time it was given) and each cancel, as they happen.
async fn report(id: &'static str, mut tally: watch::Receiver<Tally>) {
    let mut seen = Tally::default();
    while tally.changed().await.is_ok() {
        let now = tally.borrow_and_update().clone();
        if now.started > seen.started {
            let given = now.last_given.unwrap_or_default().as_millis();
            println!("{id}: a call arrived with {given}ms left");
        }
        if now.cancelled > seen.cancelled {
            println!("{id}: a call was cancelled by its caller: its handler was dropped");
        }
        if (now.guarded_jobs, now.orphan_jobs) != (seen.guarded_jobs, seen.orphan_jobs) {
            let (guarded, orphans) = (now.guarded_jobs, now.orphan_jobs);
            println!("{id}: side jobs running: {guarded} with a token, {orphans} without");
        }
        seen = now;
    }
}
