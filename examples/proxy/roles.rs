//! The roles, one per process over a shared NATS: the proxy, and nodes of the two services
//! it routes to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Subcommand;
use microkit::greeter::HelloGreeter;
use microkit::proto::greeter::greeter_server::GreeterServer;
use microkit::server::RunningServer;
use registry::Registered;
use registry::Registry;
use tonic::server::NamedService;
use tonic::service::Routes;

use crate::calc::{self, CalculatorServer};
use proxy::{Limits, Proxy, ProxyServer};

/// The Greeter's name in gRPC paths: the name its nodes register under.
pub const GREETER: &str = GreeterServer::<HelloGreeter>::NAME;

#[derive(Subcommand, Debug)]
pub(crate) enum Role {
    /// Forward every call to a node of the service it names, until stopped (needs NATS_URL).
    Proxy {
        /// Where to listen (port 0: any free port, printed).
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
        /// Calls in flight through the proxy at once; one more is refused. One service may
        /// hold at most half of them.
        #[arg(long, default_value_t = Limits::default().max_streams, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        max_streams: u32,
        /// How long to wait for a node's answer to a call that sets no deadline.
        #[arg(long, default_value_t = Limits::default().answer_within.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
        answer_within_ms: u64,
    },
    /// Serve the Greeter and stay registered until stopped (needs NATS_URL).
    Greeter {
        #[arg(long)]
        name: String,
    },
    /// Serve the Calculator and stay registered until stopped (needs NATS_URL).
    Calc {
        #[arg(long)]
        name: String,
    },
}

/// A Greeter node named `name`, registered under its gRPC name.
pub async fn start_greeter(
    registry: &Arc<dyn Registry>,
    name: &str,
    ttl: Duration,
) -> anyhow::Result<Registered> {
    let server = microkit::greeter::serve(name).await?;
    Ok(Registered::new(registry, server, GREETER, name, ttl).await?)
}

/// A Calculator node named `name`, registered under its gRPC name.
pub async fn start_calc(
    registry: &Arc<dyn Registry>,
    name: &str,
    ttl: Duration,
) -> anyhow::Result<Registered> {
    let server = RunningServer::start(Routes::new(CalculatorServer::new(name))).await?;
    Ok(Registered::new(registry, server, calc::SERVICE, name, ttl).await?)
}

/// One role in this process, until it is stopped.
pub(crate) async fn run(
    role: Role,
    registry: Arc<dyn Registry>,
    ttl: Duration,
) -> anyhow::Result<()> {
    let stop = microkit::signal::stop_requested();
    match role {
        Role::Proxy { listen, max_streams, answer_within_ms } => {
            let answer_within = Duration::from_millis(answer_within_ms);
            let limits = Limits { max_streams, answer_within, ..Limits::default() };
            let proxy = Arc::new(Proxy::new(registry, limits));
            let server = ProxyServer::start(proxy.clone(), listen).await?;
            println!("proxy listening on {}; ctrl-c stops it", server.addr());
            microkit::signal::stopping(stop.await, "proxy stopping: draining the calls in flight")?;
            let drained = server.stop(limits.drain_deadline).await;
            let forwarded = proxy.forwarded.load(Ordering::Relaxed);
            let refused = proxy.refused.load(Ordering::Relaxed);
            let calls = if drained { "every call finished" } else { "calls cut at the deadline" };
            println!("proxy stopped: {forwarded} calls forwarded, {refused} refused, {calls}");
        }
        Role::Greeter { ref name } | Role::Calc { ref name } => {
            let (service, node) = match role {
                Role::Greeter { .. } => (GREETER, start_greeter(&registry, name, ttl).await?),
                _ => (calc::SERVICE, start_calc(&registry, name, ttl).await?),
            };
            println!("{name} serving {service} on {}", node.addr());
            microkit::signal::stopping(stop.await, "deregistering, then draining")?;
            node.stop().await?;
            println!("{name} deregistered and stopped");
        }
    }
    Ok(())
}
