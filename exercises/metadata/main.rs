//! # metadata: what travels beside a message
//!
//! Metadata is a gRPC call's HTTP/2 headers: key/value pairs about the call (who calls,
//! which request this is, a trace id) that every layer reads without decoding the message.
//! The client sets it on every call and on one call; the server reads it and answers with
//! response headers, and with trailers after the last message.
//!
//! Run it: `cargo run --example metadata` (or `-- --user ada`).
//!
//! Read `metadata.rs` first; explained in `notes/metadata.md`.

mod metadata; // the lesson
mod story; // the story the default run tells
#[cfg(test)]
mod tests; // tests

use clap::Parser;
use story::run;

/// gRPC metadata: request headers, response headers, trailers
#[derive(Parser, Debug)]
struct Args {
    /// The user name the client sends as `x-user-name` (printable ASCII, no space at either
    /// end: gRPC's rule for a text value).
    #[arg(long, default_value = "john", value_parser = printable_ascii)]
    user: String,
}

fn printable_ascii(text: &str) -> Result<String, String> {
    metadata::ascii(text).map(|_| text.to_owned()).map_err(|status| status.message().to_owned())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse()).await)
}
