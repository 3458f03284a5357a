//! The memory backend's stand-in for what the NATS server and async-nats's `service` module
//! do for the transport example: subjects, queue groups, request/reply with "no responders",
//! and one service instance answering the `$SRV` discovery subjects and keeping its counts.
//!
//! It matches subjects exactly (no wildcards) and gives a queue group's members the work in
//! turn, where the NATS server picks one at random; what the example prints is the same.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use microkit::PATIENCE;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::bus::{
    CallError, ERROR_CODE_HEADER, ERROR_HEADER, EndpointInfo, EndpointStats, Info, Ping,
    QUEUE_GROUP, Stats,
};
use super::service::Refusal;

/// A message on the memory bus.
#[derive(Clone, Debug)]
pub struct Envelope {
    pub subject: String,
    pub reply: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub payload: Bytes,
}

impl Envelope {
    pub fn new(subject: &str, reply: Option<String>, payload: Bytes) -> Self {
        Envelope { subject: subject.to_owned(), reply, headers: BTreeMap::new(), payload }
    }
}

/// Subjects, queue groups and request/reply inside this process.
#[derive(Clone, Default)]
pub struct MemoryBus {
    shared: Arc<Mutex<Subjects>>,
    ids: Arc<AtomicU64>,
}

#[derive(Default)]
struct Subjects {
    by_subject: HashMap<String, Vec<Member>>,
    /// Turns taken per queue group, so members share the work in turn.
    turns: HashMap<(String, String), usize>,
}

struct Member {
    id: u64,
    queue: Option<String>,
    tx: mpsc::UnboundedSender<Envelope>,
}

/// A subscription; dropping it unsubscribes.
pub struct MemorySubscription {
    pub subject: String,
    id: u64,
    rx: mpsc::UnboundedReceiver<Envelope>,
    bus: MemoryBus,
}

impl MemorySubscription {
    pub async fn next(&mut self) -> Option<Envelope> {
        self.rx.recv().await
    }

    /// Unsubscribes: nothing new arrives, what already did can still be read, then `next`
    /// gives `None`.
    pub fn unsubscribe(&mut self) {
        let mut subjects = self.bus.shared.lock().unwrap();
        if let Some(members) = subjects.by_subject.get_mut(&self.subject) {
            members.retain(|member| member.id != self.id);
        }
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        self.unsubscribe();
    }
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn inbox(&self) -> String {
        format!("_INBOX.{}", self.ids.fetch_add(1, Ordering::Relaxed))
    }

    pub fn subscribe(&self, subject: &str, queue: Option<&str>) -> MemorySubscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let member = Member { id, queue: queue.map(str::to_owned), tx };
        self.shared.lock().unwrap().by_subject.entry(subject.to_owned()).or_default().push(member);
        MemorySubscription { subject: subject.to_owned(), id, rx, bus: self.clone() }
    }

    /// Delivers to every plain subscriber and to one member of each queue group; returns
    /// how many got it.
    pub fn publish(&self, message: Envelope) -> usize {
        let mut subjects = self.shared.lock().unwrap();
        let Subjects { by_subject, turns } = &mut *subjects;
        let Some(members) = by_subject.get(&message.subject) else { return 0 };
        let mut groups: BTreeMap<&str, Vec<&Member>> = BTreeMap::new();
        let mut delivered = 0;
        for member in members {
            match &member.queue {
                Some(queue) => groups.entry(queue).or_default().push(member),
                None => delivered += usize::from(member.tx.send(message.clone()).is_ok()),
            }
        }
        for (queue, group) in groups {
            let turn = turns.entry((message.subject.clone(), queue.to_owned())).or_default();
            *turn = turn.wrapping_add(1);
            let chosen = group[*turn % group.len()];
            delivered += usize::from(chosen.tx.send(message.clone()).is_ok());
        }
        delivered
    }

    /// Request/reply: a private inbox for the answer, and no waiting when nobody listens.
    pub async fn request(&self, subject: &str, payload: Bytes) -> Result<Envelope, CallError> {
        let mut inbox = self.subscribe(&self.inbox(), None);
        let message = Envelope::new(subject, Some(inbox.subject.clone()), payload);
        if self.publish(message) == 0 {
            return Err(CallError::NoResponders);
        }
        match tokio::time::timeout(PATIENCE, inbox.next()).await {
            Ok(Some(reply)) => Ok(reply),
            _ => Err(CallError::TimedOut),
        }
    }

    /// Answers `message` on its reply subject, if it has one.
    pub fn respond(&self, message: &Envelope, headers: BTreeMap<String, String>, payload: Bytes) {
        if let Some(reply) = &message.reply {
            self.publish(Envelope { headers, ..Envelope::new(reply, None, payload) });
        }
    }
}

/// The stand-in for one instance of async-nats's `Service`: it answers `$SRV.PING`, `INFO`
/// and `STATS` (for all services, for its name, and for its id) and keeps the endpoint
/// counts, as the library does for the real one.
pub struct MemoryService {
    bus: MemoryBus,
    stats: Arc<Mutex<Vec<EndpointStats>>>,
    verbs: Vec<tokio::task::JoinHandle<()>>,
}

impl MemoryService {
    pub fn start(
        bus: &MemoryBus,
        name: &str,
        version: &str,
        metadata: BTreeMap<String, String>,
    ) -> Self {
        let id = format!("memory{}", bus.ids.fetch_add(1, Ordering::Relaxed));
        let stats = Arc::new(Mutex::new(Vec::<EndpointStats>::new()));
        let mut verbs = Vec::new();
        for verb in ["PING", "INFO", "STATS"] {
            for subject in [
                format!("$SRV.{verb}"),
                format!("$SRV.{verb}.{name}"),
                format!("$SRV.{verb}.{name}.{id}"),
            ] {
                let mut requests = bus.subscribe(&subject, None);
                let (bus, stats, metadata) = (bus.clone(), stats.clone(), metadata.clone());
                let (name, id, version) = (name.to_owned(), id.clone(), version.to_owned());
                verbs.push(tokio::spawn(async move {
                    while let Some(request) = requests.next().await {
                        let endpoints = stats.lock().unwrap().clone();
                        let kind = |what| format!("io.nats.micro.v1.{what}_response");
                        let (name, id, version) = (name.clone(), id.clone(), version.clone());
                        let answer = match verb {
                            "PING" => serde_json::to_vec(&Ping {
                                kind: kind("ping"),
                                metadata: Some(metadata.clone()),
                                name,
                                id,
                                version,
                            }),
                            "INFO" => serde_json::to_vec(&Info {
                                kind: kind("info"),
                                description: None,
                                metadata: Some(metadata.clone()),
                                endpoints: endpoints
                                    .iter()
                                    .map(|e| EndpointInfo {
                                        name: e.name.clone(),
                                        subject: e.subject.clone(),
                                        queue_group: QUEUE_GROUP.into(),
                                    })
                                    .collect(),
                                name,
                                id,
                                version,
                            }),
                            _ => serde_json::to_vec(&Stats {
                                kind: kind("stats"),
                                name,
                                id,
                                version,
                                endpoints,
                            }),
                        };
                        let answer = answer.expect("plain structs serialize");
                        bus.respond(&request, BTreeMap::new(), answer.into());
                    }
                }));
            }
        }
        MemoryService { bus: bus.clone(), stats, verbs }
    }

    /// An endpoint: `group.name`, in the queue group every instance of the service joins.
    pub fn endpoint(&self, group: &str, name: &str) -> MemoryEndpoint {
        let subject = format!("{group}.{name}");
        let requests = self.bus.subscribe(&subject, Some(QUEUE_GROUP));
        let mut stats = self.stats.lock().unwrap();
        stats.push(EndpointStats { name: name.into(), subject, ..EndpointStats::default() });
        MemoryEndpoint { requests, index: stats.len() - 1, stats: self.stats.clone() }
    }

    /// Stops answering discovery; the endpoints stop when dropped.
    pub fn stop(self) {
        for verb in &self.verbs {
            verb.abort();
        }
    }
}

/// One endpoint of a [`MemoryService`]: its requests, and the answer that counts them.
pub struct MemoryEndpoint {
    requests: MemorySubscription,
    index: usize,
    stats: Arc<Mutex<Vec<EndpointStats>>>,
}

impl MemoryEndpoint {
    pub async fn next(&mut self) -> Option<Envelope> {
        self.requests.next().await
    }

    /// Leaves the queue group; the requests already delivered stay to be read.
    pub fn stop(&mut self) {
        self.requests.unsubscribe();
    }

    /// Answers as async-nats's `Request::respond` does: a reply, or an empty payload with
    /// the error headers; both counted as requests, the second as an error too. False when
    /// the request has no reply subject, so there is nobody to answer.
    pub fn respond(&self, request: &Envelope, result: Result<Bytes, Refusal>) -> bool {
        if request.reply.is_none() {
            tracing::warn!(subject = %request.subject, "a request with no reply subject");
            return false;
        }
        let mut headers = BTreeMap::new();
        let payload = match result {
            Ok(payload) => payload,
            Err(refusal) => {
                headers.insert(ERROR_HEADER.to_owned(), refusal.reason);
                headers.insert(ERROR_CODE_HEADER.to_owned(), refusal.code.to_string());
                Bytes::new()
            }
        };
        {
            let mut stats = self.stats.lock().unwrap();
            let endpoint = &mut stats[self.index];
            endpoint.num_requests += 1;
            endpoint.num_errors += u64::from(!headers.is_empty());
        }
        self.requests.bus.respond(request, headers, payload);
        true
    }
}

/// One instance, as `serve_over_nats` runs it on NATS: the endpoint loop until stopped, the
/// handler behind it, the number of calls served at the end.
pub fn serve(
    bus: &MemoryBus,
    name: &str,
    version: &str,
    endpoint: &str,
    metadata: BTreeMap<String, String>,
    stopping: CancellationToken,
    handler: impl Fn(&[u8]) -> Result<Bytes, Refusal> + Send + 'static,
) -> JoinHandle<anyhow::Result<u64>> {
    let service = MemoryService::start(bus, name, version, metadata);
    let mut endpoint = service.endpoint(name, endpoint);
    tokio::spawn(async move {
        let mut served = 0;
        while let Some(request) = tokio::select! {
            request = endpoint.next() => request,
            () = stopping.cancelled() => None,
        } {
            served += u64::from(endpoint.respond(&request, handler(&request.payload)));
        }
        // As on NATS: nothing new, then an answer for each request already delivered.
        endpoint.stop();
        while let Some(request) = endpoint.next().await {
            served += u64::from(endpoint.respond(&request, handler(&request.payload)));
        }
        service.stop();
        Ok(served)
    })
}
