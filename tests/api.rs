//! The api gateway as processes over a private NATS: its `gateway` role in front of the
//! Greeter, the proxy topic's Calculator and a failing Stock node, each a process of its own,
//! called by a client nobody here wrote: Python's standard library (`scripts/api_client.py`,
//! urllib only). A unary call, a stream as NDJSON and as server-sent events, and each refusal
//! the edge makes. Without python3 this test fails, saying so; it never skips.

mod common;

use std::time::Duration;

use common::Process;
use microkit_testing::NatsServer;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(90);
const SECRET: &str = "the test's secret";

#[tokio::test]
async fn a_python_client_calls_through_the_gateway_and_meets_each_refusal() {
    tokio::time::timeout(LIMIT, through_the_gateway()).await.expect("the api test timed out");
}

fn role(nats: &NatsServer, args: &[&str]) -> Process {
    let mut command = common::example("api");
    command.env("NATS_URL", nats.url()).args(args);
    Process::spawn(command)
}

/// A token signed by the example's own `token` role.
async fn token(sub: &str, scope: &str) -> String {
    let mut command = common::example("api");
    command.args(["token", "--secret", SECRET, "--sub", sub, "--scope", scope]);
    let output = common::run_within(command, Duration::from_secs(30)).await;
    assert!(output.status.success(), "{}", common::text(&output.stderr));
    common::text(&output.stdout).trim().to_owned()
}

async fn through_the_gateway() {
    let nats = NatsServer::start().await.expect("the api test needs nats-server");
    let mut greeter = role(&nats, &["greeter", "--id", "greeter-1"]);
    assert!(greeter.line().await.starts_with("greeter-1 serving greeter.v1.Greeter on"));
    let mut calc = role(&nats, &["calc", "--id", "calc-1"]);
    assert!(calc.line().await.starts_with("calc-1 serving calc.v1.Calculator on"));
    let mut stock = role(&nats, &["stock", "--id", "stock-1", "--revision", "2", "--failing"]);
    assert!(stock.line().await.starts_with("stock-1 serving stock.v1.Stock on"));
    let mut gateway = role(
        &nats,
        &[
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--secret",
            SECRET,
            "--burst",
            "12",
            "--per-second",
            "0.1",
            "--breaker-threshold",
            "2",
            "--breaker-pause-ms",
            "60000",
        ],
    );
    let ready = gateway.line().await;
    // "gateway listening on http://127.0.0.1:<port>; ctrl-c stops it"
    let url = ready.split_whitespace().nth(3).unwrap().trim_end_matches(';').to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{ready}");

    let ada = token("ada", "greeter.v1.Greeter calc.v1.Calculator stock.v1.Stock").await;
    let bo = token("bo", "greeter.v1.Greeter/SayHello").await;
    let cy = token("cy", "greeter.v1.Greeter").await;
    let mut python = tokio::process::Command::new("python3");
    python.arg(common::root().join("scripts/api_client.py")).args([&url, &ada, &bo, &cy]);
    let output = python.output().await.expect("tests/api.rs needs python3 on PATH");
    assert!(output.status.success(), "api_client.py failed: {}", common::text(&output.stderr));
    let calls: Vec<Value> = common::text(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let named =
        |name: &str| -> Vec<&Value> { calls.iter().filter(|c| c["name"] == name).collect() };
    let one = |name: &str| named(name)[0].clone();
    let refused = |name: &str, status: u16, code: &str| {
        let call = one(name);
        assert_eq!(call["status"], status, "{name}: {call}");
        assert_eq!(call["body"]["code"], code, "{name}: {call}");
        call
    };

    let unary = one("unary");
    assert_eq!(unary["status"], 200, "{unary}");
    assert_eq!(unary["body"], json!({"message": "hello py", "node": "greeter-1"}));
    assert_eq!(one("int64")["body"], json!({"sum": "6", "node": "calc-1"}), "int64 as a string");
    let ndjson = one("ndjson");
    assert_eq!(ndjson["type"], "application/x-ndjson");
    let lines: Vec<Value> = ndjson["body"]
        .as_str()
        .expect("three lines are no one JSON document")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{ndjson}");
    assert_eq!(lines[2], json!({"message": "hello py", "node": "greeter-1", "seq": 3}));
    let sse = one("sse");
    assert_eq!(sse["type"], "text/event-stream");
    let events = "data: {\"n\":1,\"node\":\"calc-1\"}\n\ndata: {\"n\":2,\"node\":\"calc-1\"}\n\n";
    assert_eq!(sse["body"], events);

    refused("no token", 401, "UNAUTHENTICATED");
    let bad = refused("bad token", 401, "UNAUTHENTICATED");
    assert_eq!(bad["body"]["message"], "the token's signature does not verify");
    let scope = refused("no scope", 403, "PERMISSION_DENIED");
    assert_eq!(scope["body"]["message"], "bo's token has no scope for calc.v1.Calculator/Add");
    refused("too big", 413, "RESOURCE_EXHAUSTED");
    let deep = refused("too deep", 400, "INVALID_ARGUMENT");
    assert_eq!(deep["body"]["message"], "the JSON nests 40 deep, past the bound of 32");
    refused("bad json", 400, "INVALID_ARGUMENT");
    assert_eq!(one("get")["status"], 405);

    let burst: Vec<u64> = named("burst").iter().map(|c| c["status"].as_u64().unwrap()).collect();
    assert_eq!(burst, [[200; 12].as_slice(), &[429]].concat(), "a bucket of 12");
    let limited = named("burst")[12];
    assert_eq!(limited["body"]["code"], "RESOURCE_EXHAUSTED");
    assert_eq!(limited["retry_after"], "10", "one token every 10 s: {limited}");

    let failing = named("failing");
    for call in &failing[..2] {
        assert_eq!(call["status"], 503, "{call}");
        assert_eq!(call["body"]["message"], "the stock database is unreachable");
    }
    assert_eq!(failing[2]["status"], 503);
    let open = "the circuit breaker of stock.v1.Stock is open: refused without a call";
    assert_eq!(failing[2]["body"]["message"], open);
    assert_eq!(failing[2]["retry_after"], "60", "{}", failing[2]);
    let transitions = gateway.line().await;
    assert_eq!(transitions, "breaker of stock.v1.Stock: closed -> open");

    // Every role stops the same way: SIGTERM, its tally, exit 0. The failing node was reached
    // twice: the open breaker answered the third call itself.
    let (last, status) = gateway.stop().await;
    assert!(status.success());
    assert_eq!(last, "gateway stopped: 19 calls sent to a node, 8 answered by the gateway");
    let mut stock_lines = Vec::new();
    let pid = stock.child.id().unwrap().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    stock_lines.push(stock.line().await);
    stock_lines.push(stock.line().await);
    assert_eq!(stock_lines, ["stock-1 deregistered and stopped", "stock-1 was reached by 2 calls"]);
    assert!(stock.child.wait().await.unwrap().success());
    for node in [greeter, calc] {
        let (last, status) = node.stop().await;
        assert!(last.ends_with("deregistered and stopped") && status.success(), "{last}");
    }
}
