//! transport across real processes, on a private nats-server: two `serve` instances share
//! the queue group, and when one stops the other takes every call; a stopping instance
//! answers every request already delivered to it; no single odd request (no reply subject, a
//! reply too large for the bus) ends an instance's NATS side; our client skips a discovery
//! answer it cannot read; Python's nats-py (a client nobody here wrote) finds our service
//! with `$SRV.PING`/`$SRV.INFO` and calls it; and our `client` calls a greeter that nats-py
//! registered.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Process, example, python, root, run_within, text};
use microkit::proto::greeter::{HelloReply, HelloRequest};
use microkit_testing::NatsServer;
use prost::Message;
use registry::{NatsRegistry, Registry};
use tokio::process::Command;

/// Only turns a hang into a failure.
const PATIENCE: Duration = Duration::from_secs(30);
/// The service's name in the registry and on NATS, and its endpoint's subject.
const SERVICE: &str = "transport-greeter";
const SUBJECT: &str = "transport-greeter.SayHello";

async fn nats() -> NatsServer {
    NatsServer::start().await.unwrap_or_else(|e| panic!("these tests need nats-server: {e:#}"))
}

/// An instance of our service, serving once this returns.
async fn serve(url: &str, id: &str) -> Process {
    let mut command = example("transport");
    command.args(["serve", "--id", id]).env("NATS_URL", url);
    let mut process = Process::spawn(command);
    let ready = format!("{id}: serving SayHello over HTTP/2 and as NATS service {SERVICE} 1.0.0");
    assert_eq!(process.line().await, ready);
    process
}

/// `count` calls of `greeter.SayHello` as any NATS client makes them; replies per node.
async fn calls(client: &async_nats::Client, count: usize) -> BTreeMap<String, usize> {
    let payload = Bytes::from(HelloRequest { name: "test".into() }.encode_to_vec());
    let mut by_node = BTreeMap::new();
    for n in 0..count {
        let reply = tokio::time::timeout(PATIENCE, client.request(SUBJECT, payload.clone()))
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
        "found transport-greeter 1.0.0 on node greeter-a\n\
         endpoint SayHello on transport-greeter.SayHello, queue group q\n\
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
    assert_eq!(
        theirs.line().await,
        "python-1: serving SayHello as NATS service transport-greeter 1.0.0"
    );

    let mut client = example("transport");
    client.args(["client", "--name", "rust", "--calls", "3"]).env("NATS_URL", server.url());
    let output = run_within(client, PATIENCE).await;
    assert!(output.status.success(), "our client: {}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        "found transport-greeter 1.0.0: python-1\n".to_owned()
            + &"hello rust from python-1\n".repeat(3)
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

fn signal(process: &Process, name: &str) {
    let pid = process.child.id().expect("still running").to_string();
    let status = std::process::Command::new("kill").args([name, &pid]).status().unwrap();
    assert!(status.success(), "kill {name} {pid}");
}

#[tokio::test]
async fn no_single_request_ends_an_instance_nats_side() {
    let server = nats().await;
    let ours = serve(&server.url(), "greeter-a").await;
    let client = async_nats::connect(server.url()).await.unwrap();

    // A plain publish (as `nats pub` sends): nobody waits for an answer.
    let hello = Bytes::from(HelloRequest { name: "nobody".into() }.encode_to_vec());
    client.publish(SUBJECT, hello).await.unwrap();
    // A request that fits the bus, whose reply ("hello " + the name + the node) would not.
    let name = "x".repeat(client.max_payload() - 16);
    let big = Bytes::from(HelloRequest { name }.encode_to_vec());
    assert!(big.len() <= client.max_payload());
    let answer = tokio::time::timeout(PATIENCE, client.request(SUBJECT, big))
        .await
        .expect("the caller of a reply too large hears why, instead of waiting")
        .unwrap_or_else(|e| panic!("the instance no longer answers: {e}"));
    let headers = answer.headers.expect("an error answer carries headers");
    assert_eq!(headers.get("Nats-Service-Error-Code").unwrap().as_str(), "500");
    let error = headers.get("Nats-Service-Error").unwrap().as_str();
    assert!(error.contains("exceeds the bus's max_payload"), "{error}");

    // The instance still serves, and stops as every role does.
    assert_eq!(calls(&client, 3).await, BTreeMap::from([("greeter-a".to_owned(), 3)]));
    let registry = NatsRegistry::new(
        microkit_backend::connect(&server.url(), Default::default()).await.unwrap(),
    );
    assert_eq!(registry.nodes(SERVICE).await.unwrap().len(), 1);
    let (last, status) = ours.stop().await;
    assert!(status.success(), "greeter-a exited with {status}");
    // Four answered (the refusal and the three calls); the plain publish had nobody to answer.
    assert_eq!(last, "greeter-a: stopped on SIGTERM: 4 calls served over NATS");
    assert!(registry.nodes(SERVICE).await.unwrap().is_empty(), "it left the registry");
}

/// A thousand callers at once while one instance is too busy to read (stopped with SIGSTOP,
/// so their requests pile up in its connection), then SIGTERM: it must answer every request
/// the server had already handed it before it leaves. Counted on both sides: the callers'
/// replies per node against what each instance says it served.
#[tokio::test]
async fn a_stopping_instance_answers_every_request_it_already_received() {
    const CALLERS: usize = 1000;
    let server = nats().await;
    let (a, b) = (serve(&server.url(), "greeter-a").await, serve(&server.url(), "greeter-b").await);
    // A plain subscriber sees every request the server routes: the sign that all are sent.
    let observer = async_nats::connect(server.url()).await.unwrap();
    let mut seen = observer.subscribe(SUBJECT).await.unwrap();
    // "No responders" to a request nobody listens for comes from the server once it has read
    // what the observer sent before: its subscription is in place.
    let probe = observer.request(observer.new_inbox(), Bytes::new());
    let probed = tokio::time::timeout(PATIENCE, probe).await.unwrap().unwrap_err();
    assert_eq!(probed.kind(), async_nats::RequestErrorKind::NoResponders);
    let client = Arc::new(async_nats::connect(server.url()).await.unwrap());

    signal(&a, "-STOP");
    let payload = Bytes::from(HelloRequest { name: "test".into() }.encode_to_vec());
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (client, payload) = (client.clone(), payload.clone());
            tokio::spawn(async move {
                let reply = tokio::time::timeout(PATIENCE, client.request(SUBJECT, payload)).await;
                let reply = reply.map_err(|_| "no reply".to_owned())?.map_err(|e| e.to_string())?;
                Ok::<_, String>(HelloReply::decode(reply.payload).expect("a HelloReply").node)
            })
        })
        .collect();
    for _ in 0..CALLERS {
        let next = tokio::time::timeout(PATIENCE, futures::StreamExt::next(&mut seen)).await;
        next.expect("every request is routed").expect("the observer's subscription");
    }
    signal(&a, "-TERM");
    signal(&a, "-CONT");

    let mut by_node = BTreeMap::<String, usize>::new();
    let mut failed = Vec::new();
    for caller in callers {
        match caller.await.unwrap() {
            Ok(node) => *by_node.entry(node).or_default() += 1,
            Err(error) => failed.push(error),
        }
    }
    assert!(failed.is_empty(), "{} of {CALLERS} requests unanswered: {failed:?}", failed.len());
    assert!(by_node.contains_key("greeter-a"), "greeter-a was handed some: {by_node:?}");
    let (last, status) = {
        let mut a = a;
        let last = a.line().await;
        (last, tokio::time::timeout(PATIENCE, a.child.wait()).await.unwrap().unwrap())
    };
    assert!(status.success(), "greeter-a exited with {status}");
    let served = by_node["greeter-a"];
    assert_eq!(last, format!("greeter-a: stopped on SIGTERM: {served} calls served over NATS"));
    let (last, status) = b.stop().await;
    assert!(status.success(), "greeter-b exited with {status}");
    let served = by_node.get("greeter-b").copied().unwrap_or(0);
    assert_eq!(last, format!("greeter-b: stopped on SIGTERM: {served} calls served over NATS"));
}

/// A discovery answer in the protocol's preview dialect (no `type`, as nats.go 1.22 sends)
/// and one that is no JSON at all, beside two instances of ours: the client reads the first,
/// skips the second with a warning, and calls.
#[tokio::test]
async fn our_client_reads_a_preview_discovery_answer_and_skips_an_unreadable_one() {
    let server = nats().await;
    let (a, b) = (serve(&server.url(), "greeter-a").await, serve(&server.url(), "greeter-b").await);
    let responder = async_nats::connect(server.url()).await.unwrap();
    let ping = format!("$SRV.PING.{SERVICE}");
    let mut pings = responder.subscribe(ping.clone()).await.unwrap();
    // Its own instance subject too: a request there proves it is subscribed.
    let mut own = responder.subscribe(format!("{ping}.PREVIEW1")).await.unwrap();
    let preview = format!(r#"{{"name":"{SERVICE}","id":"PREVIEW1","version":"1.0.0"}}"#);
    let answering = tokio::spawn({
        let responder = responder.clone();
        async move {
            loop {
                let request = tokio::select! {
                    Some(request) = futures::StreamExt::next(&mut pings) => request,
                    Some(request) = futures::StreamExt::next(&mut own) => request,
                    else => break,
                };
                let reply = request.reply.unwrap();
                responder.publish(reply.clone(), preview.clone().into()).await.unwrap();
                responder.publish(reply, "not json at all".into()).await.unwrap();
            }
        }
    });
    let probe = responder.request(format!("{ping}.PREVIEW1"), Bytes::new());
    tokio::time::timeout(PATIENCE, probe).await.unwrap().unwrap();

    let mut client = example("transport");
    client.args(["client", "--name", "rust", "--calls", "4"]).env("NATS_URL", server.url());
    let output = run_within(client, PATIENCE).await;
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "our client: {stderr}");
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[..3],
        [
            "found transport-greeter 1.0.0: PREVIEW1",
            "found transport-greeter 1.0.0: greeter-a",
            "found transport-greeter 1.0.0: greeter-b",
        ],
        "{stdout}"
    );
    assert_eq!(lines.len(), 7, "{stdout}");
    for line in &lines[3..] {
        assert!(line.starts_with("hello rust from greeter-"), "{stdout}");
    }
    assert!(stderr.contains("skipped an odd discovery answer"), "{stderr}");
    answering.abort();
    for instance in [a, b] {
        assert!(instance.stop().await.1.success());
    }
}
