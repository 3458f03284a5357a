//! The sidecar as processes: the example's `serve` role, and a real Python program
//! (`scripts/shouter.py`) that registers through it, is called through it, calls the
//! Greeter through it, and deregisters through it when stopped. Without python3 this test
//! fails, saying so; it never skips.

mod common;

use std::process::Stdio;
use std::time::Duration;

use axum::body::Body;
use http::Method;
use microkit_http::{Forwarder, body_text};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_python_program_joins_is_called_and_leaves_through_the_sidecar() {
    tokio::time::timeout(LIMIT, python_through_sidecar())
        .await
        .expect("the sidecar test timed out");
}

async fn python_through_sidecar() {
    let mut sidecar = common::example("sidecar");
    sidecar.args(["serve", "--port", "0"]);
    let (mut sidecar, mut sidecar_out) = spawn(sidecar);
    let first = sidecar_out.next_line().await.unwrap().expect("the sidecar prints its URL");
    // "sidecar listening on http://127.0.0.1:<port>; ctrl-c stops"
    let url = first.split_whitespace().nth(3).unwrap().trim_end_matches(';').to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{first}");

    let script = common::root().join("scripts/shouter.py");
    let mut python = Command::new("python3");
    python.arg(&script).args(["--sidecar", &url, "--id", "shouter-test"]);
    let (mut python, mut python_out) = spawn(python);
    let registered =
        python_out.next_line().await.unwrap().expect("shouter.py prints when registered");
    assert!(registered.starts_with("shouter/shouter-test registered through"), "{registered}");

    let nodes = request(&url, Method::GET, "/registry/shouter", "").await;
    assert_eq!(nodes.0, 200);
    assert_eq!(nodes.1[0]["id"], "shouter-test");
    assert_eq!(nodes.1[0]["metadata"]["protocol"], "http");

    // Another local program cannot add a node to a service that is not its own: not to the
    // Python program's (it lacks the token), not to the Greeter (registered without the
    // sidecar). Either would have received a share of that service's calls.
    let address = nodes.1[0]["address"].as_str().unwrap().to_owned();
    for (service, expected) in [("shouter", 403), ("greeter", 409)] {
        let join = json!({"service": service, "id": "0-evil", "address": address});
        let answer = request(&url, Method::POST, "/registry", &join.to_string()).await;
        assert_eq!(answer.0, expected, "{service}: {answer:?}");
    }
    let listed = request(&url, Method::GET, "/registry/greeter", "").await.1;
    assert_eq!(listed.as_array().unwrap().len(), 1, "only greeter-1: {listed}");

    // Called through the sidecar: the answer is the Python program's own.
    let answer = request(&url, Method::POST, "/shouter/upper", r#"{"text":"from rust"}"#).await;
    assert_eq!(answer, (200, json!({"text": "FROM RUST", "by": "shouter-test"})));
    // And the Python program calls the gRPC Greeter through the sidecar.
    let answer = request(&url, Method::POST, "/shouter/greet", r#"{"name":"zed"}"#).await;
    assert_eq!(answer, (200, json!({"greeter said": "hello zed", "shouted": "HELLO ZED"})));

    // Mistakes a program could make are refused before NATS sees them: a 4 KiB name would
    // have cost the sidecar its NATS connection, a TTL over NATS's limit was a 502.
    let long = "x".repeat(4096);
    let answer = request(&url, Method::POST, &format!("/{long}/SayHello"), "{}").await;
    assert_eq!(answer.0, 400, "{answer:?}");
    let answer = request(&url, Method::POST, &format!("/broker/{long}"), "{}").await;
    assert_eq!(answer.0, 400, "{answer:?}");
    let join = json!({"service": "py", "id": "py-1", "address": "127.0.0.1:9", "ttl_secs": 601});
    let answer = request(&url, Method::POST, "/registry", &join.to_string()).await;
    assert_eq!(answer.0, 400, "{answer:?}");
    let answer = request(&url, Method::POST, "/shouter/a%20b", "{}").await;
    assert_eq!(answer.0, 400, "{answer:?}");
    let answer = request(&url, Method::POST, "/greeter/SayHello", r#"{"name":"still"}"#).await;
    assert_eq!(answer.0, 200, "the sidecar still reaches NATS: {answer:?}");

    // SIGTERM: the program deregisters on its way out, so it is gone at once, not at TTL.
    let pid = python.id().expect("running").to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let left = python_out.next_line().await.unwrap().expect("shouter.py says it left");
    assert_eq!(left, "shouter/shouter-test deregistered: 200");
    assert!(python.wait().await.unwrap().success());
    assert_eq!(request(&url, Method::GET, "/registry/shouter", "").await, (200, json!([])));
    let answer = request(&url, Method::POST, "/shouter/upper", "{}").await;
    assert_eq!(answer, (503, json!({"error": "no node for service \"shouter\""})));

    // The sidecar stops the same way: SIGTERM, its tally, exit 0.
    let pid = sidecar.id().expect("running").to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let tally = sidecar_out.next_line().await.unwrap().expect("the sidecar prints its tally");
    assert!(tally.starts_with("sidecar stopped after ") && tally.ends_with(" refused)"), "{tally}");
    assert!(sidecar.wait().await.unwrap().success(), "a stopped sidecar exits 0");
}

/// Starts `command` with piped stdout (killed when the child is dropped).
fn spawn(mut command: Command) -> (Child, Lines<BufReader<ChildStdout>>) {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
    let program = command.as_std().get_program().to_string_lossy().into_owned();
    let mut child = command.spawn().unwrap_or_else(|e| {
        panic!("cannot start {program} ({e}): the sidecar test needs python3 on PATH")
    });
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

async fn request(base: &str, method: Method, path: &str, body: &str) -> (u16, Value) {
    let request = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = Forwarder::default().send(request).await.unwrap();
    let status = response.status().as_u16();
    let text = body_text(response.into_body(), 1 << 16).await;
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")))
}
