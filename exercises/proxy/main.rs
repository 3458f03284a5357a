//! # proxy: any RPC, to a node of the service its path names
//!
//! A gRPC call is an HTTP/2 POST to `/<package>.<Service>/<Method>`. The proxy reads only that
//! path: it finds the service's nodes in the registry, takes the next in turn and forwards the
//! call as it came (metadata, `grpc-timeout`, frames, trailers), streamed and never read. It
//! knows no proto, so the Greeter and the Calculator pass through it alike.
//!
//! Run it: `cargo run --example proxy`
//!
//! Read `proxy.rs` first; explained in `notes/proxy.md`.

mod calc; // a second service, which the proxy was never built for
mod roles; // roles, for several terminals
mod story; // the story the default run tells

use std::time::Duration;

use clap::Parser;

/// A gRPC proxy: any call, to a node of the service its path names
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    backend: microkit_backend::BackendArgs,
    /// A node's time to live in the registry: heartbeats come every third of it.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=600_000), global = true)]
    ttl_ms: u64,
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
    let ttl = Duration::from_millis(args.ttl_ms);
    // Roles meet only on a shared NATS: without one they refuse before starting anything.
    let backend = match &args.role {
        None => args.backend.connect().await?,
        Some(_) => args.backend.connect_shared("the proxy, greeter and calc roles").await?,
    };
    let registry = registry::on(&backend);
    let Some(role) = args.role else { return story::demo(&registry, ttl).await };
    roles::run(role, registry, ttl).await
}
