//! The sidecar beside a registered Greeter node: what the story runs in, and the `serve`
//! role, which keeps it up for curl or a program in another language until stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use registry::Registered;

use crate::sidecar::{self, Sidecar};
use crate::{Args, Role, story};

/// How long the Greeter node stays listed without a heartbeat.
const GREETER_TTL: Duration = Duration::from_secs(10);

pub async fn run(args: Args) -> anyhow::Result<()> {
    let backend = args.backend.connect().await?;
    let broker = broker::on(&backend).await?;
    let registry = registry::on(&backend);
    let greeter = microkit::greeter::serve("greeter-1").await?;
    let greeter = Registered::new(&registry, greeter, "greeter", "greeter-1", GREETER_TTL).await?;
    let port = match args.role {
        Some(Role::Serve { port }) => port,
        None => 0,
    };
    let address = ([127, 0, 0, 1], port).into();
    let (router, tally) = counted(sidecar::router(Sidecar::new(registry, broker.clone())));
    let server = microkit_http::start_on(address, router, microkit::health::Health::default())
        .await
        .with_context(|| format!("cannot listen on {address}"))?;

    match args.role {
        None => story::demo(&server, broker::on(&backend).await?).await?,
        Some(Role::Serve { .. }) => {
            // Armed before the ready line: a signal that follows it is a stop request.
            let stop = microkit::signal::stop_requested();
            println!("sidecar listening on {}; ctrl-c stops", server.url());
            microkit::signal::stopping(stop.await, "stopping")?;
        }
    }
    // Requests in flight finish first (they may be calling the Greeter), then the Greeter
    // leaves the registry and drains, and the broker sends what it still holds.
    server.shutdown().await?;
    greeter.stop().await?;
    broker.drain().await?;
    if args.role.is_some() {
        let (answered, refused) = tally.counts();
        println!("sidecar stopped after {answered} requests ({refused} refused)");
    }
    Ok(())
}

/// How many requests the sidecar answered, and how many of them with an error status.
#[derive(Clone, Default)]
struct Tally {
    answered: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

impl Tally {
    fn counts(&self) -> (u64, u64) {
        (self.answered.load(Ordering::Relaxed), self.refused.load(Ordering::Relaxed))
    }
}

/// `router`, counting its answers into the returned tally.
fn counted(router: Router) -> (Router, Tally) {
    let tally = Tally::default();
    let count = tally.clone();
    let router =
        router.layer(axum::middleware::map_response(move |response: axum::response::Response| {
            let count = count.clone();
            async move {
                count.answered.fetch_add(1, Ordering::Relaxed);
                if response.status().is_client_error() || response.status().is_server_error() {
                    count.refused.fetch_add(1, Ordering::Relaxed);
                }
                response
            }
        }));
    (router, tally)
}
