use clap::Parser;
use tonic::Code;

use crate::Args;
use crate::story::{GOODBYE, StreamEnd, Tally, graceful_stop};

async fn run_with(flags: &[&str]) -> Tally {
    graceful_stop(&Args::parse_from(["waitgroup"].iter().chain(flags))).await.unwrap()
}

/// What every run must end with: the latecomer refused, the stream's goodbye, no loss.
fn tally(replied: u32, cancelled: u32, cut: usize) -> Tally {
    let stream = StreamEnd { last: GOODBYE.to_owned(), end: Code::Ok };
    let latecomer = Some(Code::Unavailable);
    Tally { latecomer, stream, replied, cancelled, cut, closed: 0, lost: 0 }
}

#[tokio::test]
async fn the_default_run_drains_five_calls_and_the_stream() {
    assert_eq!(run_with(&[]).await, tally(5, 0, 0));
}

#[tokio::test]
async fn twenty_slow_calls_in_flight_at_shutdown_all_reply() {
    assert_eq!(run_with(&["--calls", "20", "--work-ms", "300"]).await, tally(20, 0, 0));
}

#[tokio::test]
async fn a_deadline_shorter_than_the_calls_cuts_each_of_them_and_counts_exactly() {
    // An hour of work against a 500 ms deadline: every call is still running when
    // cut, and the stream has ample time to say goodbye first.
    let flags = ["--calls", "20", "--work-ms", "3600000", "--drain-ms", "500"];
    assert_eq!(run_with(&flags).await, tally(0, 20, 20));
}

#[tokio::test]
async fn the_stream_says_goodbye_even_when_the_deadline_cuts_the_rest() {
    let flags = ["--calls", "3", "--work-ms", "3600000", "--drain-ms", "500"];
    let tally = run_with(&flags).await;
    assert_eq!(tally.stream, StreamEnd { last: GOODBYE.to_owned(), end: Code::Ok }, "{tally:?}");
    assert_eq!(tally.cut, 3, "the stream ended on its own, only the calls were cut");
}

#[test]
fn bad_settings_are_refused() {
    let work_0 = ["--work-ms", "0"];
    for flags in [&["--calls", "0"][..], &["--drain-ms", "soon"], &["--work-ms", "-1"], &work_0] {
        let args = ["waitgroup"].iter().chain(flags);
        assert!(Args::try_parse_from(args).is_err(), "{flags:?} was accepted");
    }
}
