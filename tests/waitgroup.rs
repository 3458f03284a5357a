//! The waitgroup example as a process: what it prints and how it exits, deadline or not.

mod common;

use std::time::Duration;

use common::{example, run_within, text};

const LIMIT: Duration = Duration::from_secs(30);

async fn run(flags: &[&str]) -> (Option<i32>, String, String) {
    let mut command = example("waitgroup");
    command.args(flags);
    let output = run_within(command, LIMIT).await;
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

#[tokio::test]
async fn twenty_slow_calls_in_flight_at_shutdown_all_reply_and_none_is_lost() {
    let (code, stdout, stderr) = run(&["--calls", "20", "--work-ms", "300"]).await;
    assert_eq!(code, Some(0), "stderr:\n{stderr}");
    assert!(stdout.contains("in flight: 20 slow calls (300ms of work each)"), "{stdout}");
    assert!(stdout.contains("   slow calls: 20 replied, 0 cancelled\n"), "{stdout}");
    assert!(stdout.contains("   cut by the server at the deadline: 0\n"), "{stdout}");
    assert!(stdout.ends_with("3. server stopped with 0 calls in flight\nlost: 0\n"), "{stdout}");
}

#[tokio::test]
async fn a_deadline_shorter_than_the_calls_cuts_an_exact_count_and_still_exits_0() {
    // An hour of work against a 500 ms deadline: each of the 20 calls is cut.
    let (code, stdout, stderr) =
        run(&["--calls", "20", "--work-ms", "3600000", "--drain-ms", "500"]).await;
    assert_eq!(code, Some(0), "cutting at the deadline is the plan, not a failure: {stderr}");
    assert!(stdout.contains("   slow calls: 0 replied, 20 cancelled\n"), "{stdout}");
    assert!(stdout.contains("   cut by the server at the deadline: 20\n"), "{stdout}");
    assert!(stdout.ends_with("lost: 0\n"), "{stdout}");
}

#[tokio::test]
async fn a_bad_setting_is_refused_with_a_message() {
    let (code, stdout, stderr) = run(&["--drain-ms", "soon"]).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("invalid value 'soon' for '--drain-ms <MS>'"), "{stderr}");
    assert!(stdout.is_empty());
}

#[tokio::test]
async fn no_work_is_refused_at_once_with_the_reason() {
    // With 0 ms of work every call is over before the stop begins: nothing to drain.
    let (code, stdout, stderr) = run(&["--work-ms", "0"]).await;
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("invalid value '0' for '--work-ms <MS>'"), "{stderr}");
    assert!(stderr.contains("none would be in flight to drain; give at least 1"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
}
