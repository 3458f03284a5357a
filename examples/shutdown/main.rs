//! # shutdown: one signal, propagated in order
//!
//! A stop request (SIGTERM, ctrl-c, SIGHUP, or a timer) cancels one `CancellationToken` of a
//! tree: each part of the program hears only its own branch. The stop then walks its phases
//! in order: NOT_SERVING, deregister, stop accepting, drain up to a deadline, stop the
//! background tasks, exit 0. A second signal during the drain cuts it and exits 1.
//!
//! ```text
//! cargo run --example shutdown
//! ```
//!
//! Read `token_tree.rs` first; explained in `notes/shutdown.md`.

mod signals; // where a stop request comes from
mod story; // the story the default run tells, and the `serve` role
mod token_tree; // the lesson

use clap::{Parser, Subcommand};
use microkit_backend::BackendArgs;

use crate::signals::Signals;

/// Graceful shutdown: a signal, a token tree, and the phases in order
#[derive(Parser, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
    #[command(flatten)]
    settings: Settings,
}

impl Args {
    /// The settings to run with, and whether to serve until a signal.
    fn settings(self) -> (Settings, bool) {
        match self.role {
            Some(Role::Serve(settings)) => (settings, true),
            None => (self.settings, false),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Serve until SIGTERM, ctrl-c or SIGHUP, then stop in order, printing each phase.
    Serve(Settings),
}

// The same settings for the one-process demo and the `serve` role.
#[derive(clap::Args, Debug, Clone)]
struct Settings {
    /// Stop by itself this long after it is ready [default: 100 in the demo, never in `serve`].
    #[arg(long, value_name = "MS")]
    stop_after_ms: Option<u64>,
    /// How long the drain may take before the calls still open are cut.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    drain_ms: u64,
    /// This node's id in the registry.
    #[arg(long, default_value = "shutdown-1")]
    node: String,
    #[command(flatten)]
    backend: BackendArgs,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (settings, serve) = args.settings();
    story::run_until_stopped(&settings, serve, Signals::from_os()?).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse()).await)
}

#[cfg(test)]
mod tests; // tests
