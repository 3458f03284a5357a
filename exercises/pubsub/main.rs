//! # pubsub: typed events, and the services that subscribe to them
//!
//! A topic is bound to one (protobuf) event type; a service registers a handler per topic,
//! and a payload that is not that type is logged, counted and skipped while the subscriber
//! lives on. The default run has one topic broadcast (mailer and analytics each get every
//! sign-up) and one worked by a queue group (two billing instances share the orders).
//!
//! Run it: `cargo run --example pubsub`
//!
//! Read `typed_events.rs` first; explained in `notes/pubsub.md`.

mod roles; // roles, for several terminals
mod story; // the story the default run tells
#[cfg(test)]
mod tests; // tests
mod typed_events; // the lesson

use clap::{Parser, Subcommand};
use microkit_backend::BackendArgs;

use story::Service;

/// Typed events: a topic per event type, broadcast and queue-group subscribers
#[derive(Parser, Debug)]
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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Roles meet only on a shared NATS: without one they refuse before starting anything.
    let backend = match &args.role {
        None => args.backend.connect().await?,
        Some(_) => args.backend.connect_shared("the publisher and subscriber roles").await?,
    };
    let Some(role) = args.role else { return story::tell(&backend).await };
    let broker = broker::on(&backend).await?;
    match role {
        Role::Publisher { users, orders } => roles::publisher(&*broker, users, orders).await,
        Role::Subscriber { service, max_events } => {
            roles::subscriber(&*broker, service, max_events).await
        }
    }
}
