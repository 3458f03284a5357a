use clap::Parser;
use mockall::Sequence;
use tokio::sync::Mutex;
use tonic::transport::Endpoint;
use tonic::{Code, Status};

use microkit::proto::greeter::greeter_client::GreeterClient;

use crate::Args;
use crate::in_process::{GrpcGreet, connect_once, in_process_client};
use crate::seam::{MockGreet, Welcome, WelcomeDesk};
use crate::story::{failing_mock, mock_expecting};

fn guests(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn hello(name: &str) -> Result<String, Status> {
    Ok(format!("hello {name}"))
}

// Argument matching and call counts: each guest's name reaches the service once.
// If the desk called twice, or sent another name, the mock would panic on that call;
// if it did not call at all, the mock would panic when dropped.
#[tokio::test]
async fn each_guest_is_greeted_once_by_name() {
    let mut mock = MockGreet::new();
    for name in ["ada", "bo"] {
        mock.expect_say_hello().withf(move |asked| asked == name).times(1).returning(hello);
    }
    let welcome = WelcomeDesk { greeter: mock }.welcome(&guests(&["ada", "bo"])).await;
    assert_eq!(welcome.greeted, ["hello ada", "hello bo"]);
}

// Sequences: guests are greeted in the order given (`mock_expecting` puts one
// expectation a guest into one `Sequence`).
#[tokio::test]
async fn guests_are_greeted_in_order() {
    let mock = mock_expecting(&["cy", "ada", "bo"]);
    WelcomeDesk { greeter: mock }.welcome(&guests(&["cy", "ada", "bo"])).await;
}

// `never`: a blank name must not cost a call.
#[tokio::test]
async fn blank_names_never_reach_the_service() {
    let mut mock = MockGreet::new();
    mock.expect_say_hello().never();
    let welcome = WelcomeDesk { greeter: mock }.welcome(&guests(&["", "  "])).await;
    assert_eq!(welcome, Welcome { skipped: 2, ..Welcome::default() });
}

// Returning errors, in a sequence: Unavailable, then success on the one retry.
#[tokio::test]
async fn unavailable_is_retried_once_and_then_succeeds() {
    let mut mock = MockGreet::new();
    let mut order = Sequence::new();
    mock.expect_say_hello()
        .times(1)
        .in_sequence(&mut order)
        .returning(|_| Err(Status::unavailable("restarting")));
    mock.expect_say_hello().times(1).in_sequence(&mut order).returning(hello);
    let welcome = WelcomeDesk { greeter: mock }.welcome(&guests(&["ada"])).await;
    assert_eq!(welcome.greeted, ["hello ada"]);
}

// The retry is bounded: a service that stays down is reported, not retried forever.
#[tokio::test]
async fn unavailable_twice_is_reported_after_exactly_two_calls() {
    let mut mock = MockGreet::new();
    mock.expect_say_hello().times(2).returning(|_| Err(Status::unavailable("down")));
    let welcome = WelcomeDesk { greeter: mock }.welcome(&guests(&["ada"])).await;
    assert_eq!(welcome.failed, [("ada".to_owned(), Code::Unavailable)]);
}

// Other errors are not retried, and do not stop the desk greeting the others.
#[tokio::test]
async fn a_refusal_is_not_retried_and_the_others_are_still_greeted() {
    let mut mock = MockGreet::new();
    mock.expect_say_hello()
        .withf(|asked| asked == "mallory")
        .times(1)
        .returning(|_| Err(Status::permission_denied("not on the list")));
    mock.expect_say_hello().withf(|asked| asked == "ada").times(1).returning(hello);
    let welcome = WelcomeDesk { greeter: mock }.welcome(&guests(&["mallory", "ada"])).await;
    assert_eq!(welcome.greeted, ["hello ada"]);
    assert_eq!(welcome.failed, [("mallory".to_owned(), Code::PermissionDenied)]);
}

// What the tests above rely on: a mock whose expected call never came fails the test.
#[tokio::test]
#[should_panic(expected = "fewer than expected")]
async fn a_call_that_never_happens_fails_the_test() {
    let mut mock = MockGreet::new();
    mock.expect_say_hello().times(1).returning(hello);
    // A desk given no guests makes no call: the mock's expectation is unmet.
    let mut desk = WelcomeDesk { greeter: mock };
    desk.welcome(&[]).await;
    desk.greeter.checkpoint();
}

// The story's two mocks, on its default guests: what steps 1 and 2 print.
#[tokio::test]
async fn the_story_mocks_greet_retry_and_refuse_as_they_say() {
    let guests = guests(&["ada", " ", "bo"]);
    let mut desk = WelcomeDesk { greeter: mock_expecting(&["ada", "bo"]) };
    let welcome = desk.welcome(&guests).await;
    desk.greeter.checkpoint();
    assert_eq!(welcome.greeted, ["hello ada (from the mock)", "hello bo (from the mock)"]);
    assert_eq!(welcome.skipped, 1);

    let desk = WelcomeDesk { greeter: failing_mock(&["ada", "bo"]) };
    let expected = Welcome {
        greeted: vec!["hello ada (from the mock, on the retry)".into()],
        failed: vec![("bo".into(), Code::PermissionDenied)],
        skipped: 1,
    };
    assert_eq!(desk.welcome(&guests).await, expected);
}

// The in-process alternative: the real server, the real client, no socket.
#[tokio::test]
async fn the_real_greeter_in_process_greets_every_named_guest() {
    let client = in_process_client("node-x").await.unwrap();
    let desk = WelcomeDesk { greeter: GrpcGreet { client: Mutex::new(client) } };
    let welcome = desk.welcome(&guests(&["ada", "", "bo"])).await;
    assert_eq!(welcome.greeted, ["hello ada (from node-x)", "hello bo (from node-x)"]);
    assert_eq!(welcome.skipped, 1);
}

// The real transport gives real gRPC status codes: a server that is gone is
// Unavailable (or Unknown), and the desk records it instead of hanging.
#[tokio::test]
async fn a_lost_in_process_server_is_an_error_not_a_hang() {
    let (client_end, server_end) = tokio::io::duplex(1024);
    drop(server_end); // the server is gone before the first call
    let channel = Endpoint::from_static("http://in-process")
        .connect_with_connector_lazy(tower::service_fn(connect_once(client_end)));
    let desk =
        WelcomeDesk { greeter: GrpcGreet { client: Mutex::new(GreeterClient::new(channel)) } };
    let welcome = tokio::time::timeout(microkit::PATIENCE, desk.welcome(&guests(&["ada"])))
        .await
        .expect("a lost server must fail the call, not hang it");
    assert!(welcome.greeted.is_empty());
    assert_eq!(welcome.failed.len(), 1, "{welcome:?}");
}

#[test]
fn the_guests_flag_splits_on_commas_and_an_unknown_flag_is_refused() {
    let args = Args::try_parse_from(["mocking", "--guests", "ada,bo,cy"]).unwrap();
    assert_eq!(args.guests, ["ada", "bo", "cy"]);
    assert!(Args::try_parse_from(["mocking", "--colour"]).is_err());
}
