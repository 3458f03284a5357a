//! Service discovery across processes and machines: the [`Registry`] on NATS JetStream.
//!
//! The registry is a JetStream key-value bucket (`micro_registry` by default):
//!
//! - **one key per node**, `<service>.<id>` (characters NATS keys do not allow are escaped
//!   as `=XX`), whose value is our JSON: the [`Node`] and its TTL;
//! - **register** puts the key, and every heartbeat of a [`Registration`] puts it again;
//! - **deregister** deletes the key (a graceful stop: watchers hear of it at once);
//! - **watch** follows the keys of one service with a KV watch: the nodes listed now first
//!   (sorted by id), then each change as it is written.
//!
//! ## How a crashed node expires
//!
//! A crashed node stops putting its key, and nothing deletes it. NATS 2.11 could expire the
//! key by itself (per-message TTL) and tell watchers with a delete marker, but 2.9, the
//! version Debian ships, can do neither: an old key simply stays. So expiry is decided by
//! the readers, from what each entry carries:
//!
//! - each value holds the node's TTL, and the server stamps each write with its time;
//! - [`Registry::nodes`] leaves out an entry older than its TTL;
//! - each watcher keeps a deadline per node (write time + TTL), pushed back by every
//!   heartbeat; when a deadline passes it reads the key itself (its watch may be the one
//!   that went quiet, e.g. while it resubscribes after a NATS node died) and reports
//!   [`Change::Left`] only if the bucket agrees the heartbeat stopped;
//! - and every second each watcher compares its view with the bucket: a KV watch can
//!   stall silently while it resubscribes after a NATS node died, and this catches up.
//!
//! This needs the clocks of the NATS server and of the readers to agree to well within a
//! TTL (NTP does that; on one machine it is a given). The bucket's own `max_age` only
//! sweeps keys no heartbeat touched for an hour, so the stream does not keep dead nodes
//! forever.
//!
//! Bad entries in the bucket (not our JSON, or a key that does not match its value) are
//! skipped with a warning: one bad writer must not blind every client.
//!
//! [`Registration`]: crate::Registration

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::{Change, Node, Registry, RegistryError};

/// The bucket every example shares, so a client finds the servers of another process.
pub const DEFAULT_BUCKET: &str = "micro_registry";

/// How long the bucket keeps a key nobody rewrote. Only a sweep for crashed nodes: the
/// TTLs that matter are the nodes' own, checked by readers.
const SWEEP_AFTER: Duration = Duration::from_secs(3600);

/// The longest TTL a node may ask for: its heartbeats (every third of it) must come well
/// before the sweep.
pub const MAX_TTL: Duration = Duration::from_secs(600);

/// How often a watcher compares its view with the bucket, in case its watch stalled.
const RESYNC: Duration = Duration::from_secs(1);

/// When a watcher could not check a node whose deadline passed, it asks again after this.
const RECHECK: Duration = Duration::from_millis(250);

/// What one key holds.
#[derive(Serialize, Deserialize)]
struct Record {
    node: Node,
    ttl_ms: u64,
}

/// The NATS registry. Cheap to create: the bucket is opened (or created) on first use.
#[derive(Clone)]
pub struct NatsRegistry {
    jetstream: jetstream::Context,
    bucket: String,
    replicas: usize,
    store: Arc<OnceCell<kv::Store>>,
}

impl NatsRegistry {
    /// A registry in the [`DEFAULT_BUCKET`], one replica.
    pub fn new(client: async_nats::Client) -> Self {
        NatsRegistry {
            jetstream: jetstream::new(client),
            bucket: DEFAULT_BUCKET.to_owned(),
            replicas: 1,
            store: Arc::default(),
        }
    }

    /// Keeps the bucket on `replicas` servers of a cluster (3 survives the loss of one).
    /// Applies when this registry creates the bucket; an existing bucket is used as it is.
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Opens the bucket, creating it if this is the first registry to use it.
    async fn store(&self) -> Result<&kv::Store, RegistryError> {
        self.store
            .get_or_try_init(|| async {
                if let Ok(store) = self.jetstream.get_key_value(&self.bucket).await {
                    return Ok(store);
                }
                // A key-value bucket is a stream with these settings (NATS ADR-8). We create
                // the stream ourselves: async-nats 0.51's `create_key_value` first reads
                // account fields nats-server 2.9 does not send, and fails there.
                let config = jetstream::stream::Config {
                    name: format!("KV_{}", self.bucket),
                    description: Some("service discovery: one key per node".to_owned()),
                    subjects: vec![format!("$KV.{}.>", self.bucket)],
                    max_messages_per_subject: 1, // a key's latest value is all we need
                    max_age: SWEEP_AFTER,
                    num_replicas: self.replicas,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: jetstream::stream::DiscardPolicy::New,
                    ..Default::default()
                };
                let created = self.jetstream.get_or_create_stream(config).await;
                if let Err(e) = created {
                    return Err(RegistryError::backend(
                        format!("creating bucket {}", self.bucket),
                        e,
                    ));
                }
                self.jetstream.get_key_value(&self.bucket).await.map_err(|e| {
                    RegistryError::backend(format!("opening bucket {}", self.bucket), e)
                })
            })
            .await
    }
}

#[async_trait]
impl Registry for NatsRegistry {
    async fn register(&self, node: &Node, ttl: Duration) -> Result<(), RegistryError> {
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(RegistryError::refused(format!(
                "a TTL must be between 1 ms and {MAX_TTL:?}, not {ttl:?}"
            )));
        }
        let record = Record { node: node.clone(), ttl_ms: ttl.as_millis() as u64 };
        let value = serde_json::to_vec(&record).map_err(to_backend)?;
        let key = node_key(&node.service, &node.id);
        self.store().await?.put(&key, value.into()).await.map_err(to_backend)?;
        Ok(())
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<(), RegistryError> {
        let key = node_key(service, id);
        self.store().await?.delete(&key).await.map_err(to_backend)
    }

    async fn nodes(&self, service: &str) -> Result<Vec<Node>, RegistryError> {
        let live = live_nodes(self.store().await?, service).await?;
        let mut nodes: Vec<Node> = live.into_iter().map(|(node, _)| node).collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    async fn watch(&self, service: &str) -> Result<BoxStream<'static, Change>, RegistryError> {
        let store = self.store().await?;
        // The last value of every key of the service first, then each write as it happens.
        let keys = format!("{}.*", escape(service));
        let updates = store.watch_with_history(&keys).await.map_err(to_backend)?;
        // The watch replays the nodes in the order of their last writes, which heartbeats
        // reshuffle; so the watcher opens with the nodes listed now, sorted by id, as the
        // memory registry does. Read after the watch opened, so a write in between is not
        // missed: the replay of a node already announced is no news.
        let mut current = live_nodes(store, service).await?;
        current.sort_by(|(a, _), (b, _)| a.id.cmp(&b.id));
        let (tx, rx) = mpsc::unbounded_channel();
        let mut live = HashMap::new();
        for (node, remaining) in current {
            let _ = tx.send(Change::Joined(node.clone()));
            live.insert(node.id.clone(), (node, Instant::now() + remaining));
        }
        tokio::spawn(follow(service.to_owned(), store.clone(), keys, Some(updates), live, tx));
        Ok(Box::pin(UnboundedReceiverStream::new(rx)))
    }
}

/// Turns the bucket's writes into joins and leaves, and expires nodes whose heartbeat
/// stopped. Ends when the watcher is dropped.
async fn follow(
    service: String,
    store: kv::Store,
    keys: String,
    mut updates: Option<kv::Watch>,
    // The nodes this watcher has announced, with the moment each expires unless rewritten.
    mut live: HashMap<String, (Node, Instant)>,
    tx: mpsc::UnboundedSender<Change>,
) {
    let left = |id: String| Change::Left { service: service.clone(), id };
    // The watcher has just read the bucket: the first comparison is due a period from now.
    let mut resync = tokio::time::interval_at(Instant::now() + RESYNC, RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next_deadline = live.values().map(|(_, deadline)| *deadline).min();
        let expiry = async {
            match next_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tx.closed() => return,
            () = expiry => {
                let now = Instant::now();
                let due: Vec<String> =
                    live.iter().filter(|(_, (_, d))| *d <= now).map(|(id, _)| id.clone()).collect();
                for id in due {
                    // Our watch may be what went quiet (it resubscribes after a NATS node
                    // dies), not the node. So ask the bucket itself before declaring it gone.
                    match still_alive(&store, &service, &id).await {
                        Ok(Some(remaining)) => {
                            if let Some((_, deadline)) = live.get_mut(&id) {
                                *deadline = Instant::now() + remaining;
                            }
                        }
                        Ok(None) => {
                            live.remove(&id);
                            tracing::info!(%service, %id, "node expired: no heartbeat within its TTL");
                            let _ = tx.send(left(id));
                        }
                        Err(e) => {
                            // Unsure is not gone: keep it and ask again shortly.
                            tracing::debug!(%service, %id, "cannot check an expiring node: {e}");
                            if let Some((_, deadline)) = live.get_mut(&id) {
                                *deadline = Instant::now() + RECHECK;
                            }
                        }
                    }
                }
            }
            _ = resync.tick() => {
                // The safety net: compare with the bucket itself. A watch can stall without
                // a word while it resubscribes after a NATS node died.
                let Ok(listed) = live_nodes(&store, &service).await else { continue };
                let mut missed = false;
                for (node, remaining) in &listed {
                    let deadline = Instant::now() + *remaining;
                    let is_news = live.get(&node.id).is_none_or(|(known, _)| known != node);
                    live.insert(node.id.clone(), (node.clone(), deadline));
                    if is_news {
                        missed = true;
                        let _ = tx.send(Change::Joined(node.clone()));
                    }
                }
                let gone: Vec<String> = live
                    .keys()
                    .filter(|id| !listed.iter().any(|(node, _)| &node.id == *id))
                    .cloned()
                    .collect();
                for id in gone {
                    missed = true;
                    live.remove(&id);
                    let _ = tx.send(left(id));
                }
                if missed {
                    tracing::debug!(%service, "the registry watch missed a change: reopening it");
                    updates = None;
                }
            }
            entry = next_write(&store, &keys, &mut updates) => match entry {
                entry if entry.operation == kv::Operation::Put => {
                    let Some((node, remaining)) = read_entry(&service, &entry) else { continue };
                    if remaining.is_zero() {
                        // An old write of a node that is gone (only seen when catching up).
                        if live.remove(&node.id).is_some() {
                            let _ = tx.send(left(node.id));
                        }
                        continue;
                    }
                    let deadline = Instant::now() + remaining;
                    let is_news = live.get(&node.id).is_none_or(|(known, _)| *known != node);
                    live.insert(node.id.clone(), (node.clone(), deadline));
                    if is_news {
                        let _ = tx.send(Change::Joined(node));
                    }
                }
                entry => {
                    // A delete (graceful deregister) or purge.
                    let id = entry.key.split_once('.').map(|(_, id)| unescape(id));
                    if let Some(id) = id
                        && live.remove(&id).is_some()
                    {
                        let _ = tx.send(left(id));
                    }
                }
            }
        }
    }
}

/// Every live node of `service`, with what is left of its TTL, read from the bucket.
async fn live_nodes(
    store: &kv::Store,
    service: &str,
) -> Result<Vec<(Node, Duration)>, RegistryError> {
    // The keys of this service are the subjects the bucket's stream holds under
    // `$KV.<bucket>.<service>.*`; the stream's info lists them in one request.
    let filter = format!("{}{}.*", store.prefix, escape(service));
    let mut subjects = store.stream.info_with_subjects(filter).await.map_err(to_backend)?;
    let mut keys = Vec::new();
    while let Some(subject) = subjects.next().await {
        let (subject, _count) = subject.map_err(to_backend)?;
        keys.extend(subject.strip_prefix(&store.prefix).map(str::to_owned));
    }
    let mut nodes = Vec::new();
    for key in keys {
        let entry = store.entry(&key).await.map_err(to_backend)?;
        // A deleted key keeps its subject, holding the delete marker: skip it.
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else { continue };
        if let Some((node, remaining)) = read_entry(service, &entry)
            && !remaining.is_zero()
        {
            nodes.push((node, remaining));
        }
    }
    Ok(nodes)
}

/// The next write to `keys`, opening the watch again whenever it fails or ends.
///
/// Reopening replays the latest value of every key: known nodes just get fresh deadlines,
/// so nothing is announced twice and a write missed while the watch was down is caught up.
async fn next_write(store: &kv::Store, keys: &str, updates: &mut Option<kv::Watch>) -> kv::Entry {
    loop {
        let watch = match updates {
            Some(watch) => watch,
            None => match store.watch_with_history(keys).await {
                Ok(watch) => updates.insert(watch),
                Err(e) => {
                    tracing::debug!(%keys, "cannot reopen the registry watch yet: {e}");
                    tokio::time::sleep(RECHECK).await;
                    continue;
                }
            },
        };
        match watch.next().await {
            Some(Ok(entry)) => return entry,
            Some(Err(e)) => tracing::debug!(%keys, "registry watch interrupted, reopening: {e}"),
            None => tracing::debug!(%keys, "registry watch ended, reopening"),
        }
        *updates = None;
    }
}

/// What is left of the TTL of `service`'s node `id`, read from the bucket; `None` when it
/// was deleted or its last heartbeat is older than its TTL.
async fn still_alive(
    store: &kv::Store,
    service: &str,
    id: &str,
) -> Result<Option<Duration>, RegistryError> {
    let entry = store.entry(node_key(service, id)).await.map_err(to_backend)?;
    Ok(entry
        .filter(|entry| entry.operation == kv::Operation::Put)
        .and_then(|entry| read_entry(service, &entry))
        .map(|(_, remaining)| remaining)
        .filter(|remaining| !remaining.is_zero()))
}

/// Our node from a bucket entry, and how much of its TTL is left; `None` (with a warning)
/// for anything that is not what [`NatsRegistry::register`] writes.
fn read_entry(service: &str, entry: &kv::Entry) -> Option<(Node, Duration)> {
    let record: Record = match serde_json::from_slice(&entry.value) {
        Ok(record) => record,
        Err(e) => {
            tracing::warn!(key = %entry.key, "skipping a registry entry that is not a node: {e}");
            return None;
        }
    };
    if record.node.service != service || entry.key != node_key(service, &record.node.id) {
        tracing::warn!(key = %entry.key, "skipping a registry entry whose key does not match its node");
        return None;
    }
    // The server stamped the write; what is left of the TTL is counted from then.
    let written = entry.created.unix_timestamp_nanos();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i128;
    let age = Duration::from_nanos((now - written).clamp(0, u64::MAX as i128) as u64);
    let remaining = Duration::from_millis(record.ttl_ms).saturating_sub(age);
    Some((record.node, remaining))
}

/// `<service>.<id>`, each part escaped so any name makes a valid key of exactly two tokens.
fn node_key(service: &str, id: &str) -> String {
    format!("{}.{}", escape(service), escape(id))
}

/// Keeps `A-Z a-z 0-9 - _`; writes every other byte as `=XX`.
fn escape(name: &str) -> String {
    let mut escaped = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            escaped.push(byte as char);
        } else {
            escaped.push_str(&format!("={byte:02X}"));
        }
    }
    escaped
}

fn unescape(escaped: &str) -> String {
    let mut bytes = Vec::with_capacity(escaped.len());
    let mut rest = escaped.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        let hex = tail.get(..2).and_then(|h| std::str::from_utf8(h).ok());
        match (first, hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'=', Some(byte)) => {
                bytes.push(byte);
                rest = &tail[2..];
            }
            _ => {
                bytes.push(first);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn to_backend(error: impl std::error::Error + Send + Sync + 'static) -> RegistryError {
    RegistryError::backend("a NATS request", error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_escape_into_two_token_keys_and_back() {
        for name in ["greeter", "greeter-1", "a.b", "zoë", "x=y/z", "under_score"] {
            let escaped = escape(name);
            assert!(
                escaped.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)),
                "{escaped}"
            );
            assert_eq!(unescape(&escaped), name);
        }
        assert_eq!(node_key("svc.x", "node.1"), "svc=2Ex.node=2E1");
    }
}
