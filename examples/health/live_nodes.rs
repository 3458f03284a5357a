//! A client's live view of one service's nodes, kept up to date by a registry watch.
//!
//! go-micro's selector asked the registry for the nodes on every request (behind a
//! cache). Here a client watches the registry once and keeps the current list, so picking
//! a node is a lookup in memory; the choosing itself (round robin, hashing...) is each
//! example's lesson and lives in the example.
//!
//! [`LiveNodes::watch_healthy`] also follows each node's health (`grpc.health.v1.Health`
//! `Watch`): the registry says a node exists, health says whether to send it work, so a node
//! reporting NOT_SERVING drops out of the list while it stays listed, and comes back when it
//! serves again.
//!
//! [`Channels`] keeps one gRPC channel per node address, so a client reuses its HTTP/2
//! connections instead of dialling for every call.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use microkit::health::WireStatus;
use registry::{Change, Node, Registry, RegistryError};

/// The nodes of one service as the registry last told us, sorted by id.
pub struct LiveNodes {
    service: String,
    nodes: watch::Receiver<Vec<Node>>,
    follower: tokio::task::JoinHandle<()>,
}

impl LiveNodes {
    /// Starts watching `service` in `registry`.
    pub async fn watch(registry: &Arc<dyn Registry>, service: &str) -> Result<Self, RegistryError> {
        let mut changes = registry.watch(service).await?;
        let (tx, nodes) = watch::channel(Vec::new());
        let follower = tokio::spawn(async move {
            let mut known = BTreeMap::new();
            while let Some(change) = changes.next().await {
                match change {
                    Change::Joined(node) => known.insert(node.id.clone(), node),
                    Change::Left { id, .. } => known.remove(&id),
                };
                tx.send_replace(known.values().cloned().collect());
            }
        });
        Ok(LiveNodes { service: service.to_owned(), nodes, follower })
    }

    /// [`LiveNodes::watch`], returned once it shows every node the registry lists now.
    ///
    /// A watch reports the nodes already registered a moment after it starts: a client
    /// that called at once would find none and fail its first call. This waits (at most
    /// [`microkit::PATIENCE`]) for that first snapshot.
    ///
    /// It waits for the listed nodes to be *present*, not for the list to be exactly them:
    /// the watch runs on while the registry is listed, so a node that joins in between is
    /// shown too, and waiting for the list without it would wait for ever. A listed node
    /// that leaves before the watch shows it is still waited for, and the wait then ends
    /// with an error naming it.
    pub async fn watch_listed(registry: &Arc<dyn Registry>, service: &str) -> anyhow::Result<Self> {
        let live = Self::watch(registry, service).await?;
        let listed: Vec<String> =
            registry.nodes(service).await?.into_iter().map(|n| n.id).collect();
        let mut nodes = live.nodes.clone();
        let present = |shown: &Vec<Node>| listed.iter().all(|id| shown.iter().any(|n| &n.id == id));
        let limit = microkit::PATIENCE;
        match tokio::time::timeout(limit, nodes.wait_for(present)).await {
            Ok(Ok(_)) => Ok(live),
            _ => anyhow::bail!(
                "the registry did not show nodes {listed:?} of {service} within {limit:?} \
                 (it shows {:?})",
                live.current().iter().map(|n| n.id.clone()).collect::<Vec<_>>()
            ),
        }
    }

    /// Starts watching `service` in `registry`, and the health of each of its nodes: the
    /// list holds the nodes that are registered *and* report SERVING (or serve no health
    /// service at all, which gRPC's health checking counts as healthy).
    ///
    /// A node's Watch stream that breaks (a crash, a network fault) keeps the last status:
    /// not knowing is not NOT_SERVING. A call to it fails and the caller tries elsewhere,
    /// until the registry's TTL removes it.
    pub async fn watch_healthy(
        registry: &Arc<dyn Registry>,
        service: &str,
    ) -> Result<Self, RegistryError> {
        let mut changes = registry.watch(service).await?;
        let (tx, nodes) = watch::channel(Vec::new());
        let follower = tokio::spawn(async move {
            let mut known: BTreeMap<String, (Node, Option<bool>)> = BTreeMap::new();
            let mut watchers: HashMap<String, HealthWatcher> = HashMap::new();
            // (node id, watcher generation, serving): a late report of a node that left,
            // or of an earlier registration of the same id, is told apart and dropped.
            let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
            let mut generation = 0u64;
            loop {
                tokio::select! {
                    change = changes.next() => match change {
                        None => break,
                        Some(Change::Joined(node)) => {
                            let same = known.get(&node.id).is_some_and(|(n, _)| n.address == node.address);
                            if !same {
                                generation += 1;
                                let watcher = HealthWatcher::start(&node, generation, report.clone());
                                watchers.insert(node.id.clone(), watcher);
                                known.insert(node.id.clone(), (node, None));
                            }
                        }
                        Some(Change::Left { id, .. }) => {
                            known.remove(&id);
                            watchers.remove(&id);
                        }
                    },
                    Some((id, generation, serving)) = reports.recv() => {
                        let current = watchers.get(&id).is_some_and(|w| w.generation == generation);
                        if let (true, Some((_, status))) = (current, known.get_mut(&id)) {
                            *status = Some(serving);
                        }
                    }
                }
                // exercise begins: keep only the nodes whose health watch last said SERVING
                let healthy = known.values().filter(|(_, s)| *s == Some(true));
                // exercise ends
                let healthy: Vec<Node> = healthy.map(|(n, _)| n.clone()).collect();
                tx.send_if_modified(|nodes| {
                    let changed = *nodes != healthy;
                    *nodes = healthy;
                    changed
                });
            }
        });
        Ok(LiveNodes { service: service.to_owned(), nodes, follower })
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// The nodes right now.
    pub fn current(&self) -> Vec<Node> {
        self.nodes.borrow().clone()
    }

    /// Follows the list as it changes.
    pub fn subscribe(&self) -> watch::Receiver<Vec<Node>> {
        self.nodes.clone()
    }

    /// True (once) after the list changed since the last call.
    pub fn has_changed(&mut self) -> bool {
        let changed = self.nodes.has_changed().unwrap_or(false);
        self.nodes.mark_unchanged();
        changed
    }

    /// Waits until the node ids are exactly `ids` (in id order), or fails after `limit`.
    pub async fn wait_for_ids(&self, ids: &[&str], limit: Duration) -> anyhow::Result<()> {
        let mut nodes = self.nodes.clone();
        let wanted = |list: &Vec<Node>| list.iter().map(|n| n.id.as_str()).eq(ids.iter().copied());
        match tokio::time::timeout(limit, nodes.wait_for(wanted)).await {
            Ok(Ok(_)) => Ok(()),
            _ => anyhow::bail!(
                "the registry did not show nodes {ids:?} of {} within {limit:?} (it shows {:?})",
                self.service,
                self.current().iter().map(|n| n.id.clone()).collect::<Vec<_>>()
            ),
        }
    }
}

impl Drop for LiveNodes {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// Follows one node's health until dropped, reporting each status it learns.
struct HealthWatcher {
    generation: u64,
    task: tokio::task::JoinHandle<()>,
}

type Report = tokio::sync::mpsc::UnboundedSender<(String, u64, bool)>;

impl HealthWatcher {
    fn start(node: &Node, generation: u64, report: Report) -> Self {
        let (id, address) = (node.id.clone(), node.address.clone());
        let task = tokio::spawn(async move {
            let Ok(endpoint) = Endpoint::from_shared(format!("http://{address}")) else {
                let _ = report.send((id, generation, false));
                return;
            };
            let channel = endpoint.connect_timeout(Duration::from_secs(2)).connect_lazy();
            loop {
                match microkit::health::watch(channel.clone(), "").await {
                    Ok(mut statuses) => {
                        while let Some(Ok(status)) = statuses.next().await {
                            let serving = status == WireStatus::Serving;
                            let _ = report.send((id.clone(), generation, serving));
                        }
                    }
                    // No health service: gRPC's health checking then counts it healthy.
                    Err(status) if status.code() == tonic::Code::Unimplemented => {
                        let _ = report.send((id, generation, true));
                        return;
                    }
                    Err(_) => {}
                }
                // The stream broke or never opened: try again while the node is listed
                // (the follower drops this watcher when it leaves). A pause, not a pace.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        HealthWatcher { generation, task }
    }
}

impl Drop for HealthWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long a node may stay silent during a call before [`Channels`] gives it up: a ping
/// after half of it without a frame from the node, and half of it for the answer. A live
/// node answers a ping at once, however long its handler works.
const PEER_SILENCE: Duration = Duration::from_secs(5);

/// One lazily connected channel per node address.
#[derive(Clone, Default)]
pub struct Channels {
    by_address: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Channels {
    /// The channel to `node`, created on first use. It connects on the first call and
    /// reconnects by itself; a call to a dead node fails fast with `Unavailable`.
    ///
    /// How long a call may take is its own deadline (`Request::set_timeout`, sent as
    /// `grpc-timeout`), never a cap of the channel's: tonic would apply the shorter of the
    /// two while the header still told every hop the longer one, and report its own timer
    /// as `Cancelled`. A node that vanishes mid-call (a host cut off) is found by HTTP/2
    /// keepalive instead: no answer to a ping within 5 s of silence fails the call.
    pub fn to(&self, node: &Node) -> Result<Channel, tonic::Status> {
        let mut channels = self.by_address.lock().unwrap();
        if let Some(channel) = channels.get(&node.address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", node.address))
            .map_err(|e| {
                tonic::Status::invalid_argument(format!("bad address {}: {e}", node.address))
            })?
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(PEER_SILENCE / 2)
            .keep_alive_timeout(PEER_SILENCE / 2);
        let channel = endpoint.connect_lazy();
        channels.insert(node.address.clone(), channel.clone());
        Ok(channel)
    }
}
