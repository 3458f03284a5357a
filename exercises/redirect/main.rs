//! # redirect: who redirects, and to where
//!
//! The `links` service decides to redirect, the gateway sends the redirect to the browser,
//! the client follows it. The lesson is the gateway's check of the target: paths on this
//! site and https URLs of listed hosts pass; every open-redirect form gets a 400.
//!
//! ```text
//! cargo run --example redirect                  # or -- --next '//elsewhere.example'
//! ```
//!
//! Read `policy.rs` first; explained in `notes/redirect.md`.

mod gateway; // the gateway, which checks a redirect before sending it
mod service; // the service that asks for redirects
mod story; // the story the default run tells
#[cfg(test)]
mod tests; // tests

use clap::Parser;
use microkit_backend::BackendArgs;

/// A gateway that turns a service's redirect answer into an HTTP redirect, safely
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    backend: BackendArgs,
    /// Also try this `next=` target through the gateway (after the built-in ones).
    #[arg(long)]
    next: Option<String>,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let backend = args.backend.connect().await?;
    story::demo(registry::on(&backend), args.next.as_deref()).await.map(drop)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse()).await)
}
