//! The two-process version: a `server` that serves the streaming Greeter until a stop
//! request, then drains and prints its tally, and a `client` that runs every step against it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use microkit::proto::greeter::greeter_client::GreeterClient;
use tokio_util::sync::CancellationToken;

use crate::bounds::endpoint;
use crate::story::client_steps;
use crate::stream::StreamGreeter;

/// How long the server role lets open streams finish once asked to stop: an endless stream
/// would otherwise keep it running for ever.
const DRAIN: Duration = Duration::from_secs(5);

/// The `server` role: serve until a stop request, drain the streams in flight (for at most
/// [`DRAIN`]), print what it saw, exit 0.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let greeter = StreamGreeter::new();
    let seen = greeter.seen.subscribe();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let addr = listener.local_addr()?; // port 0 asked for any free port: say which
    // Armed before the ready line: a signal that follows it is a stop request, not a kill.
    let stop_requested = microkit::signal::stop_requested();
    // On stderr: stdout holds only results, never addresses.
    eprintln!("serving the streaming Greeter on {addr}; ctrl-c or SIGTERM to stop");
    let stop = CancellationToken::new();
    let health = microkit::health::Health::new(&[microkit::greeter::GREETER]);
    let routes = health.mount(tonic::service::Routes::new(greeter.into_service()));
    let incoming = microkit::server::Incoming::from(listener);
    let stopped = stop.clone().cancelled_owned();
    let serving = tokio::spawn(
        microkit::server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, stopped),
    );

    let signal = microkit::signal::stopping(stop_requested.await, "draining")?;
    // NOT_SERVING first, then end the Watch streams, which would hold the drain open.
    health.set_serving(false).await;
    health.close();
    eprintln!("{signal}: letting open streams finish, for at most {DRAIN:?}");
    stop.cancel();
    match tokio::time::timeout(DRAIN, serving).await {
        Ok(served) => served?.with_context(|| format!("serving on {addr}"))?,
        Err(_) => tracing::warn!("streams still open after {DRAIN:?} are cut"),
    }
    let seen = seen.borrow();
    println!(
        "server stopped: names read {}, half-closes seen {}, clients gone mid-stream {}",
        seen.names.len(),
        seen.half_closes,
        seen.clients_gone
    );
    Ok(())
}

/// The `client` role: every client step against a server that is already running.
pub async fn client(addr: SocketAddr) -> anyhow::Result<()> {
    let channel = endpoint(format!("http://{addr}"))?
        .connect()
        .await
        .with_context(|| format!("no stream server at {addr}: start one with `stream server`"))?;
    client_steps(&mut GreeterClient::new(channel)).await
}
