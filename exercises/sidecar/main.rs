//! # sidecar: any program joins through HTTP and JSON
//!
//! A sidecar stands beside a program that cannot speak the system's protocols and speaks
//! them for it: HTTP/JSON in; gRPC calls, registry entries and broker messages out, every
//! error a JSON answer. `shouter`, in the story, stands in for a program in another language.
//!
//! ```text
//! cargo run --example sidecar                       # or -- serve --port 8090, for curl
//! ```
//!
//! Read `sidecar.rs` first (its routes; `grpc.rs` converts); explained in `notes/sidecar.md`.

mod grpc; // JSON to gRPC and back
mod owners; // who may change a service's entries
mod roles; // the sidecar beside a Greeter node, and the serve role
mod sidecar; // the lesson: the sidecar's HTTP API
mod story; // the story the default run tells

use clap::{Parser, Subcommand};
use microkit_backend::BackendArgs;

/// An HTTP/JSON sidecar: call gRPC services, register plain HTTP programs
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    backend: BackendArgs,
    /// Run one role; without one, the whole story runs in this process.
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Run a Greeter node and the sidecar until stopped; prints the sidecar's URL first.
    Serve {
        /// The sidecar's port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 8090)]
        port: u16,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(roles::run(Args::parse()).await)
}
