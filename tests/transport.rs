//! transport across real processes, on a private nats-server: two `serve` instances share
//! the queue group, and when one stops the other takes every call; Python's nats-py (a
//! client nobody here wrote) finds our service with `$SRV.PING`/`$SRV.INFO` and calls it;
//! and our `client` calls a greeter that nats-py registered.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::{Process, example, python, root, run_within, text};
use microkit::nats::{INSTALL_HINT, NatsServer};
use microkit::proto::greeter::{HelloReply, HelloRequest};
use prost::Message;
use tokio::process::Command;

/// Only turns a hang into a failure.
const PATIENCE: Duration = Duration::from_secs(30);

async fn nats() -> NatsServer {
    NatsServer::start()
        .await
        .unwrap_or_else(|e| panic!("these tests need nats-server: {e}; {INSTALL_HINT}"))
}

/// An instance of our service, serving once this returns.
async fn serve(url: &str, id: &str) -> Process {
    let mut command = example("transport");
    command.args(["serve", "--id", id]).env("NATS_URL", url);
    let mut process = Process::spawn(command);
    let ready = format!("{id}: serving SayHello over HTTP/2 and as NATS service greeter 1.0.0");
    assert_eq!(process.line().await, ready);
    process
}

/// `count` calls of `greeter.SayHello` as any NATS client makes them; replies per node.
async fn calls(client: &async_nats::Client, count: usize) -> BTreeMap<String, usize> {
    let payload = Bytes::from(HelloRequest { name: "test".into() }.encode_to_vec());
    let mut by_node = BTreeMap::new();
    for n in 0..count {
        let reply =
            tokio::time::timeout(PATIENCE, client.request("greeter.SayHello", payload.clone()))
                .await
                .unwrap_or_else(|_| panic!("call {n} hung"))
                .unwrap_or_else(|e| panic!("call {n} failed: {e}"));
        let reply = HelloReply::decode(reply.payload).expect("a HelloReply");
        assert_eq!(reply.message, "hello test");
        *by_node.entry(reply.node).or_default() += 1;
    }
    by_node
}

#[tokio::test]
async fn two_instances_share_the_queue_group_and_it_routes_around_the_one_stopped() {
    let server = nats().await;
    let (a, b) = (serve(&server.url(), "greeter-a").await, serve(&server.url(), "greeter-b").await);
    let client = async_nats::connect(server.url()).await.unwrap();

    // 40 calls: both take a share (all 40 to one has a chance of 2 in a trillion).
    let before = calls(&client, 40).await;
    assert_eq!(before.keys().collect::<Vec<_>>(), ["greeter-a", "greeter-b"], "{before:?}");

    let (last, status) = b.stop().await;
    assert!(status.success(), "greeter-b exited with {status}");
    assert_eq!(
        last,
        format!("greeter-b: stopped on SIGTERM: {} calls served over NATS", before["greeter-b"])
    );

    // Nothing changed on the client's side, and no call fails: the server stopped choosing b.
    let after = calls(&client, 40).await;
    assert_eq!(after, BTreeMap::from([("greeter-a".to_owned(), 40)]));

    let (last, status) = a.stop().await;
    assert!(status.success(), "greeter-a exited with {status}");
    let served = before["greeter-a"] + 40;
    assert_eq!(last, format!("greeter-a: stopped on SIGTERM: {served} calls served over NATS"));
}

fn nats_py(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(python());
    command
        .arg(root().join("scripts").join("nats_service.py"))
        .args(["--url", url])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn python_finds_our_service_with_ping_and_info_and_calls_it() {
    let server = nats().await;
    let ours = serve(&server.url(), "greeter-a").await;

    let output = run_within(nats_py(&server.url(), &["call", "--name", "py"]), PATIENCE).await;
    assert!(output.status.success(), "nats_service.py call: {}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        "found greeter 1.0.0 on node greeter-a\n\
         endpoint SayHello on greeter.SayHello, queue group q\n\
         hello py from greeter-a\n\
         refused: 400 name is empty\n\
         stats: SayHello 2 requests, 1 errors\n"
    );
    let (last, status) = ours.stop().await;
    assert!(status.success());
    assert_eq!(last, "greeter-a: stopped on SIGTERM: 2 calls served over NATS");
}

#[tokio::test]
async fn our_client_calls_a_service_that_python_registered() {
    let server = nats().await;
    let mut theirs = Process::spawn(nats_py(&server.url(), &["serve", "--node", "python-1"]));
    assert_eq!(theirs.line().await, "python-1: serving SayHello as NATS service greeter 1.0.0");

    let mut client = example("transport");
    client.args(["client", "--name", "rust", "--calls", "3"]).env("NATS_URL", server.url());
    let output = run_within(client, PATIENCE).await;
    assert!(output.status.success(), "our client: {}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        "found greeter 1.0.0: python-1\n".to_owned() + &"hello rust from python-1\n".repeat(3)
    );
    let (last, status) = theirs.stop().await;
    assert!(status.success());
    assert_eq!(last, "python-1: stopped: 3 calls served");
}

#[tokio::test]
async fn the_roles_refuse_to_run_without_a_shared_nats() {
    let mut client = example("transport");
    client.args(["--backend", "memory", "client"]);
    let output = run_within(client, PATIENCE).await;
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("NATS_URL"), "{}", text(&output.stderr));
}
