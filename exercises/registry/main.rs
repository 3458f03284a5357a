//! # registry: service discovery, where every other topic finds its nodes
//!
//! A node registers under its service's name with a lease (a TTL) and renews it with a
//! heartbeat; clients list or watch the nodes of a service. A graceful stop deregisters at
//! once; a crash just stops the heartbeat, and the node leaves when its lease runs out.
//!
//! Run it: `cargo run --example registry` (`-- --backend memory` or `nats` to choose).
//!
//! Read `registry.rs` first; explained in `notes/registry.md`.

mod story; // the story the default run tells

use clap::Parser;
use microkit_backend::BackendArgs;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse()).await)
}

/// Service discovery: two nodes register with a lease, one leaves, one crashes and expires
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    backend: BackendArgs,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let backend = args.backend.connect().await?;
    story::tell(registry::on(&backend)).await?;
    Ok(())
}
