//! # trace: one request followed across HTTP, gRPC and the broker, with its metrics
//!
//! A request crosses a gateway (HTTP), a greeter and a directory (gRPC) and a subscriber (the
//! broker). Each records a span of its part; the W3C `traceparent` header, carried in HTTP
//! headers, gRPC metadata and message headers, joins the spans into one trace. Three layers
//! inject and extract it, so no handler does; a missing one splits the trace in two.
//!
//! Run it: `cargo run --example trace`
//!
//! Read `propagation.rs` first; explained in `notes/trace.md`.

// The lesson, `propagation.rs`, and the RED metrics: a library, which the benches measure.
use trace::{metrics, propagation};
mod roles; // roles, for several terminals
mod services; // the four services a request crosses
mod story; // the story the default run tells
mod telemetry; // where the spans go, and the tree the story prints

use clap::Parser;
use telemetry::Telemetry;

/// One request traced across HTTP, gRPC and the broker, and its metrics
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    backend: microkit_backend::BackendArgs,
    /// The share of new traces to keep (head sampling; a trace continued from a caller
    /// follows the caller's decision).
    #[arg(long, default_value_t = 1.0, global = true)]
    sample_ratio: f64,
    #[command(subcommand)]
    role: Option<roles::Role>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse()).await)
}

/// The whole story in this process, or one service of it over a shared NATS.
async fn run(args: Args) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.sample_ratio) {
        anyhow::bail!("--sample-ratio {}: a share between 0 and 1 is needed", args.sample_ratio);
    }
    // Roles meet only on a shared NATS: without one they refuse before starting anything.
    let backend = match &args.role {
        None => args.backend.connect().await?,
        Some(_) => {
            args.backend.connect_shared("the gateway, greeter, directory and audit roles").await?
        }
    };
    match args.role {
        None if args.sample_ratio < 1.0 => {
            anyhow::bail!(
                "--sample-ratio is for the roles: the story keeps every trace to print it"
            )
        }
        None => {
            let telemetry = Telemetry::new(true, args.sample_ratio);
            let registry = registry::on(&backend);
            let result = story::demo(&registry, &backend, &telemetry, roles::TTL).await;
            telemetry.shutdown().await;
            result
        }
        Some(role) => roles::role(role, &backend, &Telemetry::new(false, args.sample_ratio)).await,
    }
}
