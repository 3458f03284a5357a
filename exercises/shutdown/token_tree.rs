//! The lesson: one stop request cancels a token, the tokens form a tree, and the stop walks
//! its phases in order: NOT_SERVING, deregister, stop accepting, drain, background, exit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use microkit::greeter::HelloGreeter;
use microkit::health::Health;
use microkit::proto::greeter::greeter_server::GreeterServer;
use microkit::server::RunningServer;
use registry::{Node, Registry};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::signals::Signals;

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

/// The service this node registers under: a name of this topic's own, since every topic's
/// roles may share one NATS, and a client of another topic's `greeter` must not find it.
pub const SERVICE: &str = "shutdown-greeter";
/// How long the registry keeps the node without a heartbeat.
const TTL: Duration = Duration::from_secs(3);
/// The cap on talking to the registry while stopping: a stop must not hang on it.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

/// A node that serves, is listed in the registry, and runs two background tasks, each
/// holding a child token of its branch.
pub struct Serving {
    tokens: Tokens,
    pub registry: Arc<dyn Registry>,
    pub node: Node,
    pub server: RunningServer,
    heartbeat: JoinHandle<()>,
    reporter: JoinHandle<u64>,
}

/// How the drain ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Drain {
    /// Every call in flight finished.
    Finished,
    /// The deadline passed and the calls still open were cut.
    DeadlinePassed,
}

/// What the phases found: the stop's result, which the tests check.
#[derive(Debug, PartialEq, Eq)]
pub struct Stopped {
    /// Whether the node was still listed after phase 1 (it must not be).
    pub listed: bool,
    pub drain: Drain,
    /// The reporter's last count, taken after the drain so it includes the drained calls.
    pub served: u64,
}

impl Serving {
    /// Serves the Greeter as node `id`, registers it, and starts the heartbeat and the
    /// reporter, each on a child token of its branch.
    pub async fn start(registry: Arc<dyn Registry>, id: &str) -> anyhow::Result<Serving> {
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
    pub async fn stop(
        self,
        mut signals: Signals,
        drain_deadline: Duration,
    ) -> anyhow::Result<Stopped> {
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
        // EXERCISE: deregister the node before the drain begins
        // Check it with `scripts/exercise.sh shutdown`; `scripts/exercise.sh shutdown hint` helps.
        // END OF EXERCISE
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

pub async fn is_listed(registry: &dyn Registry, node: &Node) -> anyhow::Result<bool> {
    let nodes = tokio::time::timeout(REGISTRY_TIMEOUT, registry.nodes(&node.service))
        .await
        .context("the registry did not answer")??;
    Ok(nodes.iter().any(|n| n.id == node.id))
}

pub fn yes_no(yes: bool) -> &'static str {
    if yes { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    use super::Tokens;

    #[test]
    fn the_tree_carries_a_cancel_down_and_never_up_or_across() {
        let tokens = Tokens::new();
        tokens.serving.cancel();
        assert!(!tokens.exit.is_cancelled() && !tokens.accepting.is_cancelled());
        tokens.exit.cancel();
        assert!(tokens.accepting.is_cancelled() && tokens.background.is_cancelled());
    }
}
