//! # shutdown: one signal, propagated in order
//!
//! go-micro's example cancelled a context after five seconds and let the service stop.
//! It showed *that* a context can stop a service, not what a stop must do: which part
//! hears about it, in what order the parts stop, and what happens when a user, tired of
//! waiting, presses ctrl-c again.
//!
//! Here one [`CancellationToken`] is fired by the first of ctrl-c, SIGTERM or a timer.
//! Tokens form a tree: cancelling one cancels its children, never its parent or its
//! siblings, so each part of the program holds a child token and stops when its branch
//! is cancelled. The main task then walks the phases in order:
//!
//! 1. stop the heartbeat and deregister, so clients stop picking this node;
//! 2. stop accepting connections;
//! 3. drain: let the calls in flight finish, up to a deadline (`--drain-ms`);
//! 4. stop the background tasks (the reporter flushes its last count);
//! 5. exit 0.
//!
//! A second ctrl-c or SIGTERM during the drain cancels the root token and the process
//! exits at once, with code 1 and a line saying what was cut.
//!
//! Run it:
//!
//! ```text
//! cargo run --example shutdown                      # stops itself after 100 ms
//! cargo run --example shutdown -- serve             # serves until ctrl-c or SIGTERM
//! cargo run --example shutdown -- serve --drain-ms 2000 --node shutdown-2
//! ```
//!
//! The default run prints (the golden file `tests/golden/shutdown.txt` holds exactly this):
//!
//! ```text
//! ready: node shutdown-1 serves greeter; in the registry: yes
//! call: hello ada (answered by shutdown-1)
//! shutdown signal: timer (100ms)
//! 1. deregister: heartbeat stopped; in the registry: no
//! 2. stop accepting: the listener closes, open connections are told to finish
//! 3. drain: waiting up to 5000ms for the calls in flight
//!    drained: every call in flight finished
//! 4. stop background tasks: the reporter's last count is 1 call served
//! 5. exit 0
//! ```
//!
//! Read it beside `notes/shutdown.md`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use microkit::backend::BackendArgs;
use microkit::greeter::HelloGreeter;
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::greeter_server::GreeterServer;
use microkit::registry::{Node, Registry};
use microkit::server::RunningServer;
use microkit::{Out, say};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

/// The service this node registers under.
const SERVICE: &str = "greeter";
/// How long the registry keeps the node without a heartbeat.
const TTL: Duration = Duration::from_secs(3);
/// The cap on talking to the registry while stopping: a stop must not hang on it.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(
    about = "Graceful shutdown: a signal, a token tree, and the phases in order",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Serve until ctrl-c or SIGTERM, then stop in order, printing each phase.
    Serve(Settings),
}

#[derive(clap::Args, Debug, Clone)]
struct Settings {
    /// Stop by itself this long after it is ready [default: 100 in the demo, never in `serve`].
    #[arg(long, value_name = "MS")]
    stop_after_ms: Option<u64>,
    /// How long the drain may take before the calls still open are cut.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    drain_ms: u64,
    /// This node's id in the registry.
    #[arg(long, default_value = "shutdown-1")]
    node: String,
    #[command(flatten)]
    backend: BackendArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    let args = Args::parse();
    microkit::report(async { run(args, &Out::stdout(), Signals::from_os()?).await }.await)
}

async fn run(args: Args, out: &Out, mut signals: Signals) -> anyhow::Result<()> {
    let (settings, serve_mode) = match args.role {
        Some(Role::Serve(settings)) => (settings, true),
        None => (args.settings, false),
    };
    // The demo stops itself; `serve` waits for a signal unless given a timer too.
    let stop_after = match (settings.stop_after_ms, serve_mode) {
        (Some(ms), _) => Some(ms),
        (None, false) => Some(100),
        (None, true) => None,
    }
    .map(Duration::from_millis);
    // NATS (a JetStream KV bucket other processes can read) or in-process: same trait.
    let backend = settings.backend.connect().await?;
    let registry = backend.registry();
    tracing::info!(backend = backend.name(), "registry ready");

    // The token tree. A child hears its parent's cancel; a parent never hears a child's.
    //   exit: everything, now (a second signal)
    //   ├── serving: the first signal or the timer; the heartbeat hangs off it
    //   ├── accepting: cancelled in phase 2; the listener stops
    //   └── background: cancelled in phase 4; the reporter stops
    let exit = CancellationToken::new();
    let serving = exit.child_token();
    let accepting = exit.child_token();
    let background = exit.child_token();

    let calls_served = Arc::new(AtomicU64::new(0));
    let server = start_server(&settings.node, calls_served.clone(), accepting.clone()).await?;
    let node = Node::new(SERVICE, &settings.node, server.addr());
    registry.register(&node, TTL).await?;
    let heartbeat = tokio::spawn(heartbeat(registry.clone(), node.clone(), serving.child_token()));
    let reporter = tokio::spawn(reporter(calls_served, background.child_token()));

    let listed = is_listed(&*registry, &node).await?;
    say!(out, "ready: node {} serves {SERVICE}; in the registry: {}", node.id, yes_no(listed));
    if serve_mode {
        say!(out, "listening on {} (ctrl-c or SIGTERM stops it)", server.addr());
    } else {
        say!(out, "call: {}", call_once(&server).await?);
    }

    // Wait for the first stop request. Whatever it was, the rest is the same.
    let cause = tokio::select! {
        name = signals.next() => name.to_owned(),
        () = sleep_or_never(stop_after) => format!("timer ({}ms)", stop_after.unwrap_or_default().as_millis()),
    };
    serving.cancel();
    say!(out, "shutdown signal: {cause}");
    // From now on a second signal means "stop now": it cancels the root of the tree.
    let second_signal = tokio::spawn({
        let exit = exit.clone();
        async move {
            let name = signals.next().await;
            tracing::warn!("second {name}: forcing the exit");
            exit.cancel();
            name
        }
    });

    // 1. The heartbeat heard `serving` and stops; wait for it, or its next beat could
    //    re-register the node we are about to remove.
    heartbeat.await.context("the heartbeat task failed")?;
    tokio::time::timeout(REGISTRY_TIMEOUT, registry.deregister(SERVICE, &node.id))
        .await
        .context("the registry did not answer the deregistration")??;
    let listed = is_listed(&*registry, &node).await?;
    say!(out, "1. deregister: heartbeat stopped; in the registry: {}", yes_no(listed));

    // 2. The server's accept loop hears `accepting`, drops its listener, and sends
    //    every open connection a GOAWAY: finish what you started, start nothing new.
    accepting.cancel();
    say!(out, "2. stop accepting: the listener closes, open connections are told to finish");

    // 3. Drain. Three ways out: every call finished, the deadline passed (the server is
    //    dropped, which cuts its connections), or a second signal cancelled the root.
    say!(out, "3. drain: waiting up to {}ms for the calls in flight", settings.drain_ms);
    let deadline = Duration::from_millis(settings.drain_ms);
    tokio::select! {
        finished = tokio::time::timeout(deadline, server.shutdown()) => match finished {
            Ok(result) => {
                result?;
                say!(out, "   drained: every call in flight finished");
            }
            Err(_) => say!(out, "   deadline passed: the calls still open were cut"),
        },
        () = exit.cancelled() => {
            let name = second_signal.await.unwrap_or("signal");
            anyhow::bail!("forced exit: a second {name} arrived during the drain; open calls were cut");
        }
    }

    // 4. Background work stops last, so the reporter's count includes the drained calls.
    background.cancel();
    let served = reporter.await.context("the reporter task failed")?;
    let plural = if served == 1 { "" } else { "s" };
    say!(
        out,
        "4. stop background tasks: the reporter's last count is {served} call{plural} served"
    );
    say!(out, "5. exit 0");
    Ok(())
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
    RunningServer::start_with(move |incoming, stop| {
        // Phase 2 (`accepting`) is what stops it here; `stop` is the fixture's own handle.
        let stop_accepting = async move {
            tokio::select! {
                () = stop => {}
                () = accepting.cancelled_owned() => {}
            }
        };
        Server::builder()
            .add_service(greeter)
            .serve_with_incoming_shutdown(incoming, stop_accepting)
    })
    .await
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

/// The stop requests from outside (ctrl-c, SIGTERM), as a queue of names.
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
            let kinds = [(SignalKind::interrupt(), "ctrl-c"), (SignalKind::terminate(), "SIGTERM")];
            for (kind, name) in kinds {
                let mut arrivals = signal(kind)?;
                let tx = tx.clone();
                tokio::spawn(async move {
                    while arrivals.recv().await.is_some() && tx.send(name).is_ok() {}
                });
            }
        }
        #[cfg(not(unix))]
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() && tx.send("ctrl-c").is_ok() {}
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_signals() -> (mpsc::UnboundedSender<&'static str>, Signals) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Signals(rx))
    }

    #[tokio::test]
    async fn prints_its_golden_output() {
        let out = Out::capture();
        let (_tx, signals) = fake_signals();
        let args = Args::parse_from(["shutdown", "--backend", "memory"]);
        run(args, &out, signals).await.unwrap();
        microkit::golden::assert_matches("shutdown", &out.text());
    }

    #[tokio::test]
    async fn a_fake_sigterm_stops_the_serving_mode_in_the_same_order() {
        let out = Out::capture();
        let (tx, signals) = fake_signals();
        tx.send("SIGTERM").unwrap(); // queued: it arrives as soon as the server is ready
        let args = Args::parse_from(["shutdown", "serve", "--backend", "memory"]);
        run(args, &out, signals).await.unwrap();
        let text = out.text();
        let after_ready: Vec<&str> = text.lines().skip(2).collect();
        let expected = [
            "shutdown signal: SIGTERM",
            "1. deregister: heartbeat stopped; in the registry: no",
            "2. stop accepting: the listener closes, open connections are told to finish",
            "3. drain: waiting up to 5000ms for the calls in flight",
            "   drained: every call in flight finished",
            "4. stop background tasks: the reporter's last count is 0 calls served",
            "5. exit 0",
        ];
        assert_eq!(after_ready, expected, "{text}");
    }

    #[tokio::test]
    async fn serve_with_a_timer_stops_itself() {
        let out = Out::capture();
        let (_tx, signals) = fake_signals();
        let args =
            Args::parse_from(["shutdown", "serve", "--stop-after-ms", "50", "--backend", "memory"]);
        run(args, &out, signals).await.unwrap();
        assert!(out.text().contains("shutdown signal: timer (50ms)\n"), "{}", out.text());
        assert!(out.text().ends_with("5. exit 0\n"), "{}", out.text());
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
