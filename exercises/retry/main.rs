//! # retry: deadlines that travel, cancellation that reaches every hop, retries on a budget
//!
//! A client calls a, a calls b, b calls c. Each hop reads the time left from `grpc-timeout`,
//! keeps a margin for its reply and passes the rest on; a caller that gives up drops its call,
//! and every hop's handler is dropped with it. Retries are a tower layer: only when a second
//! attempt is safe, after a backoff with jitter, never past the deadline, within a budget.
//!
//! Run it: `cargo run --example retry`
//!
//! Read `deadline.rs` first, then `policy.rs`; explained in `notes/retry.md`.

mod deadline; // the lesson: a deadline that travels, a cancel that reaches every hop
use retry::policy; // the lesson's second half, retries (a library: the benches measure it)
mod roles; // roles, for several terminals
mod story; // the story the default run tells
#[cfg(test)]
mod tests; // tests

use clap::Parser;

/// Deadlines that travel, cancellation that reaches every hop, retries on a budget
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
        Some(_) => args.backend.connect_shared("the hops a, b, c and the client").await?,
    };
    let registry = registry::on(&backend);
    let Some(role) = args.role else {
        return story::demo(&registry).await;
    };
    roles::run(role, &registry).await
}
