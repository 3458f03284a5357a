//! The health example's `node` role as a process, seen from outside: a standard Health
//! `Watch` sees SERVING, then NOT_SERVING when the node is asked to stop, then the end of
//! the stream as it drains; and Python's grpcio, with no code generated from our protos,
//! checks its health and calls SayHello through reflection alone. And a node of this topic
//! beside the trace topic's services on one NATS takes none of their calls.

mod common;

use common::terminate;

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use microkit::health::WireStatus;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const LIMIT: Duration = Duration::from_secs(60);

/// A `node` role over a private NATS: the child and the address it serves on.
async fn start_node(nats: &microkit_testing::NatsServer, id: &str) -> (Child, String) {
    let mut command = common::example("health");
    command.args(["node", "--id", id]).env("NATS_URL", nats.url());
    let mut child = command.spawn().expect("starting the node role");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    // "<id> serving greeter.v1.Greeter on 127.0.0.1:<port>; probes on http://..."
    let first = lines.next_line().await.unwrap().expect("the node says where it serves");
    let address = first.split_whitespace().nth(4).unwrap().trim_end_matches(';').to_owned();
    // Keep reading, so the node never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, address)
}

#[tokio::test]
async fn a_stopping_node_reports_not_serving_then_ends_the_watch_as_it_drains() {
    tokio::time::timeout(LIMIT, stopping_node()).await.expect("the stop test timed out");
}

async fn stopping_node() {
    let nats = microkit_testing::NatsServer::start().await.expect("this test needs nats-server");
    let (mut node, address) = start_node(&nats, "greeter-1").await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}")).unwrap();
    let channel = channel.connect().await.unwrap();
    let mut statuses = Box::pin(microkit::health::watch(channel, "").await.unwrap());
    assert_eq!(statuses.next().await.unwrap().unwrap(), WireStatus::Serving);

    terminate(&node);
    let mut seen = Vec::new();
    while let Some(status) = statuses.next().await {
        seen.push(status.expect("the stream ends cleanly, not with an error"));
    }
    assert_eq!(seen, [WireStatus::NotServing], "NOT_SERVING, then the end of the stream");
    let status = node.wait().await.unwrap();
    assert!(status.success(), "the node exits 0 after its stop: {status:?}");
    assert!(tokio::net::TcpStream::connect(&address).await.is_err(), "the listener is closed");
}

#[tokio::test]
async fn python_grpcio_checks_health_and_calls_say_hello_through_reflection_alone() {
    tokio::time::timeout(LIMIT, python_client()).await.expect("the Python test timed out");
}

async fn python_client() {
    let python = common::python();
    let nats = microkit_testing::NatsServer::start().await.expect("this test needs nats-server");
    let (node, address) = start_node(&nats, "greeter-py").await;
    let output = Command::new(python)
        .arg(common::root().join("scripts/grpc-reflect.py"))
        .arg(&address)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = common::text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", common::text(&output.stderr));
    assert_eq!(
        stdout,
        "health (server): SERVING\n\
         health greeter.v1.Greeter: SERVING\n\
         services: greeter.v1.Greeter, grpc.health.v1.Health, grpc.reflection.v1alpha.ServerReflection\n\
         SayHello: hello python from greeter-py\n"
    );
    terminate(&node);
}

/// The trace topic's gateway, greeter and directory on the NATS where a health node runs,
/// under an id that sorts before the trace greeter's: had both topics registered the same
/// service name, the gateway would have called the health node first.
#[tokio::test]
async fn a_health_node_beside_the_trace_topic_gets_none_of_its_calls() {
    tokio::time::timeout(LIMIT, two_topics()).await.expect("the two topics timed out");
}

async fn two_topics() {
    let nats = microkit_testing::NatsServer::start().await.expect("this test needs nats-server");
    let mut children = Vec::new();
    let mut ready = Vec::new();
    for (topic, args) in [
        ("health", &["node", "--id", "greeter-0"][..]),
        ("trace", &["directory"]),
        ("trace", &["greeter"]),
        ("trace", &["gateway"]),
    ] {
        let mut command = common::example(topic);
        command.args(args).env("NATS_URL", nats.url());
        let mut child = command.spawn().expect("starting a role");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        ready.push(common::next_line(&mut lines).await);
        // Keep reading, so no role blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        children.push(child);
    }
    // "greeter serving on <addr>, metrics on http://<addr>/metrics"
    let metrics = ready[2].split("metrics on ").nth(1).expect("the greeter's metrics").to_owned();
    let gateway = ready[3].strip_prefix("gateway listening on ").expect("the gateway").to_owned();

    // The gateway says it listens once it has seen every greeter listed: no probing needed.
    let http = microkit_http::Forwarder::default();
    let get = async |url: String| {
        let request = http::Request::get(url).body(axum::body::Body::empty()).unwrap();
        let response = http.send(request).await.expect("an answer");
        let status = response.status().as_u16();
        (status, microkit_http::body_text(response.into_body(), 1 << 20).await)
    };
    for n in 0..5 {
        let answer = get(format!("{gateway}/hello?name=n{n}")).await;
        assert_eq!(answer, (200, format!("hello n{n}")));
    }
    let (status, scrape) = get(metrics).await;
    assert_eq!(status, 200);
    let counted = r#"requests_total{service="greeter",method="greeter.v1.Greeter/SayHello"} "#;
    let reached = scrape.lines().find_map(|line| line.strip_prefix(counted)).map(str::trim);
    assert_eq!(reached, Some("5"), "calls that reached the trace greeter, of 5:\n{scrape}");

    for child in &mut children {
        terminate(child);
        let status = child.wait().await.unwrap();
        assert!(status.success(), "a role stopped with {status}");
    }
}
