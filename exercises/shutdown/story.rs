//! The story both modes tell: start and register, serve, wait for the first stop request,
//! then stop in order. The default run stops itself on a timer; `serve` waits for a signal.

use std::time::Duration;

use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::server::RunningServer;

use crate::Settings;
use crate::signals::Signals;
use crate::token_tree::{SERVICE, Serving, Stopped, is_listed, yes_no};

/// What a run saw, start to stop, for the tests.
#[derive(Debug, PartialEq, Eq)]
pub struct Report {
    /// Whether the node was listed once it was ready.
    pub listed: bool,
    /// The demo's one call (none in `serve` mode).
    pub answer: Option<String>,
    /// What asked for the stop: a signal's name or the timer.
    pub cause: String,
    pub stopped: Stopped,
}

/// The story: start and register, serve (one call in the demo), wait for the first stop
/// request, whatever it is, then stop in order.
pub async fn run_until_stopped(
    settings: &Settings,
    serve: bool,
    mut signals: Signals,
) -> anyhow::Result<Report> {
    // The demo stops itself; `serve` waits for a signal unless given a timer too.
    let stop_after = settings.stop_after_ms.or((!serve).then_some(100)).map(Duration::from_millis);
    // NATS (a JetStream KV bucket other processes can read) or in memory: same trait.
    let backend = settings.backend.connect().await?;
    tracing::info!(backend = backend.name(), "registry ready");
    let serving = Serving::start(registry::on(&backend), &settings.node).await?;

    let listed = is_listed(&*serving.registry, &serving.node).await?;
    let id = &serving.node.id;
    println!("ready: node {id} serves {SERVICE}; in the registry: {}", yes_no(listed));
    let answer = if serve {
        println!("listening on {} (ctrl-c or SIGTERM stops it)", serving.server.addr());
        None
    } else {
        let answer = call_once(&serving.server).await?;
        println!("call: {answer}");
        Some(answer)
    };

    let cause = tokio::select! {
        name = signals.next() => name.to_owned(),
        () = sleep_or_never(stop_after) => format!("timer ({}ms)", stop_after.unwrap_or_default().as_millis()),
    };
    println!("shutdown signal: {cause}");
    let stopped = serving.stop(signals, Duration::from_millis(settings.drain_ms)).await?;
    Ok(Report { listed, answer, cause, stopped })
}

/// One call to our own server, so the demo shows it serving before it stops.
async fn call_once(server: &RunningServer) -> anyhow::Result<String> {
    let mut client = GreeterClient::connect(server.url()).await?;
    let reply = client.say_hello(HelloRequest { name: "ada".into() }).await?.into_inner();
    Ok(format!("{} (answered by {})", reply.message, reply.node))
}

async fn sleep_or_never(after: Option<Duration>) {
    match after {
        Some(after) => tokio::time::sleep(after).await,
        None => std::future::pending().await,
    }
}
