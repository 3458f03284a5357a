//! The roles: one service per process, over a shared NATS, its spans sent over OTLP when
//! a collector is configured.

use std::time::Duration;

use clap::Subcommand;

use crate::metrics;
use crate::services;
use crate::telemetry::Telemetry;

#[derive(Subcommand, Debug, Clone, Copy)]
pub(crate) enum Role {
    /// The HTTP edge, with /metrics (needs NATS_URL).
    Gateway {
        /// The port to listen on, on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// The gRPC service the gateway calls (needs NATS_URL).
    Greeter,
    /// The gRPC service the greeter calls (needs NATS_URL).
    Directory,
    /// The subscriber of `greeted` (needs NATS_URL).
    Audit,
}

/// A registration's time to live: how long a crashed node stays listed.
pub const TTL: Duration = Duration::from_secs(3);

/// One service in this process until a stop request; its spans go over OTLP when configured.
pub(crate) async fn role(
    role: Role,
    backend: &microkit_backend::Backend,
    telemetry: &Telemetry,
) -> anyhow::Result<()> {
    let registry = registry::on(backend);
    let stop = microkit::signal::stop_requested();
    let metrics = match role {
        // The gateway serves /metrics itself; audit serves no requests, so has none to count.
        Role::Gateway { .. } | Role::Audit => None,
        // The gRPC services have no HTTP port of their own: /metrics gets one, over HTTP/1.1
        // alone, what a scraper speaks. Over HTTP/2 a client that reads no reply leaves
        // each stream past the connection's 64 KiB window waiting in hyper; when it then
        // hangs up, h2 0.4.20's debug build panics on those streams (notes/trace.md).
        _ => Some(microkit_http::start(metrics::route()).await?),
    };
    // Said in the role's ready line, which comes once the role is in place.
    let scrape = metrics.as_ref().map(|m| format!(", metrics on http://{}/metrics", m.addr()));
    let scrape = scrape.unwrap_or_default();
    let tally = match role {
        Role::Gateway { port } => {
            let tracer = telemetry.tracer("gateway")?;
            let server = services::gateway(&registry, &tracer, true, port).await?;
            println!("gateway listening on http://{}", server.addr());
            wait(stop).await?;
            server.shutdown().await?;
            "gateway stopped".to_owned()
        }
        Role::Greeter => {
            let node = services::greeter(
                &registry,
                broker::on(backend).await?,
                &telemetry.tracer("greeter")?,
                TTL,
            )
            .await?;
            println!("greeter serving on {}{scrape}", node.addr());
            wait(stop).await?;
            node.stop().await?;
            "greeter stopped".to_owned()
        }
        Role::Directory => {
            let node = services::directory(&registry, &telemetry.tracer("directory")?, TTL).await?;
            println!("directory serving on {}{scrape}", node.addr());
            wait(stop).await?;
            node.stop().await?;
            "directory stopped".to_owned()
        }
        Role::Audit => {
            let handler =
                services::audit(broker::on(backend).await?, &telemetry.tracer("audit")?).await?;
            println!("audit subscribed to {}", services::TOPIC);
            wait(stop).await?;
            format!("audit handled {} greetings", handler.stop().await)
        }
    };
    if let Some(metrics) = metrics {
        metrics.shutdown().await?;
    }
    telemetry.shutdown().await; // the last spans leave before the process does
    println!("{tally}");
    Ok(())
}

async fn wait(
    stop: impl std::future::Future<Output = std::io::Result<&'static str>>,
) -> anyhow::Result<()> {
    microkit::signal::stopping(stop.await, "stopping")?;
    Ok(())
}
