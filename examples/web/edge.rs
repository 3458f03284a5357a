//! The three servers, each registered where it belongs: a Greeter node, a node of the web
//! service `hello`, and the gateway.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use microkit::server::RunningServer;
use registry::Registered;
use registry::Registry;

use crate::gateway::{Gateway, web_node};
use crate::service::{GREETER, WebService};

/// How long a node stays listed without a heartbeat.
pub const TTL: Duration = Duration::from_secs(10);

pub async fn start_greeter(registry: &Arc<dyn Registry>, id: &str) -> anyhow::Result<Registered> {
    let server = microkit::greeter::serve(id).await?;
    Ok(Registered::new(registry, server, GREETER, id, TTL).await?)
}

/// The web service registers itself once it listens: `web.NewService` in go-micro. Its
/// graceful stop (`Registered::stop`) leaves the registry first, then stops serving, so the
/// gateway stops sending requests before the node stops answering them.
pub async fn start_web(
    registry: &Arc<dyn Registry>,
    id: &str,
) -> anyhow::Result<(Registered, WebService)> {
    let service = WebService::new(id, registry.clone());
    let server = microkit_http::start(crate::service::router(service.clone())).await?;
    let node = web_node("hello", id, server.addr());
    Ok((Registered::with_node(registry, server, node, TTL).await?, service))
}

pub async fn start_gateway(
    registry: &Arc<dyn Registry>,
    port: u16,
) -> anyhow::Result<(RunningServer, Gateway)> {
    let address = ([127, 0, 0, 1], port).into();
    let gateway = Gateway::new(registry.clone());
    let server = microkit_http::start_on(
        address,
        crate::gateway::router(gateway.clone()),
        microkit::health::Health::default(),
    )
    .await
    .with_context(|| format!("cannot listen on {address}"))?;
    Ok((server, gateway))
}

/// The three servers of the one-process run, each registered where it belongs.
pub struct Edge {
    pub greeter: Registered,
    pub hello: Option<Registered>,
    pub service: WebService,
    pub gateway: RunningServer,
    pub routes: Gateway,
}

impl Edge {
    pub async fn start(registry: &Arc<dyn Registry>, gateway_port: u16) -> anyhow::Result<Self> {
        let greeter = start_greeter(registry, "greeter-1").await?;
        let (hello, service) = start_web(registry, "hello-1").await?;
        let (gateway, routes) = start_gateway(registry, gateway_port).await?;
        Ok(Edge { greeter, hello: Some(hello), service, gateway, routes })
    }

    pub async fn stop_hello(&mut self) -> anyhow::Result<()> {
        match self.hello.take() {
            Some(hello) => hello.stop().await,
            None => Ok(()),
        }
    }

    /// Stops all three; returns how many requests the gateway forwarded and hello-1 served.
    pub async fn stop(mut self) -> anyhow::Result<(usize, usize)> {
        self.stop_hello().await?;
        self.gateway.shutdown().await?;
        self.greeter.stop().await?;
        Ok((self.routes.forwarded(), self.service.served.load(Ordering::Relaxed)))
    }
}
