//! The lesson: round robin over the nodes of a service, as the registry and their health
//! say them. One counter for the client's life, one lookup in memory per call.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use health::{Channels, LiveNodes};
use microkit::PATIENCE;
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use registry::Node;
use tokio::time::Instant;
use tonic::{Code, Status};

/// The rotation: the next node of the service, in turn. This is all round robin is.
pub struct RoundRobin {
    pub nodes: LiveNodes,
    /// One counter for the client's life, shared by every call: turns stay fair across
    /// calls and survive changes of the node list (go-micro's restarted per request).
    pub next: AtomicUsize,
    pub channels: Channels,
    /// What a call does when the service has no node: gRPC's two answers.
    pub when_none: WhenNoNode,
    /// Each call's deadline, retry included; sent to the node as `grpc-timeout`.
    pub deadline: Duration,
}

/// gRPC's two answers to "no node to send this call to": fail fast, its default, or wait
/// for ready: wait, up to the call's deadline, for a node to appear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenNoNode {
    FailFast,
    WaitForReady,
}

impl RoundRobin {
    pub fn new(nodes: LiveNodes) -> Self {
        RoundRobin {
            nodes,
            next: AtomicUsize::new(0),
            channels: Channels::default(),
            when_none: WhenNoNode::FailFast,
            deadline: PATIENCE,
        }
    }

    /// The node whose turn it is; `Unavailable` naming the service when there is none.
    fn pick(&self) -> Result<Node, Status> {
        let nodes = self.nodes.current(); // sorted by id: every client rotates the same way
        if nodes.is_empty() {
            let service = self.nodes.service();
            return Err(Status::unavailable(format!(
                "no node of service \"{service}\" in the registry"
            )));
        }
        // EXERCISE: take the node whose turn it is, one turn per call, over the live nodes
        // Check it with `scripts/exercise.sh round-robin`; `scripts/exercise.sh round-robin hint` helps.
        Ok(nodes[0].clone()) // every call to the first node
        // END OF EXERCISE
    }

    /// [`RoundRobin::pick`], but under wait-for-ready an empty list is waited out, until
    /// a node appears or the call's deadline passes.
    async fn pick_ready(&self, deadline: Instant) -> Result<Node, Status> {
        if self.when_none == WhenNoNode::WaitForReady {
            let mut nodes = self.nodes.subscribe();
            let appeared = tokio::time::timeout_at(deadline, nodes.wait_for(|n| !n.is_empty()));
            if appeared.await.is_err() {
                let (service, waited) = (self.nodes.service(), self.deadline);
                return Err(Status::deadline_exceeded(format!(
                    "no node of service \"{service}\" appeared within the call's {waited:?}"
                )));
            }
        }
        self.pick()
    }

    /// Calls the next node; if the call provably never reached it, tries the one after
    /// it, once. (Even so, only because SayHello can run twice without harm.)
    pub async fn say_hello(&self, name: &str) -> Result<Served, Status> {
        let deadline = Instant::now() + self.deadline;
        let first = self.pick_ready(deadline).await?;
        let failure = match self.call(&first, name, deadline).await {
            Ok(()) => return Ok(Served { node: first.id, retried_after: None }),
            Err(status) if never_started(&status) => status,
            Err(status) => return Err(status),
        };
        tracing::info!(node = %first.id, "unreachable ({failure}); retrying on the next node");
        let second = self.pick()?;
        if second.id == first.id {
            return Err(failure); // the only node left is the one that failed
        }
        self.call(&second, name, deadline).await?;
        Ok(Served { node: second.id, retried_after: Some(first.id) })
    }

    async fn call(&self, node: &Node, name: &str, deadline: Instant) -> Result<(), Status> {
        let mut client = GreeterClient::new(self.channels.to(node)?);
        let mut request = tonic::Request::new(HelloRequest { name: name.to_owned() });
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Status::deadline_exceeded("the call's deadline passed before it was sent"));
        }
        request.set_timeout(left);
        let started = Instant::now();
        let reply = client.say_hello(request).await.inspect_err(|status| {
            let took = started.elapsed();
            tracing::info!(node = %node.id, ?took, ?left, "call failed: {status}");
        })?;
        if reply.get_ref().node != node.id {
            return Err(Status::internal(format!(
                "{} answered for {}",
                reply.get_ref().node,
                node.id
            )));
        }
        Ok(())
    }
}

/// Who answered a call.
pub struct Served {
    pub node: String,
    /// The node that could not be reached first, if any.
    pub retried_after: Option<String>,
}

/// The rest of a `call` line: `: b`, or `: a failed, retried on b`.
impl fmt::Display for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.retried_after {
            None => write!(f, ": {}", self.node),
            Some(failed) => write!(f, ": {failed} failed, retried on {}", self.node),
        }
    }
}

/// True when the call provably never reached a handler, so another node may take it:
/// `Unavailable` (tonic's answer for a refused connection and for a stream the server
/// refused, gRPC's code for "retry just this call"), or, among the status's causes, a
/// connect error or a request hyper cancelled before sending it (its `is_canceled`: a
/// connection that closed while the request still waited in the client's queue).
///
/// Not `Unknown` or `Cancelled` as such: tonic gives those to a connection cut mid-call,
/// gRPC's status table to a handler that failed or was cancelled, and a server that cuts a
/// call it has already run (waitgroup's drain deadline) answers `Cancelled`. The call may
/// have done its work there, and a retry would do it twice.
pub fn never_started(status: &Status) -> bool {
    if status.code() == Code::Unavailable {
        return true;
    }
    let mut cause = std::error::Error::source(status);
    while let Some(error) = cause {
        let unsent = error.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_canceled);
        if unsent || error.is::<tonic::ConnectError>() {
            return true;
        }
        cause = error.source();
    }
    false
}
