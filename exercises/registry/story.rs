//! The default run: two nodes of one service under a short lease, a watcher, a graceful
//! leave and a crash, then everything the watcher saw, in order.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use futures::stream::BoxStream;
use microkit::PATIENCE;
use registry::{Change, Node, Registration, Registry};
use tokio::time::Instant;

/// The service both nodes serve.
const SERVICE: &str = "greeter";

/// The nodes' lease. This short only to keep the run under a second (it waits out a lease
/// and a half, then a crashed node's lease); a real node takes seconds, so that a slow
/// heartbeat does not cost it its place.
pub const TTL: Duration = Duration::from_millis(300);

/// How long the run watches two heartbeating nodes: longer than a lease, so without their
/// heartbeats both would have expired by then.
const QUIET: Duration = Duration::from_millis(TTL.as_millis() as u64 * 3 / 2);

/// What the run observed: printed as it happens, and returned for the tests to check.
#[derive(Debug)]
#[cfg_attr(not(test), expect(dead_code, reason = "only the tests read it back"))]
pub struct Seen {
    /// Every change the watcher reported, in order.
    pub changes: Vec<Change>,
    /// The nodes listed after [`QUIET`], a lease and a half.
    pub listed_after_quiet: Vec<String>,
    /// From greeter-1's deregistration to the watcher seeing it leave.
    pub graceful_leave_seen_after: Duration,
    /// The nodes listed just after greeter-2 crashed.
    pub listed_after_crash: Vec<String>,
    /// From greeter-2's crash to the watcher seeing it leave.
    pub crash_seen_after: Duration,
    /// The nodes listed at the end.
    pub listed_at_end: Vec<String>,
}

/// The run: register, watch, wait out a lease, leave gracefully, crash.
pub async fn tell(registry: Arc<dyn Registry>) -> anyhow::Result<Seen> {
    // Addresses from TEST-NET-1 (RFC 5737): the registry stores them, nothing calls them.
    let first = Node::new(SERVICE, "greeter-1", "192.0.2.1:50051");
    let second = Node::new(SERVICE, "greeter-2", "192.0.2.2:50051");
    let graceful = Registration::start(registry.clone(), first, TTL).await?;
    let crashing = Registration::start(registry.clone(), second, TTL).await?;
    println!(
        "greeter-1 and greeter-2 register with a {TTL:?} lease, renewed by a heartbeat every {:?}",
        TTL / 3
    );

    let mut watcher = Watcher { changes: registry.watch(SERVICE).await?, seen: Vec::new() };
    let opening = [watcher.next().await?, watcher.next().await?];
    println!("a watcher starts; it opens with the nodes listed now: {}", joined(&opening)?);

    // Nothing should happen: the heartbeats renew both leases before they run out.
    if let Ok(change) = tokio::time::timeout(QUIET, watcher.changes.next()).await {
        bail!("the watcher saw {change:?} while both nodes were beating");
    }
    let listed_after_quiet = ids(&registry).await?;
    println!(
        "{QUIET:?} later, a lease and a half: no change seen; listed: {}",
        listing(&listed_after_quiet)
    );

    println!("greeter-1 stops gracefully: it deregisters");
    let stopped = Instant::now();
    graceful.deregister().await?;
    let change = watcher.next().await?;
    let graceful_leave_seen_after = stopped.elapsed();
    println!("watcher: {}, {}", said(&change), how_soon(graceful_leave_seen_after));

    println!("greeter-2 crashes: its heartbeat stops, and nobody deregisters it");
    let crashed = Instant::now();
    drop(crashing);
    let listed_after_crash = ids(&registry).await?;
    println!("listed: {} (its lease has not run out yet)", listing(&listed_after_crash));
    let change = watcher.next().await?;
    let crash_seen_after = crashed.elapsed();
    println!("watcher: {}, {}", said(&change), how_soon(crash_seen_after));
    let listed_at_end = ids(&registry).await?;
    println!("listed: {}", listing(&listed_at_end));

    let saw: Vec<String> = watcher.seen.iter().map(said).collect();
    println!("the watcher saw, in order: {}", saw.join(", "));
    Ok(Seen {
        changes: watcher.seen,
        listed_after_quiet,
        graceful_leave_seen_after,
        listed_after_crash,
        crash_seen_after,
        listed_at_end,
    })
}

/// A watch, and every change it has reported so far.
struct Watcher {
    changes: BoxStream<'static, Change>,
    seen: Vec<Change>,
}

impl Watcher {
    /// The next change, which should come at once or within a lease: [`PATIENCE`] only turns
    /// a hang into an error.
    async fn next(&mut self) -> anyhow::Result<Change> {
        let change = tokio::time::timeout(PATIENCE, self.changes.next())
            .await
            .with_context(|| format!("no registry change within {PATIENCE:?}"))?
            .context("the registry watch ended")?;
        self.seen.push(change.clone());
        Ok(change)
    }
}

/// How soon a leave was seen, in the only terms that hold on any machine. A node beats
/// every third of its lease, so when it stops its last beat is at most a third old and its
/// lease has at least two thirds left: a leave seen sooner than that was a deregistration,
/// and an expiry comes no sooner than that.
fn how_soon(after: Duration) -> &'static str {
    if after < TTL * 2 / 3 {
        "at once, sooner than any lease runs out"
    } else {
        "when its lease ran out"
    }
}

/// `greeter-1 joined` or `greeter-2 left`.
fn said(change: &Change) -> String {
    match change {
        Change::Joined(node) => format!("{} joined", node.id),
        Change::Left { id, .. } => format!("{id} left"),
    }
}

/// The ids of changes that must all be joins.
fn joined(changes: &[Change]) -> anyhow::Result<String> {
    let mut ids = Vec::new();
    for change in changes {
        match change {
            Change::Joined(node) => ids.push(node.id.as_str()),
            Change::Left { id, .. } => bail!("the watch opened with {id} leaving"),
        }
    }
    Ok(ids.join(", "))
}

async fn ids(registry: &Arc<dyn Registry>) -> anyhow::Result<Vec<String>> {
    Ok(registry.nodes(SERVICE).await?.into_iter().map(|node| node.id).collect())
}

fn listing(ids: &[String]) -> String {
    if ids.is_empty() { "none".to_owned() } else { ids.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry::MemoryRegistry;

    fn left(id: &str) -> Change {
        Change::Left { service: SERVICE.into(), id: id.into() }
    }

    /// On a paused clock the timings are exact: greeter-2 beat last at 400 ms, crashed at
    /// 450 ms, and left one lease after its last beat, 250 ms after the crash.
    #[tokio::test(start_paused = true)]
    async fn a_beating_node_stays_a_deregistered_one_leaves_at_once_a_crashed_one_expires() {
        let seen = tell(Arc::new(MemoryRegistry::new())).await.unwrap();
        let ids: Vec<String> = seen.changes.iter().map(said).collect();
        assert_eq!(
            ids,
            ["greeter-1 joined", "greeter-2 joined", "greeter-1 left", "greeter-2 left"]
        );
        assert_eq!(seen.changes[3], left("greeter-2"));
        assert_eq!(seen.listed_after_quiet, ["greeter-1", "greeter-2"], "kept by heartbeats");
        assert_eq!(seen.graceful_leave_seen_after, Duration::ZERO);
        assert_eq!(seen.listed_after_crash, ["greeter-2"], "listed until its lease runs out");
        assert_eq!(seen.crash_seen_after, Duration::from_millis(250));
        assert!(seen.listed_at_end.is_empty());
    }

    #[test]
    fn a_leave_sooner_than_two_thirds_of_a_lease_was_a_deregistration() {
        assert_eq!(
            how_soon(TTL * 2 / 3 - Duration::from_millis(1)),
            "at once, sooner than any lease runs out"
        );
        assert_eq!(how_soon(TTL * 2 / 3), "when its lease ran out");
    }
}
