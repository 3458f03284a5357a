//! # secure: TLS that is verified, then mutual TLS
//!
//! A certificate authority is made at run time and signs the server's certificate; the
//! client trusts that CA and nothing else, and checks the chain, the host name and the dates.
//! Then mutual TLS: the server demands a client certificate from the CA, and a name on its
//! list. Every refusal printed is a real handshake or call that fails, explained by its side.
//!
//! Run it: `cargo run --example secure`, or `-- server` and `-- client` in two terminals.
//!
//! Read `trust.rs` first; explained in `notes/secure.md`.

mod handshake; // the lesson: a server that says why it refused a handshake
mod trust; // the lesson: what the client and the server verify

mod refusal; // the wording of each refusal
mod roles; // roles, for several terminals
mod story; // the story the default run tells
#[cfg(test)]
mod tests; // tests

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// TLS verified against a CA made at run time, then mutual TLS
#[derive(Parser, Debug)]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Serve the Greeter with mutual TLS until SIGTERM, SIGINT or SIGHUP; write ca.pem,
    /// client.pem and client.key to --certs for the client.
    Server {
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        #[arg(long, default_value = roles::CERTS)]
        certs: PathBuf,
    },
    /// Call the server with the CA and client certificate found in --certs.
    Client {
        #[arg(long, default_value = "127.0.0.1:7443")]
        connect: SocketAddr,
        #[arg(long, default_value = roles::CERTS)]
        certs: PathBuf,
        #[arg(long, default_value = "ada")]
        name: String,
    },
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.role {
        None => story::run().await,
        Some(Role::Server { listen, certs }) => roles::server(listen, &certs).await,
        Some(Role::Client { connect, certs, name }) => roles::client(connect, &certs, &name).await,
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse()).await)
}
