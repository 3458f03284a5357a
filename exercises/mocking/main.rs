//! # mocking: testing code that calls another service
//!
//! The code under test, a welcome desk that greets guests, depends on the Greeter only
//! through a small trait. Its tests meet two stand-ins: a mockall mock that answers as told
//! and checks every call, and the real Greeter in this process over an in-memory pipe.
//!
//! Run it: `cargo run --example mocking`; its tests: `cargo test --example mocking`.
//!
//! Read `seam.rs` first, then `in_process.rs`; explained in `notes/mocking.md`.

mod in_process; // the lesson: the real server as a stand-in
mod seam; // the lesson: the code under test and its seam

mod story; // the story the default run tells
#[cfg(test)]
mod tests; // tests: the point of this topic, each fails if the desk misbehaves

use clap::Parser;
use story::run;

/// Testing code that calls a service: mockall mocks, and the real server in-process
#[derive(Parser, Debug)]
struct Args {
    /// The guests to greet; blank names are skipped.
    #[arg(long, value_delimiter = ',', default_value = "ada, ,bo")]
    guests: Vec<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse()).await)
}
