//! # health: "exists" and "fit to serve" are two different signals
//!
//! The registry's heartbeat says a node exists; `grpc.health.v1.Health` says whether it is fit
//! to serve. greeter-1 is ready only while the store it needs reports SERVING: without it, it
//! stays alive and listed but reports NOT_SERVING, and a client that watches health sends it
//! no work until it serves again.
//!
//! ```text
//! cargo run --example health
//! ```
//!
//! Read `readiness.rs` first; explained in `notes/health.md`.

mod readiness; // the lesson
mod roles; // roles, for several terminals
mod story; // the story the default run tells
#[cfg(test)]
mod tests; // tests

use std::time::Duration;

use clap::{Parser, Subcommand};
use microkit_backend::BackendArgs;

/// gRPC health checking and reflection: exists vs fit to serve
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    backend: BackendArgs,
    /// A node's time to live in the registry: heartbeats come every third of it.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=600_000), global = true)]
    ttl_ms: u64,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Serve the greeter with health and reflection, registered until stopped (needs NATS_URL).
    Node {
        #[arg(long)]
        id: String,
    },
    /// Print each health change of a registered node until it stops (needs NATS_URL).
    Watch {
        #[arg(long)]
        id: String,
    },
}

async fn run(args: Args) -> anyhow::Result<()> {
    let ttl = Duration::from_millis(args.ttl_ms);
    // Roles meet only on a shared NATS: without one they refuse before starting anything.
    let backend = match &args.role {
        None => args.backend.connect().await?,
        Some(_) => args.backend.connect_shared("the node and watch roles").await?,
    };
    let registry = registry::on(&backend);
    match args.role {
        None => story::demo(&registry, ttl).await,
        Some(role) => match role {
            Role::Node { id } => roles::node(&registry, &id, ttl).await,
            Role::Watch { id } => roles::watch(&registry, &id).await,
        },
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse()).await)
}
