//! The pubsub example's roles as separate processes, meeting on a private NATS server:
//! what a learner does across terminals.

mod common;

use std::time::Duration;

use common::{example, run_within, text};
use microkit_testing::NatsServer;
use tokio::io::{AsyncBufReadExt, BufReader};

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_subscriber_process_gets_what_a_publisher_process_sends() {
    let server = NatsServer::start().await.unwrap();

    let mut subscriber = example("pubsub");
    subscriber.env("NATS_URL", server.url()).args(["subscriber", "--service", "mailer"]);
    subscriber.args(["--max-events", "3"]);
    let mut subscriber = subscriber.spawn().unwrap();
    let mut lines = BufReader::new(subscriber.stdout.take().unwrap()).lines();

    // Publish only once the subscriber says it listens: earlier sign-ups would be lost
    // (at-most-once), which is the broker's rule, not a flaky test.
    let first = tokio::time::timeout(LIMIT, lines.next_line()).await.unwrap().unwrap();
    assert_eq!(first.as_deref(), Some("mailer: listening (Ctrl-C to stop)"));

    let mut publisher = example("pubsub");
    publisher.env("NATS_URL", server.url()).args(["publisher", "--users", "3", "--orders", "2"]);
    let published = run_within(publisher, LIMIT).await;
    assert!(published.status.success(), "{}", text(&published.stderr));
    assert_eq!(text(&published.stdout), "published 3 UserSignedUp and 2 OrderPlaced\n");

    let mut rest = Vec::new();
    while let Some(line) = tokio::time::timeout(LIMIT, lines.next_line()).await.unwrap().unwrap() {
        rest.push(line);
    }
    let status = tokio::time::timeout(LIMIT, subscriber.wait()).await.unwrap().unwrap();
    assert!(status.success());
    assert_eq!(
        rest,
        [
            "mailer: ada",
            "mailer: grace",
            "mailer: linus",
            "mailer: 3 handled, 0 undecodable skipped"
        ]
    );
}

#[tokio::test]
async fn a_role_without_nats_url_says_what_to_do() {
    let mut publisher = example("pubsub");
    publisher.arg("publisher");
    let output = run_within(publisher, LIMIT).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with("error: ") && stderr.contains("NATS_URL"), "{stderr}");
}

#[tokio::test]
async fn a_subscriber_stopped_by_sigterm_prints_its_tally_and_exits_0() {
    let server = NatsServer::start().await.unwrap();
    let mut subscriber = example("pubsub");
    subscriber.env("NATS_URL", server.url()).args(["subscriber", "--service", "billing"]);
    let mut subscriber = subscriber.spawn().unwrap();
    let mut lines = BufReader::new(subscriber.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(LIMIT, lines.next_line()).await.unwrap().unwrap();
    assert_eq!(first.as_deref(), Some("billing: listening (Ctrl-C to stop)"));

    let mut publisher = example("pubsub");
    publisher.env("NATS_URL", server.url()).args(["publisher", "--users", "0", "--orders", "2"]);
    assert!(run_within(publisher, LIMIT).await.status.success());
    for expected in ["billing: order-1 1000", "billing: order-2 2000"] {
        let line = tokio::time::timeout(LIMIT, lines.next_line()).await.unwrap().unwrap();
        assert_eq!(line.as_deref(), Some(expected));
    }

    let pid = subscriber.id().unwrap().to_string();
    let kill = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success());
    let rest = tokio::time::timeout(LIMIT, lines.next_line()).await.unwrap().unwrap();
    assert_eq!(rest.as_deref(), Some("billing: 2 handled, 0 undecodable skipped"));
    let status = tokio::time::timeout(LIMIT, subscriber.wait()).await.unwrap().unwrap();
    assert!(status.success(), "SIGTERM is a stop request, not a kill: {status}");
}
