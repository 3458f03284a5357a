//! The secure example as two processes: a mutual-TLS server that writes its CA and a
//! client certificate to a folder, and a client in another process that uses them; a
//! client whose folder lacks them; and how the server guards the folder with the key in it.
//! (Each refusal of the demo is tested in the example itself.)

mod common;

use std::path::Path;
use std::time::Duration;

use common::{example, run_within, text};
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use secure::Authority;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_client_process_calls_the_mutual_tls_server_process() {
    let certs = tempfile::tempdir().unwrap();
    let certs_path = certs.path().to_str().unwrap();
    let (server, stdout, addr) = start_server(certs.path()).await;

    let mut client = example("secure");
    client.args(["client", "--connect", &addr, "--certs", certs_path, "--name", "bo"]);
    let output = run_within(client, LIMIT).await;
    assert!(output.status.success(), "client failed: {}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "hello bo, answered by secure-node\n");

    // A stop request: the server drains, prints its tally and exits 0, like every role.
    let (code, rest, stderr) = stop(server, stdout).await;
    assert_eq!(code, Some(0), "stdout after the signal: {rest}; stderr: {stderr}");
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
/// its address, with the rest of its stdout and that address.
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
    // "serving with mutual TLS on 127.0.0.1:PORT; ..."
    assert!(first.starts_with("serving with mutual TLS on "), "{first}");
    let addr = first.split(';').next().unwrap().split_whitespace().last().unwrap().to_owned();
    (server, stdout, addr)
}

#[tokio::test]
async fn a_connection_that_never_says_hello_is_cut_after_the_handshake_timeout() {
    let certs = tempfile::tempdir().unwrap();
    let (server, stdout, addr) = start_server(certs.path()).await;
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    // The server's handshake timeout is 5 s; a connection still open after 10 s was kept.
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut seen)).await;
    assert!(read.is_ok(), "the silent connection was still open after 10 s");
    assert!(started.elapsed() >= Duration::from_secs(4), "cut before the client had its time");
    let (code, _, stderr) = stop(server, stdout).await;
    assert_eq!(code, Some(0));
    assert!(stderr.contains("the client never finished its handshake"), "{stderr}");
}

#[tokio::test]
async fn a_real_client_is_served_at_once_past_a_crowd_of_silent_connections() {
    let certs = tempfile::tempdir().unwrap();
    let (server, stdout, addr) = start_server(certs.path()).await;
    // Four times the 16 handshakes the server once ran at a time, each connected and silent.
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let read = |file: &str| std::fs::read_to_string(certs.path().join(file)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(read("client.pem"), read("client.key")))
        .domain_name("localhost");
    let started = std::time::Instant::now();
    let call = async {
        let channel = Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)?;
        let mut greeter = GreeterClient::new(channel.connect().await?);
        let reply = greeter.say_hello(HelloRequest { name: "ada".into() }).await?;
        anyhow::Ok(reply.into_inner().message)
    };
    let reply = tokio::time::timeout(LIMIT, call).await.expect("no answer within 30 s");
    let waited = started.elapsed();
    assert_eq!(reply.unwrap(), "hello ada");
    // A silent connection is cut after 5 s: a client that queued behind even one batch of
    // them waited at least that long.
    assert!(waited < Duration::from_secs(4), "the real client waited {waited:?}");
    eprintln!("served after {waited:?}, past 64 silent connections");
    drop(silent);
    let (code, rest, stderr) = stop(server, stdout).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(rest.starts_with("stopped on SIGTERM: calls served 1,"), "{rest}");
}

/// Sends SIGTERM to `server`, and only to it; returns its exit code, stdout and stderr.
async fn stop(
    mut server: Child,
    mut stdout: BufReader<ChildStdout>,
) -> (Option<i32>, String, String) {
    let pid = server.id().expect("the server is still running").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(LIMIT, server.wait()).await.expect("no exit").unwrap();
    let (mut rest, mut stderr) = (String::new(), String::new());
    stdout.read_to_string(&mut rest).await.unwrap();
    server.stderr.take().unwrap().read_to_string(&mut stderr).await.unwrap();
    (status.code(), rest, stderr)
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

    let (mut server, _, _) = start_server(certs.path()).await;
    server.kill().await.unwrap();
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

#[tokio::test]
async fn each_refusal_of_the_roles_is_one_clear_sentence() {
    let certs = tempfile::tempdir().unwrap();
    let (server, stdout, addr) = start_server(certs.path()).await;
    let ca_pem = std::fs::read_to_string(certs.path().join("ca.pem")).unwrap();
    let client = |folder: &Path| {
        let mut client = example("secure");
        client.args(["client", "--connect", &addr, "--certs", folder.to_str().unwrap()]);
        run_within(client, LIMIT)
    };

    // A client certificate from another CA: the server refuses it after the handshake.
    let other_ca = tempfile::tempdir().unwrap();
    let stranger = Authority::new("other CA").unwrap().client("client-1").unwrap();
    std::fs::write(other_ca.path().join("ca.pem"), &ca_pem).unwrap();
    std::fs::write(other_ca.path().join("client.pem"), &stranger.cert_pem).unwrap();
    std::fs::write(other_ca.path().join("client.key"), &stranger.key_pem).unwrap();
    let output = client(other_ca.path()).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: the server turned this client away ("), "{stderr}");
    assert!(stderr.ends_with("most likely over its certificate; the server's log says why\n"));
    assert_eq!(stderr.lines().count(), 1, "one sentence, no dump: {stderr}");

    // A garbled CA file: named, instead of a verdict on the server's certificate.
    let garbled = tempfile::tempdir().unwrap();
    for file in ["client.pem", "client.key"] {
        std::fs::copy(certs.path().join(file), garbled.path().join(file)).unwrap();
    }
    std::fs::write(garbled.path().join("ca.pem"), "not a certificate\n").unwrap();
    let output = client(garbled.path()).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let named =
        format!("error: {} holds no PEM certificate\n", garbled.path().join("ca.pem").display());
    assert_eq!(stderr, named);

    // A plaintext client: it learns little, but the server's log says what happened.
    let plaintext = tokio::time::timeout(LIMIT, async {
        let mut greeter = GreeterClient::connect(format!("http://{addr}")).await?;
        greeter.say_hello(HelloRequest { name: "eve".into() }).await?;
        anyhow::Ok(())
    });
    assert!(plaintext.await.expect("the plaintext call hung").is_err(), "plaintext was served");

    let (code, _, log) = stop(server, stdout).await;
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("refused a client: client certificate signed by an unknown CA"), "{log}");
    assert!(log.contains("refused a client: not a TLS handshake"), "{log}");
}
