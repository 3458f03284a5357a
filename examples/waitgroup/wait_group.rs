//! The waitgroup: a tower layer that tracks every call from its request to the last byte
//! of its reply, so a server can stop without losing work in flight.
//!
//! Go's `sync.WaitGroup` is a counter: `Add(1)` when work starts, `Done()` when it ends,
//! `Wait()` until it is zero. tokio-util's [`TaskTracker`] is the same idea with two
//! fixes: a token (not a bare `Done()`) ends the work when it is dropped, so an early
//! return or a panic cannot forget it; and `wait()` returns only once the tracker is
//! *closed* and empty, so a wait that starts before the first call is not over at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tonic::Status;
use tonic::body::Body;

// Closing a connection whose call the cut cannot reach (its client stopped reading).
mod connections;

use connections::Connection;

/// The shared state of the layer: clone it freely, every clone is the same group.
///
/// A call is "in flight" until its response body has ended, not merely until the handler
/// has returned: a unary reply is still to be written then, and a stream has only just
/// begun. That is why the token travels inside the response body.
#[derive(Clone, Default)]
pub struct WaitGroup {
    tracker: TaskTracker,
    /// Cancelled when the drain starts; handlers find it in their request's extensions.
    draining: CancellationToken,
    /// Cancelled when the drain deadline passes: what is still running is cut.
    cut: CancellationToken,
    /// How many calls were cut.
    cut_count: Arc<AtomicUsize>,
    /// Cancelled [`CUT_GRACE`] after `cut` if calls are still in flight: every connection
    /// that still carries one of them is closed.
    close: CancellationToken,
    /// How many connections were closed that way.
    closed_count: Arc<AtomicUsize>,
    /// How many calls were taken (not refused) so far: a watch, so a caller can wait for
    /// its calls to be under way without polling the tracker.
    admitted: Arc<watch::Sender<usize>>,
}

/// Put into every request's extensions, so a long-lived handler (a stream) can learn that
/// the server is draining and end on its own terms: a last message, then the end.
#[derive(Clone)]
pub struct Draining(CancellationToken);

impl Draining {
    /// Completes when the drain starts.
    pub async fn started(&self) {
        self.0.cancelled().await
    }
}

/// What a refused call is told. `Unavailable` is the code clients retry elsewhere.
pub const REFUSED: &str = "server is shutting down: not taking new calls";
/// What a call cut at the drain deadline is told.
pub const CUT: &str = "server shut down: the drain deadline passed";

/// How long after the cut a call may take to end before its connection is closed.
///
/// The cut reaches a body only when hyper asks it for its next frame, and hyper asks only
/// once the last frame has been sent: a client that stops reading leaves the send window
/// full, and its call unreachable. For those calls the group also wraps the server's
/// connections (`connections.rs`), and a call still in flight this long after the cut has
/// its connection closed under it, which ends every stream on it.
///
/// A call the cut reaches ends at its next poll, which comes as soon as its task runs:
/// microseconds, or a few milliseconds on a busy machine. A call still in flight a whole
/// second later is one hyper will not poll (its client stopped reading), so waiting longer
/// would change nothing. The margin is wide because closing a connection is the rough end:
/// the client gets a broken connection, not a `Cancelled` status.
pub const CUT_GRACE: Duration = Duration::from_secs(1);

impl WaitGroup {
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls in flight now (each counts until its reply has been fully written).
    pub fn in_flight(&self) -> usize {
        self.tracker.len()
    }

    /// Waits until at least `calls` calls have been taken since the group was made.
    pub async fn admitted(&self, calls: usize) {
        let mut admitted = self.admitted.subscribe();
        // `wait_for` fails only if the sender is gone, and `self` holds it.
        let _ = admitted.wait_for(|taken| *taken >= calls).await;
    }

    /// Step 1 of the stop: new calls are refused with `Unavailable`, and long-lived
    /// handlers are told to finish. The server itself keeps running, so the replies of
    /// the calls in flight can still be delivered.
    pub fn stop_taking_calls(&self) {
        // exercise begins: close the tracker, so that `wait()` can return once the calls in flight are done
        self.tracker.close();
        // exercise ends
        self.draining.cancel();
    }

    /// Step 2 of the stop: waits for every call in flight to end, for at most `deadline`; then cuts
    /// the rest, which end at once with `Cancelled`. A call the cut cannot reach (its client
    /// stopped reading) has its connection closed [`CUT_GRACE`] later. Returns how many
    /// calls were cut, either way.
    pub async fn drain(&self, deadline: Duration) -> anyhow::Result<usize> {
        self.stop_taking_calls();
        if tokio::time::timeout(deadline, self.tracker.wait()).await.is_err() {
            self.cut.cancel();
            if tokio::time::timeout(CUT_GRACE, self.tracker.wait()).await.is_err() {
                tracing::warn!(
                    calls = self.in_flight(),
                    "calls the cut did not reach (their clients stopped reading): \
                     closing their connections"
                );
                self.close.cancel();
            }
            // Closing ends them at once, on connections that came through `connections`;
            // this bound only turns a server built without it into an error.
            tokio::time::timeout(microkit::PATIENCE, self.tracker.wait()).await.map_err(|_| {
                anyhow::anyhow!(
                    "{} calls did not end even when cut (are the server's connections \
                     wrapped by `WaitGroup::connections`?)",
                    self.in_flight()
                )
            })?;
        }
        Ok(self.cut_count.load(Ordering::SeqCst))
    }
}

/// The layer: `Server::builder().layer(wait_group.clone())`.
impl<S> tower::Layer<S> for WaitGroup {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Tracked<S> {
        Tracked { inner, group: self.clone() }
    }
}

/// The service the layer wraps around the server's routes.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    group: WaitGroup,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Tracked<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // Count the call first, then look at `closed`: a drain that starts in between
        // either sees this call counted, or this call sees the drain. Never neither.
        let token = self.group.tracker.token();
        if self.group.tracker.is_closed() {
            drop(token);
            return Box::pin(async { Ok(Status::unavailable(REFUSED).into_http()) });
        }
        self.group.admitted.send_modify(|taken| *taken += 1);
        request.extensions_mut().insert(Draining(self.group.draining.clone()));
        let token = InFlight::new(token, request.extensions().get::<Connection>());

        // The clone that was made ready is the one to call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = inner.call(request);
        let (cut, cut_count) = (self.group.cut.clone(), self.group.cut_count.clone());
        Box::pin(async move {
            tokio::select! {
                response = call => {
                    // The handler is done; the reply is not yet written. The token goes
                    // with the body and is dropped when the body has ended.
                    let body = |body| Body::new(TrackedBody::new(body, token, cut, cut_count));
                    Ok(response?.map(body))
                }
                () = cut.cancelled() => {
                    // Dropping the handler's future is what cancels it.
                    cut_count.fetch_add(1, Ordering::SeqCst);
                    Ok(Status::cancelled(CUT).into_http())
                }
            }
        })
    }
}

/// A call in flight: its tracker token, and a mark on its connection (when the server's
/// connections come through [`WaitGroup::connections`]) for as long as it lives.
struct InFlight {
    _token: TaskTrackerToken,
    connection: Option<Connection>,
}

impl InFlight {
    fn new(token: TaskTrackerToken, connection: Option<&Connection>) -> Self {
        let connection = connection.cloned();
        if let Some(connection) = &connection {
            connection.calls.fetch_add(1, Ordering::SeqCst);
        }
        InFlight { _token: token, connection }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(connection) = &self.connection {
            connection.calls.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A response body that holds its call's token until it has ended, and ends itself with
/// a `Cancelled` status if the drain deadline passes first.
struct TrackedBody {
    inner: Body,
    _token: InFlight,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    cut_token: CancellationToken,
    cut_count: Arc<AtomicUsize>,
    ended: bool,
}

impl TrackedBody {
    fn new(
        inner: Body,
        token: InFlight,
        cut: CancellationToken,
        cut_count: Arc<AtomicUsize>,
    ) -> Self {
        let ended = http_body::Body::is_end_stream(&inner);
        let cut_token = cut.clone();
        TrackedBody {
            inner,
            _token: token,
            cut: Box::pin(cut.cancelled_owned()),
            cut_token,
            cut_count,
            ended,
        }
    }
}

impl Drop for TrackedBody {
    /// A body dropped unfinished after the cut was ended by it, though never polled again
    /// to say so: its connection was closed, or its client went away. Counted as cut.
    fn drop(&mut self) {
        if !self.ended && self.cut_token.is_cancelled() {
            self.cut_count.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if this.cut.as_mut().poll(cx).is_ready() {
            // End the stream properly, with a status the client can read: trailers.
            this.ended = true;
            this.cut_count.fetch_add(1, Ordering::SeqCst);
            let mut trailers = http::HeaderMap::new();
            Status::cancelled(CUT).add_header(&mut trailers)?;
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        this.ended = match &frame {
            None | Some(Err(_)) => true,
            Some(Ok(frame)) => frame.is_trailers(),
        };
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests;
