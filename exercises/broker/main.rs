//! # broker: raw publish/subscribe, and the rules it keeps
//!
//! A broker takes a message for a topic and hands a copy to whoever subscribed; what it
//! promises is the lesson. The default run puts each promise to work instead of describing
//! it: is delivery asynchronous, who gets a copy, what becomes of a message nobody listens
//! for, in which order do messages come?
//!
//! Run it: `cargo run --example broker`
//!
//! Read `broker.rs` first; explained in `notes/broker.md`.

mod story; // the story the default run tells
#[cfg(test)]
mod tests; // tests

use clap::Parser;
use microkit_backend::BackendArgs;

#[derive(Parser, Debug)]
#[command(
    about = "The broker's rules, shown: asynchronous, broadcast vs queue group, at-most-once"
)]
struct Args {
    #[command(flatten)]
    backend: BackendArgs,

    /// How many orders to publish after the subscribers are in place.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    messages: u32,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    story::tell(&args.backend.connect().await?, args.messages).await
}
