//! # waitgroup: stop without losing the calls in flight
//!
//! A tower layer tracks every call with a `TaskTracker`, from its request to the last byte of
//! its reply. A graceful stop is then: report NOT_SERVING, stop taking calls (a new one gets
//! `Unavailable`, streams are told to finish), drain what is in flight for at most
//! `--drain-ms` (cutting the rest with `Cancelled`), and only then stop the server.
//!
//! ```text
//! cargo run --example waitgroup
//! ```
//!
//! Read `wait_group.rs` first; explained in `notes/waitgroup.md`.

mod story; // the story the default run tells
#[cfg(test)]
mod tests; // tests
mod wait_group; // the lesson

use clap::Parser;

/// Graceful drain: track calls in flight, finish them, then stop
#[derive(Parser, Debug)]
struct Args {
    /// How many slow calls are in flight when the shutdown starts.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    calls: u32,
    /// How long each slow call works before it replies (at least 1).
    #[arg(long, value_name = "MS", default_value_t = 200, value_parser = work_ms)]
    work_ms: u64,
    /// The drain deadline: calls still running after it are cut with `Cancelled`.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    drain_ms: u64,
}

/// A call with no work is over before the stop begins: nothing would be in flight to drain.
fn work_ms(text: &str) -> Result<u64, String> {
    match text.parse::<u64>().map_err(|e| e.to_string())? {
        0 => Err("0 ms of work ends each call before the shutdown starts, so none would be in \
                  flight to drain; give at least 1"
            .to_owned()),
        ms => Ok(ms),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    story::graceful_stop(&args).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse()).await)
}
