//! The example's behaviour, on the memory backend, asserted on the values the code returns.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use registry::{MemoryRegistry, Registry};
use tonic::Code;

use crate::deadline::MARGIN;
use crate::policy::{Flaky, RetryPolicy};
use crate::story::{self, Chain, SHORT_DEADLINES, calls, client_of, serve};

fn registry() -> Arc<dyn Registry> {
    Arc::new(MemoryRegistry::new())
}

#[tokio::test]
async fn the_time_given_shrinks_at_every_hop_by_at_least_its_work_and_margin() {
    let chain = Chain::start(&registry()).await.unwrap();
    let deadline = Duration::from_millis(1000);
    assert_eq!(chain.call(deadline).await.unwrap().message, "done by c");
    let given: Vec<Duration> = chain.given().into_iter().map(Option::unwrap).collect();
    assert!(given[0] <= deadline && given[0] > deadline - MARGIN, "a was given {given:?}");
    for (hop, (got, bound)) in given.iter().zip(story::bounds(deadline)).enumerate() {
        assert!(*got <= bound, "hop {hop} was given {got:?}, more than {bound:?}");
    }
    assert!(given[2] < given[1] && given[1] < given[0], "{given:?}");
    chain.stop().await.unwrap();
}

#[tokio::test]
async fn a_deadline_too_short_fails_with_deadline_exceeded_at_the_hop_where_it_ran_out() {
    let chain = Chain::start(&registry()).await.unwrap();
    // One call with time to spare first, as in the story: the connections are then open, so
    // the short deadlines measure the hops' work, not a first handshake on a busy machine.
    chain.call(Duration::from_secs(5)).await.unwrap();
    let expected = [
        (2, "c: the deadline passed during its work"),
        (1, "b: no time left on arrival"),
        (0, "a: no time left on arrival"),
    ];
    for (ms, (hop, message)) in SHORT_DEADLINES.into_iter().zip(expected) {
        let before: Vec<_> = chain.tallies.iter().map(|t| t.borrow().clone()).collect();
        let status = chain.call(Duration::from_millis(ms)).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{ms}ms: {status:?}");
        let id = story::HOPS[hop].0;
        assert_eq!(status.message(), message, "{ms}ms");
        for (later, tally) in chain.tallies.iter().enumerate().skip(hop + 1) {
            let started = tally.borrow().started;
            assert_eq!(started, before[later].started, "{ms}ms: a hop after {id} started work");
        }
        let after = chain.tallies[hop].borrow().clone();
        assert_eq!(after.out_of_time, before[hop].out_of_time + 1, "{ms}ms: {after:?}");
        assert_eq!(after.replied, before[hop].replied, "{ms}ms: {id} finished work for nobody");
    }
    chain.stop().await.unwrap();
}

#[tokio::test]
async fn a_dropped_call_drops_the_handler_at_every_hop_and_the_token_stops_the_side_job() {
    let chain = Chain::start(&registry()).await.unwrap();
    let tallies = chain.give_up_once_c_started().await.unwrap();
    for (tally, (id, _)) in tallies.iter().zip(story::HOPS) {
        assert_eq!((tally.started, tally.cancelled, tally.replied), (1, 1, 0), "{id}: {tally:?}");
    }
    assert_eq!(tallies[2].guarded_jobs, 0, "the side job with a token stopped");
    assert_eq!(tallies[2].orphan_jobs, 1, "the side job without one is still running");
    chain.stop().await.unwrap();
}

#[tokio::test]
async fn retries_turn_a_flaky_nodes_refusals_into_successes() {
    let outcome = story::flaky_node(&registry()).await.unwrap();
    // Attempts 3, 6, 9 and 12 are refused: each of those calls succeeds on its retry.
    assert_eq!((outcome.bare_ok, outcome.ok, outcome.attempts), (6, 9, 13), "{outcome:?}");
}

#[tokio::test]
async fn the_budget_caps_the_attempts_on_a_dead_node() {
    let (storm, budgeted) = story::dead_node(&registry()).await.unwrap();
    assert_eq!(storm, 30, "without a budget: 1 attempt and 2 retries for each of 10 calls");
    // A reserve of 1 retry (2 deposits), then 1 retry per 2 calls: 10 + 6.
    assert_eq!(budgeted, 16);
}

#[tokio::test]
async fn a_call_that_is_not_idempotent_is_not_retried_when_its_reply_was_lost() {
    let [charges, reads] = story::lossy_node(&registry()).await.unwrap();
    assert_eq!((charges.ok, charges.attempts, charges.done), (2, 4, 4), "{charges:?}");
    assert_eq!((reads.ok, reads.attempts, reads.done), (4, 7, 7), "{reads:?}");
}

#[tokio::test]
async fn no_retry_starts_after_the_deadline() {
    let registry = registry();
    let dead = serve(&registry, "retry-dead", "dead", Flaky::new(1, false)).await.unwrap();
    let slow = RetryPolicy::new(2, Duration::from_millis(100), Duration::from_millis(200), None);
    let (mut service, attempts) =
        client_of(&registry, "retry-dead", "dead", Some(slow)).await.unwrap();
    let call = crate::policy::Call {
        request: Default::default(),
        idempotent: true,
        deadline: tokio::time::Instant::now() + Duration::from_millis(80),
    };
    let status = tower::ServiceExt::oneshot(&mut service, call).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "a backoff past the deadline: no retry");
    let ok = calls(&mut service, 1, true).await.unwrap(); // ample deadline: retried
    assert_eq!((ok, attempts.load(Ordering::SeqCst)), (0, 4));
    dead.stop().await.unwrap();
}

#[test]
fn bad_flags_are_refused() {
    for flags in [&["client", "--deadline-ms", "soon"][..], &["c", "--work-ms", "-1"], &["d"]] {
        let args = ["retry"].iter().chain(flags);
        assert!(crate::Args::try_parse_from(args).is_err(), "{flags:?} was accepted");
    }
}

#[tokio::test]
async fn a_hop_whose_next_service_has_no_node_refuses_with_unavailable_and_counts_a_failure() {
    let registry = registry();
    let (a, tally) = story::hop(&registry, 0, Duration::ZERO, false).await.unwrap();
    let entry = crate::deadline::Next::find(&registry, "retry-a", Some("a")).await.unwrap();
    let status = entry.call(Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "no node of service \"retry-b\" in the registry");
    let tally = tally.borrow().clone();
    assert_eq!((tally.failed, tally.cancelled), (1, 0), "{tally:?}");
    a.stop().await.unwrap();
}
