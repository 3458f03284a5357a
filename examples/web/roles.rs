//! The roles, for several terminals (or for a real browser: `serve`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use registry::Registry;

use crate::edge::{Edge, start_gateway, start_greeter, start_web};

/// Every long-running role waits the same way: the first stop request starts the graceful
/// stop, a second one exits at once. `stop` is armed before the role says it is ready, so a
/// signal that follows that line is always a stop request, never a kill.
pub async fn until_stopped(
    stop: impl Future<Output = std::io::Result<&'static str>>,
) -> anyhow::Result<()> {
    microkit::signal::stopping(stop.await, "stopping")?;
    Ok(())
}

/// The greeter, the web service and the gateway until stopped, for a real browser.
pub async fn serve(registry: &Arc<dyn Registry>, port: u16) -> anyhow::Result<()> {
    let edge = Edge::start(registry, port).await?;
    let stop = microkit::signal::stop_requested();
    println!("open {}/hello/ in a browser; ctrl-c stops", edge.gateway.url());
    until_stopped(stop).await?;
    let (forwarded, served) = edge.stop().await?;
    println!("stopped: the gateway forwarded {forwarded} request(s), hello-1 served {served}");
    Ok(())
}

/// One node of the web service `hello` (and a greeter beside it), registered until stopped;
/// on a stop it reports not ready for `grace` before it leaves.
pub async fn service(
    registry: &Arc<dyn Registry>,
    id: &str,
    grace: Duration,
) -> anyhow::Result<()> {
    let greeter = start_greeter(registry, &format!("greeter-for-{id}")).await?;
    let (web, service) = start_web(registry, id).await?;
    let stop = microkit::signal::stop_requested();
    println!("{id} serving web service hello on {}; ctrl-c stops", web.server().url());
    until_stopped(stop).await?;
    web.not_serving().await;
    tokio::time::sleep(grace).await;
    web.deregister_and_drain().await?;
    greeter.stop().await?;
    let served = service.served.load(Ordering::Relaxed);
    println!("{id} stopped: {served} request(s) served");
    Ok(())
}

/// The gateway alone until stopped, finding web services in the shared registry.
pub async fn gateway(registry: &Arc<dyn Registry>, port: u16) -> anyhow::Result<()> {
    let (server, gateway) = start_gateway(registry, port).await?;
    let stop = microkit::signal::stop_requested();
    println!("gateway on {}; ctrl-c stops", server.url());
    until_stopped(stop).await?;
    server.shutdown().await?;
    println!("gateway stopped: {} request(s) forwarded", gateway.forwarded());
    Ok(())
}
