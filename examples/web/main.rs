//! # web: an HTTP service that joins discovery, and a gateway that finds it
//!
//! An HTTP service registers itself once it listens and deregisters before it stops, as a
//! gRPC one does. The lesson is the other side: the gateway holds no list of its own, asks
//! the registry on every request and forwards `/<service>/...` to a node it found,
//! websockets included; its `/` is a live page of every node and its health.
//!
//! ```text
//! cargo run --example web                         # or -- serve, then open the printed URL
//! ```
//!
//! Read `gateway.rs` first; explained in `notes/web.md`.

mod dashboard; // the gateway's live page of every node
mod edge; // the three servers, each registered where it belongs
mod gateway; // the lesson: find the service on every request, forward to it
mod roles; // roles, for several terminals
mod service; // the web service: a page, a greet route, a websocket
mod story; // the story the default run tells

use std::time::Duration;

use clap::{Parser, Subcommand};
use microkit_backend::BackendArgs;

/// An HTTP service that registers itself, and a gateway that discovers it
#[derive(Parser, Debug)]
struct Args {
    /// How many greetings the demo asks for over the websocket.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=service::MAX_COUNT as i64))]
    count: u32,

    #[command(flatten)]
    backend: BackendArgs,

    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Run the greeter, the web service and the gateway until stopped (SIGTERM, SIGINT or
    /// SIGHUP), for a real browser.
    Serve {
        /// The gateway's port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Run one node of the web service `hello` (and a greeter beside it) until stopped,
    /// registered in the shared registry (needs NATS_URL).
    Service {
        /// The node's id, e.g. hello-2.
        #[arg(long, default_value = "hello-1")]
        id: String,
        /// On a stop, how long to stay listed while reporting not ready, so balancers and
        /// the gateway's page see it before the node leaves.
        #[arg(long, default_value_t = 0)]
        grace_ms: u64,
    },
    /// Run the gateway alone until stopped, finding web services in the shared registry
    /// (needs NATS_URL).
    Gateway {
        /// The gateway's port on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

async fn run(args: Args) -> anyhow::Result<()> {
    // The service and gateway roles meet only on a shared NATS: without one they refuse
    // before starting anything.
    let backend = match &args.role {
        None | Some(Role::Serve { .. }) => args.backend.connect().await?,
        Some(_) => args.backend.connect_shared("the service and gateway roles").await?,
    };
    let registry = registry::on(&backend);
    match args.role {
        None => {
            let mut edge = edge::Edge::start(&registry, 0).await?;
            story::demo(&mut edge, args.count).await?;
            edge.stop().await.map(drop)
        }
        Some(Role::Serve { port }) => roles::serve(&registry, port).await,
        Some(Role::Service { id, grace_ms }) => {
            roles::service(&registry, &id, Duration::from_millis(grace_ms)).await
        }
        Some(Role::Gateway { port }) => roles::gateway(&registry, port).await,
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse()).await)
}

#[cfg(test)]
mod tests; // tests
