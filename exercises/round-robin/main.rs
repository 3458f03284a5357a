//! # round-robin: a client that takes turns over the nodes of a service
//!
//! Round robin over *what*? Over the nodes of one service, as the registry lists them: each
//! call goes to the next node in turn, A, B, C, A, B, C, and a node that joins, leaves or
//! reports NOT_SERVING is picked up as it happens. The run waits once for a 1 s TTL.
//!
//! ```text
//! cargo run --example round-robin
//! ```
//!
//! Read `rotation.rs` first; explained in `notes/round-robin.md`.

mod roles; // roles, for several terminals
mod rotation; // the lesson
mod story; // the story the default run tells

use std::time::Duration;

use clap::{Parser, Subcommand};
use microkit_backend::BackendArgs;

use crate::rotation::WhenNoNode;

/// Round robin over the nodes of a service, from the registry
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    backend: BackendArgs,
    /// A node's time to live in the registry: heartbeats come every third of it.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=600_000), global = true)]
    ttl_ms: u64,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Serve the greeter and stay registered until stopped (needs NATS_URL).
    Server(round_robin::ServerArgs),
    /// Call the service, one node after the other (needs NATS_URL).
    Client {
        /// How many calls to make; 0 means until stopped.
        #[arg(long, default_value_t = 10)]
        calls: u64,
        /// Pause between calls.
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
        /// With no node of the service, wait for one (up to the call's deadline) instead
        /// of failing at once, gRPC's default.
        #[arg(long)]
        wait_for_ready: bool,
        /// Each call's deadline, its wait for a node and its retry included.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
        deadline_ms: u64,
    },
}

async fn run(args: Args) -> anyhow::Result<()> {
    let ttl = Duration::from_millis(args.ttl_ms);
    // Roles meet only on a shared NATS: without one they refuse before starting anything.
    let backend = match &args.role {
        None => args.backend.connect().await?,
        Some(_) => args.backend.connect_shared("the server and client roles").await?,
    };
    let registry = registry::on(&backend);
    match args.role {
        None => story::demo(&registry, ttl).await,
        Some(role) => match role {
            Role::Server(server) => {
                round_robin::serve(&registry, &server.name, server.listen, ttl).await
            }
            Role::Client { calls, interval_ms, wait_for_ready, deadline_ms } => {
                let when_none = match wait_for_ready {
                    true => WhenNoNode::WaitForReady,
                    false => WhenNoNode::FailFast,
                };
                let (interval, deadline) =
                    (Duration::from_millis(interval_ms), Duration::from_millis(deadline_ms));
                roles::client(&registry, calls, interval, when_none, deadline).await
            }
        },
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse()).await)
}

#[cfg(test)]
mod tests; // tests
