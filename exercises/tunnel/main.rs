//! # tunnel: many connections inside one link
//!
//! A tunnel joins two nodes with one link and carries many sessions inside it, each a byte
//! stream of its own, opened by the name of a channel the far node serves. It never looks
//! inside a session, so gRPC runs through it unchanged: node-a's clients reach node-b's
//! Greeter by the channel name `greeter`, one session each, one link.
//!
//! ```text
//! cargo run --example tunnel
//! ```
//!
//! Read `frame.rs`, then `link.rs`, first; explained in `notes/tunnel.md`.

mod nodes; // the two nodes the link joins
mod roles; // roles, for several terminals
mod story; // the story the default run tells

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

/// A tunnel: gRPC calls multiplexed over one link between two nodes
#[derive(Parser, Debug)]
struct Args {
    /// Who node-a's clients greet, one client (and one session) each.
    #[arg(long, global = true, value_delimiter = ',', default_value = "ada,bo,cy,dee", value_parser = name)]
    names: Vec<String>,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Serve the Greeter on channel "greeter" to every node that links up, until stopped
    /// (SIGTERM, SIGINT or SIGHUP).
    NodeB {
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: SocketAddr,
    },
    /// Link up with node-b and call its Greeter through the tunnel, one session per name.
    NodeA {
        #[arg(long, default_value = "127.0.0.1:7000")]
        connect: SocketAddr,
    },
}

fn name(text: &str) -> Result<String, String> {
    match text.trim() {
        "" => Err("a name may not be empty".into()),
        name => Ok(name.to_owned()),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.role {
        None => story::demo(&args.names).await.map(drop),
        Some(Role::NodeB { listen }) => roles::node_b(listen).await,
        Some(Role::NodeA { connect }) => roles::node_a(connect, &args.names).await,
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse()).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_name_is_refused() {
        let error = Args::try_parse_from(["tunnel", "--names", "ada,,bo"]).unwrap_err().to_string();
        assert!(error.contains("a name may not be empty"), "{error}");
    }
}
