//! The one-process story: the chain A → B → C and three odd nodes, all in the registry, and
//! what a client sees when it gives up, when its deadline is ample or short, and when it
//! retries a flaky, a dead and a lossy node.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use health::{Channels, LiveNodes};
use microkit::PATIENCE;
use microkit::proto::greeter::greeter_server::{Greeter, GreeterServer};
use microkit::proto::greeter::{HelloReply, HelloRequest};
use microkit::server::RunningServer;
use registry::Registered;
use registry::Registry;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Request, Status};
use tower::{Service, ServiceExt};

use crate::deadline::{Hop, MARGIN, Next, Tally};
use crate::policy::{Call, Flaky, RetryPolicy, attempt, budget};

/// How long a and b work before they call the next hop, and how long c, the slow one at the
/// end (a database, say), works before it answers.
pub const WORK: [Duration; 3] =
    [Duration::from_millis(10), Duration::from_millis(10), Duration::from_millis(200)];
/// A registration's TTL: how long a crashed node stays listed.
const TTL: Duration = Duration::from_secs(3);
/// The hops, first to last: (node id, service).
pub const HOPS: [(&str, &str); 3] = [("a", "retry-a"), ("b", "retry-b"), ("c", "retry-c")];

/// Serves `greeter` as node `id` of `service`, listed in the registry while it runs.
pub async fn serve<G: Greeter>(
    registry: &Arc<dyn Registry>,
    service: &str,
    id: &str,
    greeter: G,
) -> anyhow::Result<Registered> {
    let server = RunningServer::start_with(move |incoming, stop| {
        microkit::server::builder()
            .add_service(GreeterServer::new(greeter))
            .serve_with_incoming_shutdown(incoming, stop)
    })
    .await?;
    Ok(Registered::new(registry, server, service, id, TTL).await?)
}

impl Next {
    /// Watches `service` in the registry; with `wait_for`, until that node is listed.
    pub async fn find(
        registry: &Arc<dyn Registry>,
        service: &str,
        wait_for: Option<&str>,
    ) -> anyhow::Result<Next> {
        let nodes = LiveNodes::watch(registry, service).await?;
        if let Some(id) = wait_for {
            nodes.wait_for_ids(&[id], PATIENCE).await?;
        }
        Ok(Next { service: service.to_owned(), nodes, channels: Channels::default() })
    }

    /// One call, with `deadline` as its `grpc-timeout`.
    pub async fn call(&self, deadline: Duration) -> Result<HelloReply, Status> {
        let mut request = Request::new(HelloRequest { name: "client".into() });
        request.set_timeout(deadline);
        Ok(self.client()?.say_hello(request).await?.into_inner())
    }
}

/// The hop `index` of the chain (0 is A), calling the next one through the registry.
pub async fn hop(
    registry: &Arc<dyn Registry>,
    index: usize,
    work: Duration,
    wait_for_next: bool,
) -> anyhow::Result<(Registered, watch::Receiver<Tally>)> {
    let (id, service) = HOPS[index];
    let next = match HOPS.get(index + 1) {
        Some((next_id, next_service)) => {
            Some(Next::find(registry, next_service, wait_for_next.then_some(*next_id)).await?)
        }
        None => None,
    };
    let (tally, watching) = watch::channel(Tally::default());
    let side_jobs = next.is_none();
    let hop = Hop { name: id.into(), work, default_deadline: PATIENCE, next, side_jobs, tally };
    Ok((serve(registry, service, id, hop).await?, watching))
}

/// A, B and C, started last to first so each finds the next in the registry.
pub struct Chain {
    nodes: Vec<Registered>,
    pub tallies: Vec<watch::Receiver<Tally>>,
    entry: Next,
}

impl Chain {
    pub async fn start(registry: &Arc<dyn Registry>) -> anyhow::Result<Chain> {
        let (mut nodes, mut tallies) = (Vec::new(), Vec::new());
        for index in (0..HOPS.len()).rev() {
            let (node, tally) = hop(registry, index, WORK[index], true).await?;
            nodes.insert(0, node);
            tallies.insert(0, tally);
        }
        let entry = Next::find(registry, HOPS[0].1, Some(HOPS[0].0)).await?;
        Ok(Chain { nodes, tallies, entry })
    }

    /// A call to A, with `deadline` as its `grpc-timeout`.
    pub async fn call(&self, deadline: Duration) -> Result<HelloReply, Status> {
        self.entry.call(deadline).await
    }

    /// What each hop was given by the last call that reached it.
    pub fn given(&self) -> Vec<Option<Duration>> {
        self.tallies.iter().map(|t| t.borrow().last_given).collect()
    }

    /// The client gives up once C has started: dropping its call is the whole cancel.
    /// Returns the tallies once every hop has counted its cancel and C's guarded job ended.
    pub async fn give_up_once_c_started(&self) -> anyhow::Result<Vec<Tally>> {
        let mut last = self.tallies[HOPS.len() - 1].clone();
        let started = last.borrow().started;
        let cancelled: Vec<u32> = self.tallies.iter().map(|t| t.borrow().cancelled).collect();
        tokio::select! {
            answer = self.call(PATIENCE) => bail!("the call ended before the client gave up: {answer:?}"),
            seen = tokio::time::timeout(PATIENCE, last.wait_for(|t| t.started > started)) => {
                seen.context("C never started")??;
            }
        } // leaving the select dropped the call
        for (tally, before) in self.tallies.iter().zip(cancelled) {
            let mut tally = tally.clone();
            let seen = tokio::time::timeout(PATIENCE, tally.wait_for(|t| t.cancelled > before));
            seen.await.context("a hop did not see the cancel")??;
        }
        let seen = tokio::time::timeout(PATIENCE, last.wait_for(|t| t.guarded_jobs == 0));
        seen.await.context("the guarded side job did not stop")??;
        Ok(self.tallies.iter().map(|t| t.borrow().clone()).collect())
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        for node in self.nodes {
            node.stop().await?;
        }
        Ok(())
    }
}

/// Makes `count` calls one after another; returns how many succeeded.
pub async fn calls<S>(service: &mut S, count: u32, idempotent: bool) -> anyhow::Result<u32>
where
    S: Service<Call, Response = HelloReply, Error = Status>,
{
    let mut ok = 0;
    for i in 0..count {
        let request = HelloRequest { name: format!("call {i}") };
        let call = Call { request, idempotent, deadline: Instant::now() + PATIENCE };
        ok += u32::from(service.ready().await?.call(call).await.is_ok());
    }
    Ok(ok)
}

/// A service to the node `id` of `service`, with or without the retry layer, and its count
/// of attempts.
pub async fn client_of(
    registry: &Arc<dyn Registry>,
    service: &str,
    id: &str,
    policy: Option<RetryPolicy>,
) -> anyhow::Result<(tower::util::BoxService<Call, HelloReply, Status>, Arc<AtomicU32>)> {
    let next = Next::find(registry, service, Some(id)).await?;
    let attempts = Arc::new(AtomicU32::new(0));
    let bare = attempt(next.client()?, attempts.clone());
    let service = match policy {
        Some(policy) => tower::util::BoxService::new(tower::retry::Retry::new(policy, bare)),
        None => tower::util::BoxService::new(bare),
    };
    Ok((service, attempts))
}

/// The policy of the story: up to 2 retries, backoff from 1 ms (kept short for the demo).
pub fn policy(budgeted: bool) -> RetryPolicy {
    let budget = budgeted.then(|| budget(Duration::from_secs(1)));
    RetryPolicy::new(2, Duration::from_millis(1), Duration::from_millis(8), budget)
}

/// Deadlines that run out at c, at b and at a. a and b each use their work and keep their
/// margin (110 ms together). 420 ms reach c with about 200 ms: its margin and half of its
/// work, so c stops mid-work with a margin either side for a busy machine. 210 ms reach b
/// with less than its margin, and 100 ms reach a with exactly its margin: each answers at
/// once, and its reply has almost a whole margin to travel back before the caller's timer.
pub const SHORT_DEADLINES: [u64; 3] = [420, 210, 100];

/// The most each hop can have been given when the client allows `deadline`: every hop
/// before it has used its work and kept its margin. A hop that was given more would show
/// that the deadline had not travelled (or had grown on the way).
pub fn bounds(deadline: Duration) -> Vec<Duration> {
    let mut bound = deadline;
    let mut bounds = vec![bound];
    for work in &WORK[..HOPS.len() - 1] {
        bound = bound.saturating_sub(*work + MARGIN);
        bounds.push(bound);
    }
    bounds
}

pub async fn demo(registry: &Arc<dyn Registry>) -> anyhow::Result<()> {
    let chain = Chain::start(registry).await?;
    println!("the chain: client -> a -> b -> c, each hop found in the registry");

    let tallies = chain.give_up_once_c_started().await?;
    println!("1. the client gives up once c has started: each handler is dropped");
    let cancelled: Vec<String> =
        HOPS.iter().zip(&tallies).map(|((id, _), t)| format!("{id} {}", t.cancelled)).collect();
    let replied: u32 = tallies.iter().map(|t| t.replied).sum();
    println!("   cancelled: {}; replied: {replied}", cancelled.join(", "));
    let orphan = if tallies[2].orphan_jobs > 0 { "still running" } else { "stopped" };
    println!("   c's side job with a token: stopped; without one: {orphan}");

    let deadline = Duration::from_millis(1000);
    let reply = chain.call(deadline).await?;
    println!("2. a deadline of {}ms travels, shrinking at each hop:", deadline.as_millis());
    let mut given = Vec::new();
    for (((id, _), got), bound) in HOPS.iter().zip(chain.given()).zip(bounds(deadline)) {
        let got = got.context("a hop saw no call")?;
        tracing::info!("{id} was given {got:?}");
        match got <= bound {
            true => given.push(format!("{id} at most {}ms", bound.as_millis())),
            false => given.push(format!("{id} {}ms, over its bound", got.as_millis())),
        }
    }
    println!("   {}: {}", given.join(", "), reply.message);

    let [a, b, c] = WORK.map(|w| w.as_millis());
    let margin = MARGIN.as_millis();
    println!("3. too short (a works {a}ms, b {b}ms, c {c}ms; each keeps a {margin}ms margin):");
    for ms in SHORT_DEADLINES {
        match chain.call(Duration::from_millis(ms)).await {
            Ok(reply) => println!("   {ms}ms: {}", reply.message),
            Err(status) => println!("   {ms}ms: {:?} \"{}\"", status.code(), status.message()),
        }
    }
    chain.stop().await?;

    println!("4. retries through tower's retry layer (up to 2 per call, backoff with jitter):");
    let flaky = flaky_node(registry).await?;
    println!(
        "   a flaky node (Unavailable every 3rd attempt), 9 calls: {} ok without retries,",
        flaky.bare_ok
    );
    println!("     {} ok with them, in {} attempts", flaky.ok, flaky.attempts);
    let (storm, budgeted) = dead_node(registry).await?;
    println!(
        "   a crashed node still listed, 10 calls: {storm} attempts without a budget, {budgeted} with one"
    );
    let [charges, reads] = lossy_node(registry).await?;
    println!("   a node that loses every 2nd reply after doing the work (Unknown):");
    println!(
        "     4 charges, not idempotent: {} ok in {} attempts, charged {} times",
        charges.ok, charges.attempts, charges.done
    );
    println!("     4 reads, idempotent: {} ok in {} attempts", reads.ok, reads.attempts);
    Ok(())
}

/// What a run of calls came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Calls that succeeded, without the retry layer (where the story tries that too).
    pub bare_ok: u32,
    /// Calls that succeeded through the retry layer.
    pub ok: u32,
    /// Attempts the node got from them.
    pub attempts: u32,
    /// Times the node did the work.
    pub done: u32,
}

/// 9 idempotent calls to a node that refuses every 3rd attempt, without and with retries.
pub async fn flaky_node(registry: &Arc<dyn Registry>) -> anyhow::Result<Outcome> {
    let flaky = Flaky::new(3, false);
    let (node_attempts, done) = (flaky.attempts.clone(), flaky.done.clone());
    let node = serve(registry, "retry-flaky", "flaky", flaky).await?;
    let (mut bare, _) = client_of(registry, "retry-flaky", "flaky", None).await?;
    let bare_ok = calls(&mut bare, 9, true).await?;
    node_attempts.store(0, Ordering::SeqCst);
    done.store(0, Ordering::SeqCst);
    let (mut retrying, attempts) =
        client_of(registry, "retry-flaky", "flaky", Some(policy(true))).await?;
    let ok = calls(&mut retrying, 9, true).await?;
    node.stop().await?;
    let (attempts, done) = (attempts.load(Ordering::SeqCst), done.load(Ordering::SeqCst));
    Ok(Outcome { bare_ok, ok, attempts, done })
}

/// 10 calls to a node that crashed but is still listed, retried without and with a budget:
/// the attempts each way.
pub async fn dead_node(registry: &Arc<dyn Registry>) -> anyhow::Result<(u32, u32)> {
    let dead = serve(registry, "retry-dead", "dead", Flaky::new(1, false)).await?;
    let (mut storm, storm_attempts) =
        client_of(registry, "retry-dead", "dead", Some(policy(false))).await?;
    let (mut budgeted, budgeted_attempts) =
        client_of(registry, "retry-dead", "dead", Some(policy(true))).await?;
    dead.crash().await;
    calls(&mut storm, 10, true).await?;
    calls(&mut budgeted, 10, true).await?;
    Ok((storm_attempts.load(Ordering::SeqCst), budgeted_attempts.load(Ordering::SeqCst)))
}

/// 4 charges (not idempotent), then 4 reads (idempotent), through the retry layer, to a node
/// that does the work of every attempt but loses the reply of every 2nd.
pub async fn lossy_node(registry: &Arc<dyn Registry>) -> anyhow::Result<[Outcome; 2]> {
    let lossy = Flaky::new(2, true);
    let done = lossy.done.clone();
    let node = serve(registry, "retry-lossy", "lossy", lossy).await?;
    let (mut retrying, attempts) =
        client_of(registry, "retry-lossy", "lossy", Some(policy(true))).await?;
    let mut outcomes = [Outcome::default(), Outcome::default()];
    for (outcome, idempotent) in outcomes.iter_mut().zip([false, true]) {
        let before = (attempts.load(Ordering::SeqCst), done.load(Ordering::SeqCst));
        outcome.ok = calls(&mut retrying, 4, idempotent).await?;
        outcome.attempts = attempts.load(Ordering::SeqCst) - before.0;
        outcome.done = done.load(Ordering::SeqCst) - before.1;
    }
    node.stop().await?;
    Ok(outcomes)
}
