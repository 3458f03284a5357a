//! The tunnel's command line: the one-process story by default, or one node per process.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::{NodeA, NodeB, NodeBTally, call_all, demo};

#[derive(Parser, Debug)]
#[command(about = "A tunnel: gRPC calls multiplexed over one link between two nodes")]
pub struct Args {
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

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.role {
        None => demo(&args.names).await.map(drop),
        Some(Role::NodeB { listen }) => {
            let node_b = NodeB::start("node-b", listen).await?;
            // Armed before the ready line: a signal that follows it is a stop request.
            let stop = microkit::signal::stop_requested();
            println!("node-b listens for links on {}; ctrl-c stops it", node_b.addr);
            microkit::signal::stopping(stop, "node-b stopping").await?;
            let NodeBTally { links, sessions, drained } = node_b.stop().await;
            let calls = if drained { "every call finished" } else { "calls cut at the deadline" };
            println!("node-b stopped: {links} link(s), {sessions} session(s) served, {calls}");
            Ok(())
        }
        Some(Role::NodeA { connect }) => {
            let node_a = Arc::new(NodeA::new("node-a", connect));
            node_a.link().await.with_context(|| {
                format!(
                    "cannot link up with node-b at {connect}: is `tunnel node-b` running there?"
                )
            })?;
            for line in call_all(&node_a, &args.names).await? {
                println!("  {line}");
            }
            Ok(())
        }
    }
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
