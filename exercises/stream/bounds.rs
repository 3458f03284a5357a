//! The client's bounds on a stream: a deadline per call, keepalive per connection. Without
//! them a server that goes silent without closing would hold the client for ever.

use std::future::Future;
use std::time::Duration;

use microkit::PATIENCE;
use tonic::transport::Endpoint;
use tonic::{Request, Status};

/// How long one call of the client may take, request to end. tonic sends it as `grpc-timeout`
/// ([`deadline`]) but keeps it only until the response head, so [`within_deadline`] keeps it.
pub const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// After this long without a byte from the server, the client sends an HTTP/2 PING; a PING
/// unanswered for [`KEEPALIVE_TIMEOUT`] ends the connection and every call on it. A peer that
/// froze, or a path gone silent without closing, gives no other sign: TCP alone may wait
/// for ever (a frozen peer's kernel still acknowledges every byte).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A channel to `url` with the client's bounds: connect within [`PATIENCE`]; PING even while
/// no call is open, so a dead connection is found before a call is made on it.
pub fn endpoint(url: String) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(url)?
        .connect_timeout(PATIENCE)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// `message` as a request that tells the server its deadline (`grpc-timeout`).
pub fn deadline<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CALL_DEADLINE);
    request
}

/// Runs a whole call within [`CALL_DEADLINE`]; dropped at the deadline, it is cancelled.
pub async fn within_deadline<T>(
    call: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let expired =
        || Status::deadline_exceeded(format!("the call did not end within {CALL_DEADLINE:?}"));
    match tokio::time::timeout(CALL_DEADLINE, call).await {
        Err(_) => Err(expired().into()),
        // tonic's timer for the head (the same deadline) may fire first, as a `Cancelled`
        // "Timeout expired": one deadline, one error.
        Ok(Err(error)) if error.chain().any(|cause| cause.is::<tonic::TimeoutExpired>()) => {
            Err(expired().into())
        }
        Ok(result) => result,
    }
}
