//! The lesson: request affinity. A tower service under the generated client reads the user
//! from each request's `x-from-user` header and sends the request to that user's node.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use health::{Channels, LiveNodes};
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use registry::Node;
use round_robin::SERVICE;
use sharding::hashing::rendezvous;
use tonic::Status;
use tonic::body::Body;
use tonic::metadata::AsciiMetadataValue;
use tower::{Service, ServiceExt};

/// The request header that carries the user: what the affinity is keyed on.
pub const USER_HEADER: &str = "x-from-user";

/// go-micro's client wrapper, as a tower service under the generated client: it reads
/// `x-from-user` from each request and forwards the request to that user's node; without
/// the header, to the next node in turn.
#[derive(Clone)]
pub struct ShardRouter {
    pub nodes: Arc<LiveNodes>,
    channels: Channels,
    turn: Arc<AtomicUsize>,
}

impl ShardRouter {
    pub fn new(nodes: LiveNodes) -> Self {
        ShardRouter { nodes: Arc::new(nodes), channels: Channels::default(), turn: Arc::default() }
    }

    fn pick(&self, user: Option<&str>) -> Result<Node, Status> {
        let nodes = self.nodes.current();
        let chosen = match user {
            Some(user) => rendezvous(user, &nodes),
            None if nodes.is_empty() => None,
            None => Some(&nodes[self.turn.fetch_add(1, Ordering::Relaxed) % nodes.len()]),
        };
        chosen.cloned().ok_or_else(|| {
            Status::unavailable(format!("no node of service \"{}\" in the registry", SERVICE))
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<http::Request<Body>> for ShardRouter {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(())) // each call readies the channel it picks
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // A header that is there but unreadable is refused: taken as no header, the call
        // would go round robin and its affinity would be lost without a word.
        let user = match request.headers().get(USER_HEADER) {
            None => Ok(None),
            Some(value) => value.to_str().map(Some).map_err(|e| {
                Status::invalid_argument(format!("{USER_HEADER} is not printable ASCII: {e}"))
            }),
        };
        let channel = user.and_then(|user| self.pick(user)).and_then(|n| self.channels.to(&n));
        Box::pin(async move {
            // A `Status` error reaches the caller as that status (tonic looks for one).
            let channel = channel?;
            Ok(channel.oneshot(request).await?)
        })
    }
}

/// One call, as `user` (or with no header), answered by the node the router chose.
pub async fn hello(
    client: &mut GreeterClient<ShardRouter>,
    user: Option<&str>,
) -> Result<String, Status> {
    let mut request = tonic::Request::new(HelloRequest { name: user.unwrap_or("guest").into() });
    if let Some(user) = user {
        request.metadata_mut().insert(USER_HEADER, user_value(user)?);
    }
    Ok(client.say_hello(request).await?.into_inner().node)
}

/// `user` as the header's value. gRPC metadata values are printable ASCII, the only bytes a
/// receiver can read back as text; anything else (`é`, a tab) is refused naming the rule.
pub fn user_value(user: &str) -> Result<AsciiMetadataValue, Status> {
    let refused = || format!("{USER_HEADER} must be printable ASCII, not {user:?}");
    if !user.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(Status::invalid_argument(refused()));
    }
    user.parse().map_err(|e| Status::invalid_argument(format!("{}: {e}", refused())))
}
