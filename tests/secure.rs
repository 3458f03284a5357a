//! The secure example as two processes: a mutual-TLS server that writes its CA and a
//! client certificate to a folder, and a client in another process that uses them; a
//! client whose folder lacks them; and how the server guards the folder with the key in it.
//! (Each refusal of the demo is tested in the example itself.)

mod common;

use std::path::Path;
use std::time::Duration;

use common::{example, run_within, text};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout};

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_client_process_calls_the_mutual_tls_server_process() {
    let certs = tempfile::tempdir().unwrap();
    let certs_path = certs.path().to_str().unwrap();
    let (mut server, mut stdout, first) = start_server(certs.path()).await;
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

/// Starts `secure server` on a free port with `certs`; returns it once it has announced
/// its address, with the rest of its stdout.
async fn start_server(certs: &Path) -> (Child, BufReader<ChildStdout>, String) {
    let mut server = example("secure");
    server.args(["server", "--listen", "127.0.0.1:0", "--certs", certs.to_str().unwrap()]);
    let mut server = server.spawn().unwrap();
    let mut stdout = BufReader::new(server.stdout.take().unwrap());
    let mut first = String::new();
    tokio::time::timeout(LIMIT, stdout.read_line(&mut first))
        .await
        .expect("the server must announce its address")
        .unwrap();
    (server, stdout, first)
}

#[cfg(unix)]
#[tokio::test]
async fn the_server_replaces_a_planted_link_and_keeps_the_key_to_the_user() {
    use std::os::unix::fs::PermissionsExt;
    let certs = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let victim = elsewhere.path().join("notes.txt");
    std::fs::write(&victim, "the user's own file").unwrap();
    std::os::unix::fs::symlink(&victim, certs.path().join("client.key")).unwrap();

    let (mut server, _, first) = start_server(certs.path()).await;
    server.kill().await.unwrap();
    assert!(first.starts_with("serving with mutual TLS on "), "{first}");
    let victim_now = std::fs::read_to_string(&victim).unwrap();
    assert_eq!(victim_now, "the user's own file", "the key went through the planted link");
    let key = std::fs::symlink_metadata(certs.path().join("client.key")).unwrap();
    assert!(key.is_file(), "client.key must be a file of its own, not a link");
    assert_eq!(key.permissions().mode() & 0o777, 0o600, "the key is for the user's eyes only");
}

#[cfg(unix)]
#[tokio::test]
async fn the_server_refuses_a_folder_others_can_write_to() {
    use std::os::unix::fs::PermissionsExt;
    let certs = tempfile::tempdir().unwrap();
    std::fs::set_permissions(certs.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut server = example("secure");
    server.args(["server", "--listen", "127.0.0.1:0", "--certs", certs.path().to_str().unwrap()]);
    let output = run_within(server, LIMIT).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("can be written by other users (mode 777)"), "{stderr}");
    assert!(output.stdout.is_empty(), "it served anyway");
    assert!(!certs.path().join("client.key").exists(), "a key was left in the open folder");
}
