//! # wrapper: middleware around every call, on the client and on the server
//!
//! A wrapper is code every call passes through, on its way out of a client or into a server.
//! In Rust both kinds are tower layers, and one layer type wraps a tonic client and a tonic
//! server, unary and streaming calls alike, because it sits below gRPC, on HTTP/2 requests.
//! Each side stacks a log layer outside an auth interceptor, and the journal shows the order.
//!
//! Run it: `cargo run --example wrapper` (or `-- --token wrong`).
//!
//! Read `wrapper.rs` first; explained in `notes/wrapper.md`.

mod wrapper; // the lesson

mod story; // the story the default run tells
#[cfg(test)]
mod tests; // tests

use clap::Parser;
use story::run;

/// tower layers as client and server wrappers, for unary and streaming calls
#[derive(Parser, Debug)]
struct Args {
    /// The token the client's auth wrapper sends (printable ASCII, as metadata must be).
    #[arg(long, default_value = wrapper::TOKEN, value_parser = visible_token)]
    token: String,
}

fn visible_token(token: &str) -> Result<String, String> {
    wrapper::bearer(token).map(|_| token.to_owned()).map_err(|status| status.message().to_owned())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse()).await)
}
