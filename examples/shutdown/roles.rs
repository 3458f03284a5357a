//! The shutdown example's command line: the one-process demo, or the `serve` role that runs
//! until a signal. Both take the same settings.

use clap::{Parser, Subcommand};
use microkit::backend::BackendArgs;

#[derive(Parser, Debug)]
#[command(
    about = "Graceful shutdown: a signal, a token tree, and the phases in order",
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(subcommand)]
    role: Option<Role>,
    #[command(flatten)]
    settings: Settings,
}

impl Args {
    /// The settings to run with, and whether to serve until a signal.
    pub fn settings(self) -> (Settings, bool) {
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

#[derive(clap::Args, Debug, Clone)]
pub struct Settings {
    /// Stop by itself this long after it is ready [default: 100 in the demo, never in `serve`].
    #[arg(long, value_name = "MS")]
    pub stop_after_ms: Option<u64>,
    /// How long the drain may take before the calls still open are cut.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub drain_ms: u64,
    /// This node's id in the registry.
    #[arg(long, default_value = "shutdown-1")]
    pub node: String,
    #[command(flatten)]
    pub backend: BackendArgs,
}
