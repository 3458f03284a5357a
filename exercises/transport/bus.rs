//! The message bus a NATS service lives on, seen from a client: a request (one answer, from
//! whichever instance the queue group picks, or "no responders"), a scatter-gather (every
//! instance answers), and the JSON the `$SRV` discovery subjects answer with. On the memory
//! backend the same calls go to the stand-in in `memory.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use microkit::PATIENCE;
use microkit_backend::Backend;
use serde::{Deserialize, Serialize};

use super::memory::{Envelope, MemoryBus};

/// The headers of an error reply, as the NATS service protocol names them.
pub const ERROR_HEADER: &str = "Nats-Service-Error";
pub const ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";
/// The queue group every endpoint joins unless told otherwise (the protocol's default).
pub const QUEUE_GROUP: &str = "q";
/// Scatter-gather has no "last answer": it stops once the bus is quiet this long.
pub const GATHER_QUIET: Duration = Duration::from_millis(50);

/// What a request got back.
#[derive(Debug)]
pub enum Answer {
    Reply(Bytes),
    /// The service answered with the protocol's error headers.
    ServiceError {
        code: String,
        description: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nobody listens on the subject: the NATS server says so at once (status 503).
    #[error("no responders")]
    NoResponders,
    #[error("no reply within {PATIENCE:?}")]
    TimedOut,
    #[error("{0}")]
    Failed(String),
}

/// A client of the bus: real NATS, or the memory stand-in.
#[derive(Clone)]
pub enum Bus {
    Nats(async_nats::Client),
    Memory(MemoryBus),
}

impl Bus {
    /// A new client of the backend's bus: on NATS its own connection, as a separate process
    /// would have; in memory, a handle on the one bus this process shares.
    pub async fn connect(backend: &Backend, memory: &MemoryBus) -> anyhow::Result<Bus> {
        Ok(match backend {
            Backend::Nats { url, .. } => {
                Bus::Nats(microkit_backend::connect(url, Default::default()).await?)
            }
            Backend::Memory { .. } => Bus::Memory(memory.clone()),
        })
    }

    /// One request, one answer, from whichever instance the queue group picks.
    pub async fn request(&self, subject: &str, payload: Bytes) -> Result<Answer, CallError> {
        let (headers, payload) = match self {
            Bus::Nats(client) => {
                let request = client.request(subject.to_owned(), payload);
                let message = tokio::time::timeout(PATIENCE, request)
                    .await
                    .map_err(|_| CallError::TimedOut)?
                    .map_err(|error| match error.kind() {
                        async_nats::RequestErrorKind::NoResponders => CallError::NoResponders,
                        async_nats::RequestErrorKind::TimedOut => CallError::TimedOut,
                        _ => CallError::Failed(error.to_string()),
                    })?;
                let header = |name| {
                    let headers = message.headers.as_ref()?;
                    Some(headers.get(name)?.as_str().to_owned())
                };
                let headers = [ERROR_HEADER, ERROR_CODE_HEADER].map(header);
                (headers, message.payload)
            }
            Bus::Memory(bus) => {
                let message = bus.request(subject, payload).await?;
                let headers = [ERROR_HEADER, ERROR_CODE_HEADER]
                    .map(|name| message.headers.get(name).cloned());
                (headers, message.payload)
            }
        };
        Ok(match headers {
            [Some(description), code] => {
                Answer::ServiceError { code: code.unwrap_or_default(), description }
            }
            _ => Answer::Reply(payload),
        })
    }

    /// Scatter-gather: one request to a discovery subject, every answer until the bus is
    /// quiet for [`GATHER_QUIET`] (or `PATIENCE` in all).
    pub async fn gather(&self, subject: &str) -> anyhow::Result<Vec<Bytes>> {
        let mut answers = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        match self {
            Bus::Nats(client) => {
                let inbox = client.new_inbox();
                let mut replies = client.subscribe(inbox.clone()).await?;
                client.publish_with_reply(subject.to_owned(), inbox, Bytes::new()).await?;
                client.flush().await?;
                while let Some(Some(reply)) = quiet_next(deadline, replies.next()).await {
                    answers.push(reply.payload);
                }
            }
            Bus::Memory(bus) => {
                let mut replies = bus.subscribe(&bus.inbox(), None);
                let message = Envelope::new(subject, Some(replies.subject.clone()), Bytes::new());
                bus.publish(message);
                while let Some(Some(reply)) = quiet_next(deadline, replies.next()).await {
                    answers.push(reply.payload);
                }
            }
        }
        Ok(answers)
    }
}

/// The next item, or `None` once nothing came for [`GATHER_QUIET`] or the deadline passed.
async fn quiet_next<T>(deadline: tokio::time::Instant, next: impl Future<Output = T>) -> Option<T> {
    let quiet = (tokio::time::Instant::now() + GATHER_QUIET).min(deadline);
    tokio::time::timeout_at(quiet, next).await.ok()
}

// ---- What the discovery subjects answer (the protocol's JSON, the fields we use) ----
//
// Only the fields read here are required. `type` is written, as the protocol's v1 does, but
// not required: the protocol's preview (nats.go 1.22, as Debian ships it) answers without it.

/// `$SRV.PING` answers who is there.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ping {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub name: String,
    pub id: String,
    pub version: String,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// `$SRV.INFO` adds the endpoints.
#[derive(Debug, Serialize, Deserialize)]
pub struct Info {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub name: String,
    pub id: String,
    pub version: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    pub endpoints: Vec<EndpointInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndpointInfo {
    pub name: String,
    pub subject: String,
    #[serde(default)]
    pub queue_group: String,
}

/// `$SRV.STATS` counts per endpoint, kept by the service library, not by the handler.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stats {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub name: String,
    pub id: String,
    pub version: String,
    pub endpoints: Vec<EndpointStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EndpointStats {
    pub name: String,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub num_requests: u64,
    #[serde(default)]
    pub num_errors: u64,
}

/// The node an instance names in its metadata, else its id.
pub fn node_of(ping: &Ping) -> String {
    ping.metadata.as_ref().and_then(|m| m.get("node").cloned()).unwrap_or_else(|| ping.id.clone())
}

/// Discovery answers, parsed. Anyone on the bus may answer a discovery subject, so one answer
/// that cannot be read is skipped with a warning, not allowed to hide the others.
pub fn parse_all<T: serde::de::DeserializeOwned>(answers: Vec<Bytes>) -> Vec<T> {
    let parse = |answer: &Bytes| match serde_json::from_slice(answer) {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            let shown = String::from_utf8_lossy(&answer[..answer.len().min(200)]).into_owned();
            tracing::warn!("skipped an odd discovery answer ({error}): {shown}");
            None
        }
    };
    answers.iter().filter_map(parse).collect()
}

/// Waits until the NATS server has read everything this client sent before (an
/// unsubscribe, above all). `flush` only writes; a request to a subject nobody listens on
/// is answered by the server itself, in order, so once "no responders" is back, no call can
/// reach a subscription this client has just dropped.
pub async fn round_trip(client: &async_nats::Client) -> anyhow::Result<()> {
    let probe = client.request(client.new_inbox(), Bytes::new());
    match tokio::time::timeout(PATIENCE, probe).await {
        Ok(Err(error)) if error.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
        other => anyhow::bail!("no round trip to the NATS server: {other:?}"),
    }
}
