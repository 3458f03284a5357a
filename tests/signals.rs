//! Every long-running role of every example stops the same way, whichever of the usual
//! signals asks: SIGTERM (a process manager), SIGINT (ctrl-c) or SIGHUP (the terminal
//! closed). Each role is started, sent one signal once it says it is ready, and must exit 0,
//! print its tally, and, where it registered a node, be gone from the registry at once
//! (well within its TTL: it deregistered, it did not expire). One round per signal; the
//! roles of a round run side by side.
//!
//! (The shutdown, waitgroup and secure examples are tested in their own files.)

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::example;
use microkit::backend::{BackendArgs, BackendChoice};
use microkit::nats::{INSTALL_HINT, NatsServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;

/// A hang guard per step (start, stop), never a pace.
const LIMIT: Duration = Duration::from_secs(30);

/// Which private NATS server a role uses. Roles that would collide in one registry (two
/// that both register `greeter-1`), or clients that must only find a node nobody stops,
/// get one of their own.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Nats {
    None,
    /// The roles under test that need NATS.
    Main,
    /// The clients, with a server (not under test) to call.
    Clients,
    /// The sidecar: it registers `greeter-1`.
    Sidecar,
    /// `web serve`: it registers `greeter-1` too.
    WebServe,
}

/// Where a role says it is ready: the first line of stdout or stderr that starts so.
#[derive(Clone, Copy)]
enum Ready {
    Stdout(&'static str),
    Stderr(&'static str),
}

struct Role {
    example: &'static str,
    args: Vec<String>,
    nats: Nats,
    ready: Ready,
    /// The tally: a stdout line that starts with the first part and ends with the second.
    tally: (String, &'static str),
    /// The nodes it registers, as (service, id).
    registers: Vec<(&'static str, String)>,
}

fn role(example: &'static str, args: &[&str], nats: Nats, ready: Ready) -> Role {
    Role {
        example,
        args: args.iter().map(|a| a.to_string()).collect(),
        nats,
        ready,
        tally: (String::new(), ""),
        registers: Vec::new(),
    }
}

impl Role {
    fn tally(mut self, starts: impl Into<String>, ends: &'static str) -> Self {
        self.tally = (starts.into(), ends);
        self
    }

    fn registers(mut self, service: &'static str, id: impl Into<String>) -> Self {
        self.registers.push((service, id.into()));
        self
    }

    fn name(&self) -> String {
        format!("{} {}", self.example, self.args.join(" "))
    }
}

/// Every long-running role, named for this round's signal where it takes a name.
fn roles(signal: &str) -> Vec<Role> {
    let sig = signal.to_lowercase();
    let (rr, shard, hello) = (format!("rr-{sig}"), format!("shard-{sig}"), format!("hello-{sig}"));
    use Nats::*;
    use Ready::*;
    vec![
        role("pubsub", &["subscriber", "--service", "mailer"], Main, Stdout("mailer: listening"))
            .tally("mailer: 0 handled, 0 undecodable skipped", ""),
        role("event", &["serve", "--listen", "127.0.0.1:0"], Main, Stdout("serving POST"))
            .tally("served: 0 accepted, 0 refused", ""),
        role("event", &["audit"], Main, Stdout("audit: resuming"))
            .tally("audit: 0 events taken, 0 skipped", ""),
        role("tunnel", &["node-b", "--listen", "127.0.0.1:0"], None, Stdout("node-b listens"))
            .tally("node-b stopped: 0 link(s), 0 session(s) served, every call finished", ""),
        role(
            "round-robin",
            &["server", "--name", &rr, "--ttl-ms", "60000"],
            Main,
            Stdout("serving greeter on"),
        )
        .tally(format!("{rr} deregistered and stopped after 0 calls"), "")
        .registers("greeter", &rr),
        role(
            "round-robin",
            &["client", "--calls", "0", "--interval-ms", "50"],
            Clients,
            Stdout("call 1: "),
        )
        .tally("", " calls, 0 failed"),
        role("sharding", &["server", "--name", &shard], Main, Stdout("serving greeter on"))
            .tally(format!("{shard} deregistered and stopped after 0 calls"), "")
            .registers("greeter", &shard),
        role(
            "sharding",
            &["client", "--user", "ada", "--calls", "0", "--interval-ms", "50"],
            Clients,
            Stdout("call 1"),
        )
        .tally("", " calls, 0 failed"),
        role("sidecar", &["serve", "--port", "0"], Sidecar, Stdout("sidecar listening on"))
            .tally("sidecar stopped after 0 requests (0 refused)", "")
            .registers("greeter", "greeter-1"),
        role("web", &["serve", "--port", "0"], WebServe, Stdout("open http://127.0.0.1:"))
            .tally("stopped: the gateway forwarded 0 request(s), hello-1 served 0", "")
            .registers("greeter", "greeter-1")
            .registers("web", "hello-1"),
        role("web", &["service", "--id", &hello], Main, Stdout("serving web service hello on"))
            .tally(format!("{hello} stopped: 0 request(s) served"), "")
            .registers("web", &hello)
            .registers("greeter", format!("greeter-for-{hello}")),
        role("web", &["gateway", "--port", "0"], Main, Stdout("gateway on http://127.0.0.1:"))
            .tally("gateway stopped: 0 request(s) forwarded", ""),
        role("stream", &["server", "--addr", "127.0.0.1:0"], None, Stderr("serving the stream"))
            .tally(
                "server stopped: names read 0, half-closes seen 0, clients gone mid-stream 0",
                "",
            ),
    ]
}

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
            Nats::Main => Some(self.main.url()),
            Nats::Clients => Some(self.clients.url()),
            Nats::Sidecar => Some(self.sidecar.url()),
            Nats::WebServe => Some(self.web_serve.url()),
        }
    }
}

/// The ids of `service`'s nodes, as another process sees them in the NATS registry.
async fn node_ids(nats_url: &str, service: &str) -> Vec<String> {
    let backend = BackendArgs { backend: BackendChoice::Nats };
    let backend = backend.connect_with(Some(nats_url)).await.expect("reaching the test's NATS");
    let nodes = backend.registry().nodes(service).await.expect("reading the registry");
    nodes.into_iter().map(|node| node.id).collect()
}

/// A running role: its stdout and stderr lines, tagged, as they come.
struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<(bool, String)>,
}

fn spawn(role: &Role, nats_url: Option<&str>) -> Running {
    let mut command = example(role.example);
    command.args(&role.args).stderr(Stdio::piped());
    match nats_url {
        Some(url) => command.env("NATS_URL", url),
        None => command.env("MICRO_BACKEND", "memory"),
    };
    let mut child = command.spawn().expect("spawning an example");
    let (send, lines) = mpsc::unbounded_channel();
    let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    for (is_stdout, mut reader) in [
        (true, Box::new(stdout) as Box<dyn LineSource>),
        (false, Box::new(stderr) as Box<dyn LineSource>),
    ] {
        let send = send.clone();
        tokio::spawn(async move {
            while let Some(line) = reader.next().await {
                if send.send((is_stdout, line)).is_err() {
                    break;
                }
            }
        });
    }
    Running { child, lines }
}

/// Stdout and stderr read line by line, behind one type.
trait LineSource: Send {
    fn next(&mut self) -> std::pin::Pin<Box<dyn Future<Output = Option<String>> + Send + '_>>;
}

impl<R: tokio::io::AsyncBufRead + Unpin + Send> LineSource for tokio::io::Lines<R> {
    fn next(&mut self) -> std::pin::Pin<Box<dyn Future<Output = Option<String>> + Send + '_>> {
        Box::pin(async move { self.next_line().await.ok().flatten() })
    }
}

/// Starts `role`, waits until it is ready, sends it `signal`, and checks how it stopped.
async fn stop_with(role: Role, signal: &'static str, servers: &Servers) {
    let name = role.name();
    let url = servers.url(role.nats);
    let mut running = spawn(&role, url.as_deref());
    let mut seen = Vec::new();
    let ready = async {
        while let Some((is_stdout, line)) = running.lines.recv().await {
            let matched = match role.ready {
                Ready::Stdout(start) => is_stdout && line.contains(start),
                Ready::Stderr(start) => !is_stdout && line.contains(start),
            };
            seen.push(line);
            if matched {
                return true;
            }
        }
        false
    };
    let ready = tokio::time::timeout(LIMIT, ready).await.unwrap_or(false);
    assert!(ready, "{name}: never said it was ready:\n{}", seen.join("\n"));
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
    let (starts, ends) = (&role.tally.0, role.tally.1);
    assert!(
        stdout.iter().any(|line| line.starts_with(starts.as_str()) && line.ends_with(ends)),
        "{name}: no tally line after SIG{signal}:\n{output}"
    );
    for (service, id) in &role.registers {
        let ids = node_ids(url.as_deref().unwrap(), service).await;
        assert!(!ids.contains(id), "{name}: {service}/{id} still listed after SIG{signal}");
    }
}

#[tokio::test]
async fn every_long_running_role_stops_cleanly_on_each_stop_signal() {
    let started = Instant::now();
    let nats = || async { NatsServer::start().await.expect(INSTALL_HINT) };
    let servers = Servers {
        main: nats().await,
        clients: nats().await,
        sidecar: nats().await,
        web_serve: nats().await,
    };

    // What the clients call: a server that is not under test, so no call of theirs can
    // fail because a node of the round is stopping.
    let fixture = role(
        "round-robin",
        &["server", "--name", "fixture", "--ttl-ms", "60000"],
        Nats::Clients,
        Ready::Stdout("serving greeter on"),
    );
    let mut fixture = spawn(&fixture, servers.url(Nats::Clients).as_deref());
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

    for signal in ["TERM", "INT", "HUP"] {
        let round = Instant::now();
        let stops = roles(signal).into_iter().map(|role| stop_with(role, signal, &servers));
        futures::future::join_all(stops).await;
        eprintln!("measured: the SIG{signal} round took {:?}", round.elapsed());
    }
    fixture.child.kill().await.unwrap();
    eprintln!("measured: {:?} in all", started.elapsed());
}
