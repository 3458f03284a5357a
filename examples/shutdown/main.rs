//! # shutdown: one signal, propagated in order
//!
//! A stop request (SIGTERM, ctrl-c, SIGHUP, or a timer) cancels one `CancellationToken`. The
//! tokens form a tree ([`Tokens`]): cancelling one cancels its children, never its parent or
//! siblings, so each part of the program stops when its branch is cancelled. Then
//! [`Serving::stop`] walks the phases in order: report NOT_SERVING (health), deregister,
//! stop accepting, drain up to a
//! deadline (`--drain-ms`), stop the background tasks, exit 0. A second signal during the
//! drain cancels the root of the tree: open calls are cut and the process exits 1.
//!
//! go-micro's example cancelled a context after five seconds and let the service stop: it
//! showed *that* a context stops a service, not which part hears it, in what order the
//! parts stop, or what a second ctrl-c means.
//!
//! Run it:
//!
//! ```text
//! cargo run --example shutdown                      # stops itself after 100 ms
//! cargo run --example shutdown -- serve             # serves until SIGTERM, ctrl-c or SIGHUP
//! cargo run --example shutdown -- serve --drain-ms 2000 --node shutdown-2
//! ```
//!
//! Prints `tests/golden/shutdown.txt`; explained in `notes/shutdown.md`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use microkit::greeter::HelloGreeter;
use microkit::health::Health;
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::greeter_server::GreeterServer;
use microkit::registry::{Node, Registry};
use microkit::server::RunningServer;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use roles::Settings;

mod roles;

/// The service this node registers under.
const SERVICE: &str = "greeter";
/// How long the registry keeps the node without a heartbeat.
const TTL: Duration = Duration::from_secs(3);
/// The cap on talking to the registry while stopping: a stop must not hang on it.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

/// The token tree. A child hears its parent's cancel; a parent never hears a child's.
///
/// ```text
/// exit: everything, now (a second signal)
/// ├── serving: the first signal or the timer; the heartbeat hangs off it
/// ├── accepting: cancelled in phase 2; the listener stops
/// └── background: cancelled in phase 4; the reporter stops
/// ```
struct Tokens {
    exit: CancellationToken,
    serving: CancellationToken,
    accepting: CancellationToken,
    background: CancellationToken,
}

impl Tokens {
    fn new() -> Tokens {
        let exit = CancellationToken::new();
        let (serving, accepting, background) =
            (exit.child_token(), exit.child_token(), exit.child_token());
        Tokens { exit, serving, accepting, background }
    }
}

/// A node that serves, is listed in the registry, and runs two background tasks, each
/// holding a child token of its branch.
struct Serving {
    tokens: Tokens,
    registry: Arc<dyn Registry>,
    node: Node,
    server: RunningServer,
    heartbeat: JoinHandle<()>,
    reporter: JoinHandle<u64>,
}

/// How the drain ended.
#[derive(Debug, PartialEq, Eq)]
enum Drain {
    /// Every call in flight finished.
    Finished,
    /// The deadline passed and the calls still open were cut.
    DeadlinePassed,
}

/// What the phases found: the stop's result, which the tests check.
#[derive(Debug, PartialEq, Eq)]
struct Stopped {
    /// Whether the node was still listed after phase 1 (it must not be).
    listed: bool,
    drain: Drain,
    /// The reporter's last count, taken after the drain so it includes the drained calls.
    served: u64,
}

impl Serving {
    /// Serves the Greeter as node `id`, registers it, and starts the heartbeat and the
    /// reporter, each on a child token of its branch.
    async fn start(registry: Arc<dyn Registry>, id: &str) -> anyhow::Result<Serving> {
        let tokens = Tokens::new();
        let calls_served = Arc::new(AtomicU64::new(0));
        let server = start_server(id, calls_served.clone(), tokens.accepting.clone()).await?;
        let node = Node::new(SERVICE, id, server.addr());
        registry.register(&node, TTL).await?;
        let heartbeat =
            tokio::spawn(heartbeat(registry.clone(), node.clone(), tokens.serving.child_token()));
        let reporter = tokio::spawn(reporter(calls_served, tokens.background.child_token()));
        Ok(Serving { tokens, registry, node, server, heartbeat, reporter })
    }

    /// The stop, phase by phase. It takes `signals` so that a second one can cut the drain.
    async fn stop(self, mut signals: Signals, drain_deadline: Duration) -> anyhow::Result<Stopped> {
        let Serving { tokens, registry, node, server, heartbeat, reporter } = self;
        tokens.serving.cancel();
        // From now on a second signal means "stop now": it cancels the root of the tree.
        let second_signal = tokio::spawn({
            let exit = tokens.exit.clone();
            async move {
                let name = signals.next().await;
                tracing::warn!("second {name}: forcing the exit");
                exit.cancel();
                name
            }
        });

        // 0. Not serving: clients watching the node's health stop sending it work while it
        //    is still listed, before any of them could pick it from the registry's list.
        let health = server.health().cloned();
        if let Some(health) = &health {
            health.set_serving(false).await;
        }
        let listed = is_listed(&*registry, &node).await?;
        println!("0. not serving: health reports NOT_SERVING; in the registry: {}", yes_no(listed));

        // 1. The heartbeat heard `serving` and stops; wait for it, or its next beat could
        //    re-register the node we are about to remove.
        heartbeat.await.context("the heartbeat task failed")?;
        tokio::time::timeout(REGISTRY_TIMEOUT, registry.deregister(SERVICE, &node.id))
            .await
            .context("the registry did not answer the deregistration")??;
        let listed = is_listed(&*registry, &node).await?;
        println!("1. deregister: heartbeat stopped; in the registry: {}", yes_no(listed));

        // 2. The server's accept loop hears `accepting`, drops its listener, and sends
        //    every open connection a GOAWAY: finish what you started, start nothing new.
        //    Open health Watch streams end too: they would hold the drain open.
        if let Some(health) = &health {
            health.close();
        }
        tokens.accepting.cancel();
        println!("2. stop accepting: the listener closes, open connections are told to finish");

        // 3. Drain. Three ways out: every call finished, the deadline passed (the server is
        //    dropped, which cuts its connections), or a second signal cancelled the root.
        let ms = drain_deadline.as_millis();
        println!("3. drain: waiting up to {ms}ms for the calls in flight");
        let drain = tokio::select! {
            finished = tokio::time::timeout(drain_deadline, server.shutdown()) => match finished {
                Ok(result) => {
                    result?;
                    println!("   drained: every call in flight finished");
                    Drain::Finished
                }
                Err(_) => {
                    println!("   deadline passed: the calls still open were cut");
                    Drain::DeadlinePassed
                }
            },
            () = tokens.exit.cancelled() => {
                let name = second_signal.await.unwrap_or("signal");
                anyhow::bail!("forced exit: a second {name} arrived during the drain; open calls were cut");
            }
        };

        // 4. Background work stops last, so the reporter's count includes the drained calls.
        tokens.background.cancel();
        let served = reporter.await.context("the reporter task failed")?;
        let calls = if served == 1 { "call" } else { "calls" };
        println!("4. stop background tasks: the reporter's last count is {served} {calls} served");
        println!("5. exit 0");
        Ok(Stopped { listed, drain, served })
    }
}

/// The stop requests from outside (SIGTERM, ctrl-c, SIGHUP), as a queue of names.
///
/// A queue rather than the OS calls themselves, so a test can "send" a signal in-process.
struct Signals(mpsc::UnboundedReceiver<&'static str>);

impl Signals {
    /// Listens to the OS. From here on a signal no longer kills the process at once (the
    /// default action): it becomes a request that the program answers in its own order.
    fn from_os() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            // SIGHUP too: the terminal that started the process has closed.
            let kinds = [
                (SignalKind::terminate(), "SIGTERM"),
                (SignalKind::interrupt(), "ctrl-c"),
                (SignalKind::hangup(), "SIGHUP"),
            ];
            for (kind, name) in kinds {
                let mut arrivals = signal(kind)?;
                let tx = tx.clone();
                tokio::spawn(async move {
                    while arrivals.recv().await.is_some() && tx.send(name).is_ok() {}
                });
            }
        }
        // Elsewhere ctrl-c is the one stop request there is; microkit's wait knows how.
        #[cfg(not(unix))]
        tokio::spawn(async move {
            while let Ok(name) = microkit::signal::stop_requested().await
                && tx.send(name).is_ok()
            {}
        });
        Ok(Signals(rx))
    }

    /// The next signal; never returns once no sender is left.
    async fn next(&mut self) -> &'static str {
        match self.0.recv().await {
            Some(name) => name,
            None => std::future::pending().await,
        }
    }
}

/// What a run saw, start to stop, for the tests.
#[derive(Debug, PartialEq, Eq)]
struct Report {
    /// Whether the node was listed once it was ready.
    listed: bool,
    /// The demo's one call (none in `serve` mode).
    answer: Option<String>,
    /// What asked for the stop: a signal's name or the timer.
    cause: String,
    stopped: Stopped,
}

/// The story: start and register, serve (one call in the demo), wait for the first stop
/// request, whatever it is, then stop in order.
async fn run(settings: &Settings, serve: bool, mut signals: Signals) -> anyhow::Result<Report> {
    // The demo stops itself; `serve` waits for a signal unless given a timer too.
    let stop_after = settings.stop_after_ms.or((!serve).then_some(100)).map(Duration::from_millis);
    // NATS (a JetStream KV bucket other processes can read) or in memory: same trait.
    let backend = settings.backend.connect().await?;
    tracing::info!(backend = backend.name(), "registry ready");
    let serving = Serving::start(backend.registry(), &settings.node).await?;

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

/// A Greeter that counts its calls, serving until `accepting` is cancelled.
async fn start_server(
    node: &str,
    calls_served: Arc<AtomicU64>,
    accepting: CancellationToken,
) -> std::io::Result<RunningServer> {
    let greeter = GreeterServer::with_interceptor(HelloGreeter::new(node), move |request| {
        calls_served.fetch_add(1, Ordering::Relaxed);
        Ok(request)
    });
    // Health and reflection, as on every server: phase 0 turns the health NOT_SERVING.
    let health = Health::new(&[microkit::greeter::GREETER]);
    let routes = health.mount(Routes::new(greeter));
    let server = RunningServer::start_with(move |incoming, stop| {
        // Phase 2 (`accepting`) is what stops it here; `stop` is the fixture's own handle.
        let stop_accepting = async move {
            tokio::select! {
                () = stop => {}
                () = accepting.cancelled_owned() => {}
            }
        };
        microkit::server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, stop_accepting)
    })
    .await?;
    Ok(server.with_health(health))
}

/// Keeps the node in the registry until `stop` is cancelled.
async fn heartbeat(registry: Arc<dyn Registry>, node: Node, stop: CancellationToken) {
    let mut beat = tokio::time::interval(TTL / 3);
    beat.tick().await; // the first tick is immediate, and we have just registered
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = beat.tick() => {
                // A beat that has started finishes before `stop` is looked at again, so
                // once this task has ended no registration can be in the air.
                if let Err(e) = registry.register(&node, TTL).await {
                    tracing::warn!(id = %node.id, "heartbeat failed: {e}");
                }
            }
        }
    }
}

/// Logs the number of calls served every second; when stopped, returns the last count.
async fn reporter(calls_served: Arc<AtomicU64>, stop: CancellationToken) -> u64 {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return calls_served.load(Ordering::Relaxed),
            _ = every.tick() => {
                tracing::info!(calls = calls_served.load(Ordering::Relaxed), "calls served so far");
            }
        }
    }
}

/// One call to our own server, so the demo shows it serving before it stops.
async fn call_once(server: &RunningServer) -> anyhow::Result<String> {
    let mut client = GreeterClient::connect(server.url()).await?;
    let reply = client.say_hello(HelloRequest { name: "ada".into() }).await?.into_inner();
    Ok(format!("{} (answered by {})", reply.message, reply.node))
}

async fn is_listed(registry: &dyn Registry, node: &Node) -> anyhow::Result<bool> {
    let nodes = tokio::time::timeout(REGISTRY_TIMEOUT, registry.nodes(&node.service))
        .await
        .context("the registry did not answer")??;
    Ok(nodes.iter().any(|n| n.id == node.id))
}

fn yes_no(yes: bool) -> &'static str {
    if yes { "yes" } else { "no" }
}

async fn sleep_or_never(after: Option<Duration>) {
    match after {
        Some(after) => tokio::time::sleep(after).await,
        None => std::future::pending().await,
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    let (settings, serve_mode) = roles::Args::parse().settings();
    let result = async { run(&settings, serve_mode, Signals::from_os()?).await }.await;
    microkit::report(result.map(|_| ()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use roles::Args;

    fn parse(flags: &[&str]) -> (Settings, bool) {
        Args::parse_from(["shutdown"].iter().chain(flags)).settings()
    }

    fn fake_signals() -> (mpsc::UnboundedSender<&'static str>, Signals) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Signals(rx))
    }

    #[tokio::test]
    async fn the_demo_serves_one_call_stops_on_its_timer_and_counts_the_call() {
        let (_tx, signals) = fake_signals();
        let (settings, serve_mode) = parse(&["--backend", "memory"]);
        let report = run(&settings, serve_mode, signals).await.unwrap();
        let expected = Report {
            listed: true,
            answer: Some("hello ada (answered by shutdown-1)".into()),
            cause: "timer (100ms)".into(),
            stopped: Stopped { listed: false, drain: Drain::Finished, served: 1 },
        };
        assert_eq!(report, expected);
    }

    #[tokio::test]
    async fn a_fake_sigterm_stops_the_serving_mode_the_same_way() {
        let (tx, signals) = fake_signals();
        tx.send("SIGTERM").unwrap(); // queued: it arrives as soon as the server is ready
        let (settings, serve_mode) = parse(&["serve", "--backend", "memory"]);
        let report = run(&settings, serve_mode, signals).await.unwrap();
        assert_eq!((report.answer, report.cause.as_str()), (None, "SIGTERM"));
        assert_eq!(report.stopped, Stopped { listed: false, drain: Drain::Finished, served: 0 });
    }

    #[tokio::test]
    async fn serve_with_a_timer_stops_itself() {
        let (_tx, signals) = fake_signals();
        let (settings, serve_mode) =
            parse(&["serve", "--stop-after-ms", "50", "--backend", "memory"]);
        let report = run(&settings, serve_mode, signals).await.unwrap();
        assert_eq!(report.cause, "timer (50ms)");
        assert_eq!(report.stopped.drain, Drain::Finished);
    }

    #[tokio::test]
    async fn a_health_watch_sees_serving_then_not_serving_then_the_end_as_the_node_stops() {
        use futures::StreamExt;
        use microkit::health::WireStatus;
        let registry: Arc<dyn Registry> = Arc::new(microkit::registry::MemoryRegistry::new());
        let serving = Serving::start(registry, "shutdown-1").await.unwrap();
        let addr = serving.server.addr();
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap();
        let statuses = microkit::health::watch(channel.connect().await.unwrap(), "").await;
        let mut statuses = Box::pin(statuses.unwrap());
        assert_eq!(statuses.next().await.unwrap().unwrap(), WireStatus::Serving);
        let (_tx, signals) = fake_signals();
        let stopped = serving.stop(signals, Duration::from_secs(5)).await.unwrap();
        assert_eq!(stopped.drain, Drain::Finished, "the Watch stream did not hold the drain");
        let rest: Vec<_> = statuses.map(|s| s.unwrap()).collect().await;
        assert_eq!(rest, [WireStatus::NotServing], "NOT_SERVING, then the end of the stream");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed");
    }

    #[test]
    fn the_tree_carries_a_cancel_down_and_never_up_or_across() {
        let tokens = Tokens::new();
        tokens.serving.cancel();
        assert!(!tokens.exit.is_cancelled() && !tokens.accepting.is_cancelled());
        tokens.exit.cancel();
        assert!(tokens.accepting.is_cancelled() && tokens.background.is_cancelled());
    }

    #[test]
    fn bad_flags_are_refused() {
        for args in [
            &["shutdown", "--drain-ms", "soon"][..],
            &["shutdown", "--drain-ms", "5", "serve"], // the demo's flags, then a role
            &["shutdown", "serve", "--backend", "redis"],
        ] {
            assert!(Args::try_parse_from(args).is_err(), "{args:?} was accepted");
        }
    }
}
