//! # event: an HTTP request becomes a CloudEvent, and a consumer that was down misses nothing
//!
//! An event says what happened, who made it and when (CloudEvents 1.0). `http.rs` turns
//! `POST /user/login` into one; the event bus publishes it once for two kinds of consumer:
//! a plain subscription (at-most-once) and a durable consumer of a stream (at-least-once,
//! JetStream on NATS). The default run stops both, posts two logins, starts both again,
//! and counts who lost what.
//!
//! Run it: `cargo run --example event`
//!
//! Read `bus.rs` first; explained in `notes/event.md`.

mod bus; // the lesson
mod http; // the lesson's front door: HTTP in, CloudEvents out
mod roles; // roles, for several terminals
mod story; // the story the default run tells
#[cfg(test)]
mod tests; // tests

use std::sync::Arc;

use clap::{Parser, Subcommand};
use microkit_backend::BackendArgs;

use bus::EventBus;

/// HTTP to CloudEvents; at-most-once vs a durable (at-least-once) consumer
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
    /// Serves POST /user/login and POST /events until stopped (SIGTERM, SIGINT, SIGHUP).
    Serve {
        /// Where to listen (port 0: any free port, printed on start).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// The durable consumer "audit": prints each login until stopped. Stop it, post some
    /// logins, start it again: it prints what it missed.
    Audit,
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
        Some(_) => args.backend.connect_shared("the serve and audit roles").await?,
    };
    let Some(role) = args.role else {
        return story::run_all_here(&backend).await.map(drop);
    };
    let bus = Arc::new(EventBus::connect(&backend).await?);
    match role {
        Role::Serve { listen } => roles::serve(bus, listen).await,
        Role::Audit => roles::audit(&bus).await,
    }
}
