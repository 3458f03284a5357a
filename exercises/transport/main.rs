//! # transport: one handler, carried over HTTP/2 and over NATS
//!
//! `SayHello` is written once and carried by two transports: tonic over HTTP/2, on a port the
//! registry lists, and the NATS service protocol, with no port at all: a subject per endpoint,
//! a queue group that balances, `$SRV.PING`/`INFO`/`STATS` answered by every instance. The run
//! prints what changes with the transport: finding, balancing, refusing, counting, dying.
//!
//! Run it: `cargo run --example transport`
//!
//! Read `service.rs` first; explained in `notes/transport.md`.

// The lesson, `service.rs` (one handler, two transports); `bus.rs`, a client of the bus;
// `memory.rs`, the memory backend's stand-in for NATS: a library, which the benches use.
use transport::{bus, memory, service};
mod roles; // roles, for several terminals
mod story; // the story the default run tells
#[cfg(test)]
mod tests; // tests

use clap::Parser;

/// One handler carried over HTTP/2 and over NATS (the NATS service protocol)
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    backend: microkit_backend::BackendArgs,
    /// Run one role against a shared NATS server; without a role, everything runs here.
    #[command(subcommand)]
    role: Option<roles::Role>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse()).await)
}

/// The whole story in this process, or one role of it over a shared NATS.
async fn run(args: Args) -> anyhow::Result<()> {
    // Roles meet only on a shared NATS: without one they refuse before starting anything.
    let backend = match &args.role {
        None => args.backend.connect().await?,
        Some(_) => args.backend.connect_shared("the serve and client roles").await?,
    };
    let Some(role) = args.role else {
        let tally = story::demo(&backend).await?;
        anyhow::ensure!(tally.lost == 0, "{} calls ended otherwise than they should", tally.lost);
        return Ok(());
    };
    roles::run(role, &backend).await
}
