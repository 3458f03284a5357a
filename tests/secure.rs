//! The secure example as two processes: a mutual-TLS server that writes its CA and a
//! client certificate to a folder, and a client in another process that uses them; and a
//! client whose folder lacks them. (Each refusal is tested in the example itself.)

mod common;

use std::time::Duration;

use common::{example, run_within, text};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_client_process_calls_the_mutual_tls_server_process() {
    let certs = tempfile::tempdir().unwrap();
    let certs_path = certs.path().to_str().unwrap();

    let mut server = example("secure");
    server.args(["server", "--listen", "127.0.0.1:0", "--certs", certs_path]);
    let mut server = server.spawn().unwrap();
    let mut first = String::new();
    let mut stdout = BufReader::new(server.stdout.take().unwrap());
    tokio::time::timeout(LIMIT, stdout.read_line(&mut first))
        .await
        .expect("the server must announce its address")
        .unwrap();
    // "serving with mutual TLS on 127.0.0.1:PORT; ..."
    let addr = first.split(';').next().unwrap().split_whitespace().last().unwrap().to_owned();

    let mut client = example("secure");
    client.args(["client", "--connect", &addr, "--certs", certs_path, "--name", "bo"]);
    let output = run_within(client, LIMIT).await;
    assert!(output.status.success(), "client failed: {}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "hello bo, answered by secure-node\n");

    // A stop request: the server drains, prints its tally and exits 0, like every role.
    let pid = server.id().expect("the server is still running").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(LIMIT, server.wait()).await.expect("no exit").unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.unwrap();
    assert_eq!(status.code(), Some(0), "stdout after the signal: {rest}");
    assert_eq!(rest, "stopped on SIGTERM: calls served 1, handshakes refused 0\n");
}

#[tokio::test]
async fn a_client_without_certificates_names_the_missing_file() {
    let empty = tempfile::tempdir().unwrap();
    let mut client = example("secure");
    client.args(["client", "--connect", "127.0.0.1:9", "--certs", empty.path().to_str().unwrap()]);
    let output = run_within(client, LIMIT).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("error: reading") && stderr.contains("ca.pem"), "{stderr}");
}
