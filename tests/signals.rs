//! Every long-running role of every example stops the same way, whichever of the usual
//! signals asks: SIGTERM (a process manager), SIGINT (ctrl-c) or SIGHUP (the terminal
//! closed). Each role is started, sent one signal once it says it is ready, and must exit 0,
//! print its tally, and, where it registered a node, be gone from the registry at once
//! (well within its TTL: it deregistered, it did not expire). One round per signal; the
//! roles of a round run side by side.
//!
//! (The shutdown, waitgroup and secure examples are tested in their own files.)
//!
//! And every role of the table, those files' included, takes a signal sent the moment its
//! ready line appears as a stop request: it armed its handlers before it said it was ready.

mod common;

use std::time::{Duration, Instant};

use common::roles::{Nats, Ready, Role, Running, node_ids, role, roles, spawn};
use microkit_testing::NatsServer;

/// A hang guard per step (start, stop), never a pace.
const LIMIT: Duration = Duration::from_secs(30);

/// The private NATS servers of one test run, and what each role is given.
struct Servers {
    main: NatsServer,
    clients: NatsServer,
    sidecar: NatsServer,
    web_serve: NatsServer,
}

impl Servers {
    fn url(&self, nats: Nats) -> Option<String> {
        match nats {
            Nats::None => None,
            Nats::Main | Nats::Own => Some(self.main.url()),
            Nats::Clients => Some(self.clients.url()),
            Nats::Sidecar => Some(self.sidecar.url()),
            Nats::WebServe => Some(self.web_serve.url()),
        }
    }
}

/// The roles of the shared table whose stop this file checks (those with a tally).
fn stopped_here(signal: &str) -> Vec<Role> {
    let certs = std::env::temp_dir().join("signals-certs-unused");
    roles(signal, &certs).into_iter().filter(|role| role.tally.is_some()).collect()
}

/// Starts `role`, waits until it is ready, sends it `signal`, and checks how it stopped.
async fn stop_with(role: Role, signal: &'static str, servers: &Servers) {
    let name = role.name();
    let url = servers.url(role.nats);
    let mut running: Running = spawn(&role, url.as_deref(), &[]);
    let mut seen = match running.ready(role.ready, LIMIT).await {
        Ok(line) => vec![line],
        Err(seen) => panic!("{name}: never said it was ready:\n{}", seen.join("\n")),
    };
    for (service, id) in &role.registers {
        let ids = node_ids(url.as_deref().unwrap(), service).await;
        assert!(ids.contains(id), "{name}: {service}/{id} not listed while it runs: {ids:?}");
    }

    let pid = running.child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill").args([&format!("-{signal}"), &pid]).status();
    assert!(sent.unwrap().success(), "kill -{signal} {pid}");
    let status = tokio::time::timeout(LIMIT, running.child.wait())
        .await
        .unwrap_or_else(|_| panic!("{name}: still running {LIMIT:?} after SIG{signal}"))
        .unwrap();
    let mut stdout = Vec::new();
    while let Some((is_stdout, line)) = running.lines.recv().await {
        if is_stdout {
            stdout.push(line.clone());
        }
        seen.push(line);
    }
    let output = seen.join("\n");
    assert_eq!(status.code(), Some(0), "{name} after SIG{signal}:\n{output}");
    let (starts, ends) = role.tally.as_ref().map(|(s, e)| (s.as_str(), *e)).unwrap();
    assert!(
        stdout.iter().any(|line| line.starts_with(starts) && line.ends_with(ends)),
        "{name}: no tally line after SIG{signal}:\n{output}"
    );
    for (service, id) in &role.registers {
        let ids = node_ids(url.as_deref().unwrap(), service).await;
        assert!(!ids.contains(id), "{name}: {service}/{id} still listed after SIG{signal}");
    }
}

/// What the clients call, on `nats`: a server that is not under test, so no call of theirs
/// can fail because a node of the round is stopping.
async fn fixture(nats: &NatsServer) -> Running {
    let fixture = role(
        "round-robin",
        &["server", "--name", "fixture", "--ttl-ms", "60000"],
        Nats::Clients,
        Ready::Stdout("serving greeter on"),
    );
    let mut fixture = spawn(&fixture, Some(&nats.url()), &[]);
    let listening = async {
        while let Some((is_stdout, line)) = fixture.lines.recv().await {
            if is_stdout {
                return line;
            }
        }
        panic!("the fixture server ended")
    };
    let listening = tokio::time::timeout(LIMIT, listening).await.expect("the fixture serves");
    assert!(listening.starts_with("fixture serving greeter on"), "{listening}");
    fixture
}

#[tokio::test]
async fn every_long_running_role_stops_cleanly_on_each_stop_signal() {
    let started = Instant::now();
    let nats = || async { NatsServer::start().await.unwrap() };
    let servers = Servers {
        main: nats().await,
        clients: nats().await,
        sidecar: nats().await,
        web_serve: nats().await,
    };

    let mut fixture = fixture(&servers.clients).await;

    for signal in ["TERM", "INT", "HUP"] {
        let round = Instant::now();
        let stops = stopped_here(signal).into_iter().map(|role| stop_with(role, signal, &servers));
        futures::future::join_all(stops).await;
        eprintln!("measured: the SIG{signal} round took {:?}", round.elapsed());
    }
    fixture.child.kill().await.unwrap();
    eprintln!("measured: {:?} in all", started.elapsed());
}

/// A role arms its signal handlers before it prints its ready line, so a signal sent the
/// moment that line appears is a stop request (exit 0), never the signal's default action,
/// which kills the process. Every role of the table alone (companions left out), one after
/// the other so that none shares a registry name with another running.
#[tokio::test]
async fn a_signal_the_moment_a_role_is_ready_is_a_stop_request() {
    let nats = NatsServer::start().await.unwrap();
    let clients = NatsServer::start().await.unwrap();
    let mut fixture = fixture(&clients).await;
    let certs = tempfile::tempdir().unwrap();
    let (started, table) = (Instant::now(), roles("at-once", certs.path()));
    let count = table.len();
    for role in table {
        let name = role.name();
        let url = match role.nats {
            Nats::None => None,
            Nats::Clients => Some(clients.url()),
            _ => Some(nats.url()),
        };
        let mut running = spawn(&role, url.as_deref(), &[]);
        let mut seen = match running.ready(role.ready, LIMIT).await {
            Ok(line) => vec![line],
            Err(seen) => panic!("{name}: never said it was ready:\n{}", seen.join("\n")),
        };
        let pid = running.child.id().unwrap().to_string();
        let sent = std::process::Command::new("kill").args(["-HUP", &pid]).status();
        assert!(sent.unwrap().success(), "kill -HUP {pid}");
        let status = tokio::time::timeout(LIMIT, running.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{name}: still running {LIMIT:?} after SIGHUP"))
            .unwrap();
        while let Some((_, line)) = running.lines.recv().await {
            seen.push(line);
        }
        assert_eq!(status.code(), Some(0), "{name}: {status} after SIGHUP:\n{}", seen.join("\n"));
    }
    fixture.child.kill().await.unwrap();
    eprintln!("measured: {count} roles signalled as they said ready, in {:?}", started.elapsed());
}
