//! # stream: one call, many messages
//!
//! A stream is one gRPC call that carries many messages, one way or both, until each side
//! says it is done: server streaming, client streaming (the client half-closes, then the
//! server answers once) and bidirectional. Then the two ways a stream ends badly, and the
//! bounds (a deadline, keepalive) that keep a silent server from holding the client for ever.
//!
//! Run it: `cargo run --example stream`, or `-- server` and `-- client` in two terminals.
//!
//! Read `stream.rs` first, then `bounds.rs`; explained in `notes/stream.md`.

mod bounds; // the lesson: a deadline per call, keepalive per connection
mod stream; // the lesson: the three shapes, on both sides

mod roles; // roles, for several terminals
mod story; // the story the default run tells
#[cfg(test)]
mod tests; // tests

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

/// gRPC streams: server-, client- and bidi-streaming, half-close, peers going away
#[derive(Parser, Debug)]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Serve the streaming Greeter until ctrl-c, SIGTERM or SIGHUP.
    Server {
        #[arg(long, default_value = "127.0.0.1:50051")]
        addr: SocketAddr,
    },
    /// Run the three stream shapes and a client that goes away, against a running server.
    Client {
        #[arg(long, default_value = "127.0.0.1:50051")]
        addr: SocketAddr,
    },
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.role {
        None => story::run().await,
        Some(Role::Server { addr }) => roles::serve(addr).await,
        Some(Role::Client { addr }) => roles::client(addr).await,
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse()).await)
}
