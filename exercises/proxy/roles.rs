//! The roles, one per process over a shared NATS: the proxy, and nodes of the two services
//! it routes to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Subcommand;
use microkit::greeter::HelloGreeter;
use microkit::health::Health;
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

/// A Calculator node named `name`, registered under its gRPC name. Its health and
/// reflection speak of the Calculator, not of microkit's Greeter.
pub async fn start_calc(
    registry: &Arc<dyn Registry>,
    name: &str,
    ttl: Duration,
) -> anyhow::Result<Registered> {
    let routes = Routes::new(CalculatorServer::new(name));
    let health = Health::new(&[calc::SERVICE]);
    let server = RunningServer::start_describing(routes, health, calc::DESCRIPTORS).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use registry::MemoryRegistry;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    /// A Calculator node reports the Calculator's health, and its reflection lists and
    /// describes the Calculator, never the Greeter it does not serve.
    #[tokio::test]
    async fn a_calculator_node_describes_the_calculator() {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let node = start_calc(&registry, "calc-1", Duration::from_secs(5)).await.unwrap();
        let url = format!("http://{}", node.addr());
        let channel = tonic::transport::Channel::from_shared(url).unwrap().connect().await.unwrap();

        let mut statuses =
            Box::pin(microkit::health::watch(channel.clone(), calc::SERVICE).await.unwrap());
        let status = statuses.next().await.unwrap().unwrap();
        assert_eq!(status, microkit::health::WireStatus::Serving);

        let ask = |request| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        let questions = [
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol(calc::SERVICE.to_owned())),
        ];
        let mut reflection = ServerReflectionClient::new(channel);
        let answers = reflection.server_reflection_info(futures::stream::iter(questions)).await;
        let mut answers = answers.unwrap().into_inner();
        let listed = answers.message().await.unwrap().and_then(|a| a.message_response);
        let Some(MessageResponse::ListServicesResponse(listed)) = listed else {
            panic!("no list: {listed:?}");
        };
        let names: Vec<&str> = listed.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&calc::SERVICE), "{names:?}");
        assert!(!names.contains(&GREETER), "a Calculator node lists the Greeter: {names:?}");
        let file = answers.message().await.unwrap().and_then(|a| a.message_response);
        assert!(matches!(file, Some(MessageResponse::FileDescriptorResponse(_))), "{file:?}");
        node.stop().await.unwrap();
    }
}
