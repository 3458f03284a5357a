//! The lesson: a node's readiness follows what it needs, while its liveness and its registry
//! entry stay as they are.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use microkit::health::{Health, WireStatus};
use microkit::server::RunningServer;
use registry::{Registered, Registry};
use tonic::transport::Channel;

/// Keeps `health` equal to what the node needs: SERVING while `dependency` (a server that
/// reports its own health) does, NOT_SERVING while it does not or cannot be reached.
/// Liveness is untouched: the node still answers, health checks included.
pub async fn follow_dependency(dependency: Channel, health: Health) {
    loop {
        if let Ok(mut statuses) = microkit::health::watch(dependency.clone(), "").await {
            while let Some(Ok(status)) = statuses.next().await {
                health.set_serving(status == WireStatus::Serving).await;
            }
        }
        // Unreachable (or its stream ended): not ready until it answers again.
        health.set_serving(false).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A registered Greeter node, and the HTTP probes that report the same health as its
/// `grpc.health.v1.Health` service.
pub struct GreeterNode {
    pub grpc: Registered,
    pub probes: RunningServer,
}

/// The registry name of this topic's nodes: its own, because every topic's roles may run
/// against one NATS, and another topic's client looking up `greeter` must not reach them.
pub const SERVICE: &str = "health-greeter";

impl GreeterNode {
    /// Serves the Greeter with health and reflection, and registers it as `id`.
    pub async fn start(
        registry: &Arc<dyn Registry>,
        id: &str,
        ttl: Duration,
    ) -> anyhow::Result<Self> {
        let server = microkit::greeter::serve(id).await?;
        // The `Health` its gRPC health service reports answers the HTTP probes too.
        let health = server.health().cloned().context("greeter::serve reports health")?;
        let probes = microkit_http::start_on(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            axum::Router::new(),
            health,
        )
        .await?;
        let grpc = Registered::new(registry, server, SERVICE, id, ttl).await?;
        Ok(GreeterNode { grpc, probes })
    }
}
