//! Deadlines and cancellation, hop by hop: each hop reads the time it was given, keeps a
//! margin for its reply, passes the rest on, and stops its work when the time is gone; a
//! caller that leaves drops the call, and with it every hop's handler further down.

use std::time::Duration;

use health::{Channels, LiveNodes};
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::{HelloReply, HelloRequest};
// One reading of the header for every example that needs one (the proxy reads it too).
use microkit::timeout::parse as parse_grpc_timeout;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::transport::Channel;
use tonic::{Request, Status};

/// What a hop keeps for itself out of the time it is given: the time its reply needs to
/// travel back. Without it, a hop and its caller would give up at the same instant, and the
/// caller's own timer would hide which hop ran out. (Generous here, so the story holds on a
/// busy machine; a few milliseconds do between two nodes of one data centre.)
pub const MARGIN: Duration = Duration::from_millis(100);

/// The moment a call must be answered by, as this hop sees it.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    at: Instant,
    /// What the caller gave, as read from `grpc-timeout` (for the tally).
    given: Duration,
}

impl Deadline {
    /// Reads `grpc-timeout` (what the caller set with `Request::set_timeout`). tonic's server
    /// enforces that header but does not hand it to the handler, so the handler parses it
    /// too. A call without one gets `default`: no hop waits for ever.
    pub fn of<T>(request: &Request<T>, default: Duration) -> Deadline {
        let header = request.metadata().get("grpc-timeout");
        let given = header.and_then(|v| parse_grpc_timeout(v.to_str().ok()?)).unwrap_or(default);
        Deadline { at: Instant::now() + given.saturating_sub(MARGIN), given }
    }

    /// The time left now, zero once it is past.
    pub fn left(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Sets the next hop's `grpc-timeout` to what is left: the deadline travels, shrinking.
    pub fn pass_on<T>(&self, request: &mut Request<T>) {
        request.set_timeout(self.left());
    }

    /// Runs `work` until the deadline, then drops it: nobody is waiting for it any more.
    pub async fn run<F: Future>(&self, work: F) -> Result<F::Output, tokio::time::error::Elapsed> {
        tokio::time::timeout_at(self.at, work).await
    }
}

/// One hop of the chain: works for a while under the deadline, then calls the next hop
/// (found in the registry) with what is left, or answers if it is the last.
pub struct Hop {
    pub name: String,
    pub work: Duration,
    /// The time a call without a deadline gets.
    pub default_deadline: Duration,
    pub next: Option<Next>,
    /// Spawn side work for each call (the last hop does): one job stopped by a token, one not.
    pub side_jobs: bool,
    pub tally: watch::Sender<Tally>,
}

impl Hop {
    async fn hello(&self, request: Request<HelloRequest>) -> Result<HelloReply, Status> {
        let deadline = Deadline::of(&request, self.default_deadline);
        let mut call = Serving::start(&self.tally, deadline.given);
        if deadline.left().is_zero() {
            return call.end(Err(out_of_time(&self.name, "no time left on arrival")));
        }
        let _side_jobs = self.side_jobs.then(|| self.spawn_side_jobs());
        if deadline.run(tokio::time::sleep(self.work)).await.is_err() {
            return call.end(Err(out_of_time(&self.name, "the deadline passed during its work")));
        }
        let Some(next) = &self.next else {
            let message = format!("done by {}", self.name);
            return call.end(Ok(HelloReply { message, node: self.name.clone(), seq: 0 }));
        };
        let mut onward = Request::new(request.into_inner());
        deadline.pass_on(&mut onward);
        let mut client = match next.client() {
            Ok(client) => client,
            Err(status) => return call.end(Err(status)),
        };
        // The next hop answers first (its deadline is a margin earlier); this cap is the guard.
        let answer = match deadline.run(client.say_hello(onward)).await {
            Ok(answer) => answer.map(tonic::Response::into_inner),
            Err(_) => Err(out_of_time(&self.name, "no answer from the next hop in time")),
        };
        call.end(answer)
    }

    /// Work that outlives the handler unless told otherwise (a subscription, a poller: jobs
    /// with no end of their own): the guarded job ends when the returned guard is dropped,
    /// with the handler however it ends; the orphan runs on until the process ends.
    fn spawn_side_jobs(&self) -> DropGuard {
        let token = CancellationToken::new();
        let (guarded, stop) = (Running::new(&self.tally, |t| &mut t.guarded_jobs), token.clone());
        tokio::spawn(async move {
            let _running = guarded;
            stop.cancelled().await;
        });
        let orphan = Running::new(&self.tally, |t| &mut t.orphan_jobs);
        tokio::spawn(async move {
            let _running = orphan;
            std::future::pending::<()>().await; // nothing can reach it now
        });
        token.drop_guard()
    }
}

/// Counts a side job in the tally for as long as it runs (until its task ends or is dropped).
struct Running {
    tally: watch::Sender<Tally>,
    /// Which count of the tally this job is in.
    count: fn(&mut Tally) -> &mut u32,
}

impl Running {
    fn new(tally: &watch::Sender<Tally>, count: fn(&mut Tally) -> &mut u32) -> Self {
        tally.send_modify(|t| *count(t) += 1);
        Running { tally: tally.clone(), count }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.tally.send_modify(|t| *(self.count)(t) -= 1);
    }
}

fn out_of_time(hop: &str, what: &str) -> Status {
    Status::deadline_exceeded(format!("{hop}: {what}"))
}

#[tonic::async_trait]
impl microkit::proto::greeter::greeter_server::Greeter for Hop {
    // Only the unary call: the three streaming calls answer UNIMPLEMENTED by default.
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, Status> {
        self.hello(request).await.map(tonic::Response::new)
    }
}

/// What one hop saw, in a `watch` so a test or the story can wait for a count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub started: u32,
    pub replied: u32,
    /// Calls that ended with `DeadlineExceeded`, here or further down.
    pub out_of_time: u32,
    /// Other errors, passed on from further down.
    pub failed: u32,
    /// Handlers dropped before they ended: the caller went away.
    pub cancelled: u32,
    /// What the last call was given, as read from its `grpc-timeout`.
    pub last_given: Option<Duration>,
    pub guarded_jobs: u32,
    pub orphan_jobs: u32,
}

/// One call in a handler. Dropped before [`Serving::end`], it counts a cancellation: that
/// is how a handler learns its caller left (tonic drops the future; no code runs after).
struct Serving<'a> {
    tally: &'a watch::Sender<Tally>,
    ended: bool,
}

impl<'a> Serving<'a> {
    fn start(tally: &'a watch::Sender<Tally>, given: Duration) -> Self {
        tally.send_modify(|t| (t.started, t.last_given) = (t.started + 1, Some(given)));
        Serving { tally, ended: false }
    }

    fn end(&mut self, result: Result<HelloReply, Status>) -> Result<HelloReply, Status> {
        self.ended = true;
        self.tally.send_modify(|t| match &result {
            Ok(_) => t.replied += 1,
            Err(s) if s.code() == tonic::Code::DeadlineExceeded => t.out_of_time += 1,
            Err(_) => t.failed += 1,
        });
        result
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.tally.send_modify(|t| t.cancelled += 1);
        }
    }
}

/// The next hop: a service name, looked up in the registry for each call.
pub struct Next {
    pub service: String,
    pub nodes: LiveNodes,
    pub channels: Channels,
}

impl Next {
    pub fn client(&self) -> Result<GreeterClient<Channel>, Status> {
        let node = self.nodes.current().into_iter().next().ok_or_else(|| {
            Status::unavailable(format!("no node of service {:?} in the registry", self.service))
        })?;
        Ok(GreeterClient::new(self.channels.to(&node)?))
    }
}
