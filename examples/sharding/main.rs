//! # sharding: the same user always reaches the same node
//!
//! Request affinity: the client reads the `x-from-user` header under the generated client
//! and picks the node by rendezvous hashing: every node scores the user, the highest score
//! wins, so adding a node moves only the users it now wins, about 1/N of them. A call
//! without the header goes round robin.
//!
//! ```text
//! cargo run --example sharding
//! ```
//!
//! Read `affinity.rs` first, then `hashing.rs`; explained in `notes/sharding.md`.

mod affinity; // the lesson (its hashing is in hashing.rs, the package's library)
mod roles; // roles, for several terminals
mod story; // the story the default run tells

use std::time::Duration;

use clap::{Parser, Subcommand};
use microkit_backend::BackendArgs;

/// A node's time to live in the registry.
const TTL: Duration = Duration::from_secs(3);

/// Request affinity: x-from-user picks the node by rendezvous hashing
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
    /// Serve the greeter and stay registered until stopped (needs NATS_URL).
    Server(round_robin::ServerArgs),
    /// Call the service as one user, or without the header (needs NATS_URL).
    Client {
        /// Sent as x-from-user (printable ASCII); without it, calls go round robin.
        #[arg(long, value_parser = parse_user)]
        user: Option<String>,
        /// How many calls to make; 0 means until stopped.
        #[arg(long, default_value_t = 5)]
        calls: u64,
        /// Pause between calls.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
    },
}

/// `--user`: refused at once if it cannot travel as the header.
fn parse_user(user: &str) -> Result<String, String> {
    affinity::user_value(user)
        .map(|_| user.to_owned())
        .map_err(|status| status.message().to_owned())
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Roles meet only on a shared NATS: without one they refuse before starting anything.
    let backend = match &args.role {
        None => args.backend.connect().await?,
        Some(_) => args.backend.connect_shared("the server and client roles").await?,
    };
    let registry = registry::on(&backend);
    match args.role {
        None => story::demo(&registry).await,
        Some(role) => match role {
            Role::Server(server) => {
                round_robin::serve(&registry, &server.name, server.listen, TTL).await
            }
            Role::Client { user, calls, interval_ms } => {
                let interval = Duration::from_millis(interval_ms);
                roles::client(&registry, user.as_deref(), calls, interval).await
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
