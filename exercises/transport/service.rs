//! The lesson: the greeter's `SayHello` written once, as [`say_hello`], and carried by two
//! transports. [`OverHttp2`] is what tonic needs: frames and protobuf decoding are tonic's,
//! a refusal becomes a gRPC status. [`serve_over_nats`] is what the NATS service protocol
//! needs: an endpoint subject in a queue group, the same protobuf payload decoded by hand
//! ([`on_message`]), a refusal as error headers, and discovery answered by async-nats's
//! `service` module (on the memory backend, by its stand-in in `memory.rs`).

use std::collections::HashMap;

use anyhow::Context;
use async_nats::service::ServiceExt;
use bytes::Bytes;
use microkit::PATIENCE;
use microkit::proto::greeter::greeter_server::Greeter;
use microkit::proto::greeter::{HelloReply, HelloRequest};
use prost::Message;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::bus::{self, Bus};
use super::memory;

/// The service as NATS knows it: a name, a semantic version, and one endpoint per method.
/// The name is the topic's own, in the registry too: other topics register a `greeter` of
/// their own, and on one shared NATS the two would share a queue group and a registry entry.
pub const SERVICE: &str = "transport-greeter";
pub const VERSION: &str = "1.0.0";
pub const METHOD: &str = "SayHello";

/// Why the handler refused a request. Each transport says it its own way.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP-like: 400 is the caller's fault, 500 ours.
    pub code: u16,
    pub reason: String,
}

/// The handler, written once: a request in, a reply or a refusal out. It never learns
/// which transport brought the request.
pub fn say_hello(node: &str, request: HelloRequest) -> Result<HelloReply, Refusal> {
    if request.name.trim().is_empty() {
        return Err(Refusal { code: 400, reason: "name is empty".into() });
    }
    Ok(HelloReply { message: format!("hello {}", request.name), node: node.into(), seq: 0 })
}

/// Transport one, HTTP/2: tonic reads the frames and decodes the protobuf; a refusal
/// travels as a gRPC status in the trailers.
#[derive(Clone)]
pub struct OverHttp2 {
    pub node: String,
}

#[tonic::async_trait]
impl Greeter for OverHttp2 {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        match say_hello(&self.node, request.into_inner()) {
            Ok(reply) => Ok(Response::new(reply)),
            Err(Refusal { code: 400, reason }) => Err(Status::invalid_argument(reason)),
            Err(Refusal { reason, .. }) => Err(Status::internal(reason)),
        }
    }
}

/// Transport two, NATS: what tonic does for HTTP/2, by hand. The payload is the same
/// protobuf; a refusal becomes the protocol's error headers.
pub fn on_message(node: &str, payload: &[u8]) -> Result<Bytes, Refusal> {
    // EXERCISE: what tonic does for HTTP/2, by hand: decode the request, call the handler, encode the reply
    // Check it with `scripts/exercise.sh transport`; `scripts/exercise.sh transport hint` helps.
    let _ = (node, payload);
    Err(Refusal { code: 501, reason: "not written yet".into() })
    // END OF EXERCISE
}

/// One instance of the NATS service, answering until [`NatsInstance::stop`].
pub struct NatsInstance {
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<u64>>,
}

/// Starts an instance: endpoint `transport-greeter.SayHello` in the queue group every
/// instance joins, and the discovery subjects, answered by async-nats's `service` module (or
/// its stand-in).
pub async fn serve_over_nats(bus: &Bus, node: &str) -> anyhow::Result<NatsInstance> {
    let stop = CancellationToken::new();
    let stopping = stop.clone();
    let node = node.to_owned();
    let metadata = HashMap::from([("node".to_owned(), node.clone())]);
    let task = match bus {
        Bus::Nats(client) => {
            let service = client
                .service_builder()
                .description("the greeter, over NATS")
                .metadata(metadata)
                .start(SERVICE, VERSION)
                .await
                .map_err(|error| anyhow::anyhow!("starting the NATS service: {error}"))?;
            let endpoint = service.group(SERVICE).endpoint_builder().name(METHOD);
            let mut endpoint = endpoint.add(METHOD).await.map_err(nats_error)?;
            bus::round_trip(client).await?; // subscribed at the server before we say we serve
            let client = client.clone();
            tokio::spawn(async move {
                let mut served = 0;
                while let Some(request) = tokio::select! {
                    request = futures::StreamExt::next(&mut endpoint) => request,
                    () = stopping.cancelled() => None,
                } {
                    served += answer(&client, &node, &request).await;
                }
                // First a round trip: its answer comes after every request the server sent
                // before it, so those are all in the subscription's buffer (async-nats drops
                // what arrives for a subscription once it has unsubscribed). Then leave the
                // queue group, so nothing new comes, and answer what the buffer holds.
                bus::round_trip(&client).await?;
                endpoint.stop().await?;
                let drain = async {
                    while let Some(request) = futures::StreamExt::next(&mut endpoint).await {
                        served += answer(&client, &node, &request).await;
                    }
                };
                if tokio::time::timeout(PATIENCE, drain).await.is_err() {
                    tracing::warn!("requests still arriving after {PATIENCE:?} of draining");
                }
                service.stop().await.map_err(nats_error)?;
                bus::round_trip(&client).await?;
                Ok(served)
            })
        }
        Bus::Memory(bus) => {
            let metadata = metadata.into_iter().collect();
            let handler = move |payload: &[u8]| on_message(&node, payload);
            memory::serve(bus, SERVICE, VERSION, METHOD, metadata, stopping, handler)
        }
    };
    Ok(NatsInstance { stop, task })
}

impl NatsInstance {
    /// Leaves the queue group and the discovery subjects; returns how many calls it served.
    pub async fn stop(self) -> anyhow::Result<u64> {
        self.stop.cancel();
        tokio::time::timeout(PATIENCE, self.task).await.context("the NATS instance hung")??
    }
}

/// Answers one request; 1 if an answer went out, 0 if there was nobody to answer. No request,
/// however odd, ends the endpoint loop: a failed answer is logged and the next one served.
async fn answer(
    client: &async_nats::Client,
    node: &str,
    request: &async_nats::service::Request,
) -> u64 {
    if request.message.reply.is_none() {
        // A plain publish (`nats pub`): nobody waits, so there is nothing to answer.
        tracing::warn!(subject = %request.message.subject, "a request with no reply subject");
        return 0;
    }
    let max_payload = client.max_payload();
    let answer = match on_message(node, &request.message.payload) {
        // The server would refuse it, and the caller would hear nothing: tell it why instead.
        Ok(reply) if reply.len() > max_payload => Err(Refusal {
            code: 500,
            reason: format!(
                "the reply of {} bytes exceeds the bus's max_payload of {max_payload}",
                reply.len()
            ),
        }),
        other => other,
    };
    let answer = answer.map_err(|refusal| async_nats::service::error::Error {
        code: refusal.code.into(),
        status: refusal.reason,
    });
    match request.respond(answer).await {
        Ok(()) => 1,
        Err(error) => {
            tracing::warn!("answering a request failed: {error}");
            0
        }
    }
}

fn nats_error(error: async_nats::Error) -> anyhow::Error {
    anyhow::anyhow!("NATS service: {error}")
}
