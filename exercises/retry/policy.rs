//! Retries that do not make things worse: a `tower::retry::Policy` that tries again only
//! when a second attempt is safe, waits an exponential backoff with jitter first, never
//! past the call's deadline, and only while a budget shared by every call allows it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::{HelloReply, HelloRequest};
use tokio::time::{Instant, Sleep};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tower::retry::backoff::{Backoff, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff};
use tower::retry::budget::{Budget, TpsBudget};
use tower::util::rng::HasherRng;

/// One call as the retry layer sees it: a request that can be sent again, whether sending
/// it twice is harmless, and when the caller stops waiting (shared by every attempt).
#[derive(Clone, Debug)]
pub struct Call {
    pub request: HelloRequest,
    pub idempotent: bool,
    pub deadline: Instant,
}

/// Whether a failed attempt is worth another, for a call that is idempotent or not.
pub fn worth_retrying(code: Code, idempotent: bool) -> bool {
    match code {
        // The node did not take the call (it is shutting down, or nothing listens): safe to
        // send it again, whatever it does.
        Code::Unavailable => true,
        // The work may have been done and only the reply lost: again only if twice is harmless.
        // EXERCISE: a failure after which the work may have been done: retry it only if running it twice is harmless
        // Check it with `scripts/exercise.sh retry`; `scripts/exercise.sh retry hint` helps.
        Code::Unknown | Code::Aborted => true, // retried, whatever the call does
        // END OF EXERCISE
        // DeadlineExceeded: the caller's time is gone, for every attempt. The rest are answers.
        _ => false,
    }
}

/// The policy. tower clones it for each call, so `retries` counts one call's retries, while
/// the budget (an `Arc`) is shared by all of them.
#[derive(Clone)]
pub struct RetryPolicy {
    max_retries: u32,
    retries: u32,
    backoff: ExponentialBackoff,
    budget: Option<Arc<TpsBudget>>,
}

impl RetryPolicy {
    /// `base` doubles at each retry up to `cap`, plus up to as much again of random jitter, so
    /// the clients that failed together do not all come back together.
    pub fn new(
        max_retries: u32,
        base: Duration,
        cap: Duration,
        budget: Option<Arc<TpsBudget>>,
    ) -> Self {
        let backoff = ExponentialBackoffMaker::new(base, cap, 1.0, HasherRng::default())
            .expect("base <= cap, both non-zero")
            .make_backoff();
        RetryPolicy { max_retries, retries: 0, backoff, budget }
    }
}

/// A budget that lets retries add 20% to the calls, plus a reserve of one retry per second,
/// over a window of `window` (tower's default: 10 s, 10 per second, 20%).
pub fn budget(window: Duration) -> Arc<TpsBudget> {
    Arc::new(TpsBudget::new(window, 1, 0.5))
}

impl tower::retry::Policy<Call, HelloReply, Status> for RetryPolicy {
    type Future = Sleep;

    fn retry(&mut self, call: &mut Call, result: &mut Result<HelloReply, Status>) -> Option<Sleep> {
        let first_answer = self.retries == 0;
        if first_answer && let Some(budget) = &self.budget {
            budget.deposit(); // every call earns a share of a retry, successful or not
        }
        let status = result.as_ref().err()?;
        if !worth_retrying(status.code(), call.idempotent) || self.retries >= self.max_retries {
            return None;
        }
        let pause = self.backoff.next_backoff();
        if pause.deadline() >= call.deadline {
            return None; // the next attempt would start after the caller stopped waiting
        }
        if let Some(budget) = &self.budget
            && !budget.withdraw()
        {
            return None; // the service is failing for many calls: do not add to its load
        }
        self.retries += 1;
        Some(pause)
    }

    fn clone_request(&mut self, call: &Call) -> Option<Call> {
        Some(call.clone())
    }
}

/// The service the layer wraps: one attempt, with the call's deadline as its `grpc-timeout`,
/// counted so the story can show the load a service really got.
pub fn attempt(
    client: GreeterClient<Channel>,
    attempts: Arc<AtomicU32>,
) -> impl tower::Service<Call, Response = HelloReply, Error = Status, Future: Send> + Clone {
    tower::service_fn(move |call: Call| {
        let (mut client, attempts) = (client.clone(), attempts.clone());
        async move {
            attempts.fetch_add(1, Ordering::SeqCst);
            let mut request = Request::new(call.request);
            request.set_timeout(call.deadline.saturating_duration_since(Instant::now()));
            Ok::<_, Status>(client.say_hello(request).await?.into_inner())
        }
    })
}

/// A node that fails some attempts: every `every`-th one, counted from 1. `after_work` says
/// how: `false` refuses before doing anything (`Unavailable`), `true` does the work and then
/// loses the reply (`Unknown`, as when a connection breaks on the way back).
pub struct Flaky {
    pub every: u32,
    pub after_work: bool,
    pub attempts: Arc<AtomicU32>,
    /// How many times the work was done.
    pub done: Arc<AtomicU32>,
}

impl Flaky {
    pub fn new(every: u32, after_work: bool) -> Self {
        Flaky { every, after_work, attempts: Arc::default(), done: Arc::default() }
    }

    async fn hello(&self, request: Request<HelloRequest>) -> Result<HelloReply, Status> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        let fails = attempt.is_multiple_of(self.every);
        if fails && !self.after_work {
            return Err(Status::unavailable("flaky node: not now"));
        }
        self.done.fetch_add(1, Ordering::SeqCst);
        if fails {
            return Err(Status::unknown("flaky node: the reply was lost after the work"));
        }
        Ok(HelloReply {
            message: format!("done: {}", request.into_inner().name),
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl microkit::proto::greeter::greeter_server::Greeter for Flaky {
    // Only the unary call: the three streaming calls answer UNIMPLEMENTED by default.
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, Status> {
        self.hello(request).await.map(tonic::Response::new)
    }
}
