//! Every long-running role of every example, declared once: how to start it, how it says it
//! is ready, what it registers, what it serves and how it may be attacked. `tests/signals.rs`
//! stops each role with each stop signal; `tests/hostile.rs` attacks each server from outside.
//! A server added later joins both by adding one row to [`roles`].

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use microkit_backend::{BackendArgs, BackendChoice};
use registry::Node;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;

use super::example_binary;

/// Which private NATS server a role uses. Roles that would collide in one registry (two
/// that both register `greeter-1`), or clients that must only find a node nobody stops,
/// get one of their own.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Nats {
    None,
    /// The roles under test that need NATS.
    Main,
    /// The clients, with a server (not under test) to call.
    Clients,
    /// The sidecar: it registers `greeter-1`.
    Sidecar,
    /// `web serve`: it registers `greeter-1` too.
    WebServe,
    /// A registry of its own: the role registers fixed ids (retry's hops, trace's services)
    /// or needs a companion that would collide with another role's.
    Own,
}

/// Where a role says it is ready: the first line of stdout or stderr that holds this.
#[derive(Clone, Copy, Debug)]
pub enum Ready {
    Stdout(&'static str),
    Stderr(&'static str),
}

/// How a stranger speaks to one of a role's listeners.
#[derive(Clone, Debug)]
pub enum Protocol {
    /// gRPC over cleartext HTTP/2. `path` is a unary method the server answers: a call to it
    /// with `message` (encoded protobuf) is served, and one whose body never comes stays open
    /// (a long call).
    Grpc { path: &'static str, message: &'static [u8] },
    /// HTTP/1.1 or HTTP/2 (hyper's auto builder). `path` answers a GET; `upload`, where
    /// given, is a POST route that reads its body, so one whose body stops halfway is a
    /// call in flight.
    Http { path: &'static str, upload: Option<&'static str> },
    /// The tunnel's own link protocol; a call through it is made by `tunnel node-a`.
    Tunnel,
    /// gRPC with mutual TLS; a call is made by `secure client` with the certificates the
    /// server wrote to `certs`.
    Tls { certs: PathBuf },
    /// A NATS service endpoint: requests on `subject` carry a `HelloRequest`. Its address is
    /// the NATS server's.
    NatsService { subject: &'static str },
}

/// Where a listener's address is found.
#[derive(Clone, Debug)]
pub enum At {
    /// The n-th `127.0.0.1:<port>` in the ready line (from 0).
    Ready(usize),
    /// The address the role registered for this (service, id).
    Registry(&'static str, String),
    /// The role's NATS server.
    Nats,
}

#[derive(Clone, Debug)]
pub struct Endpoint {
    pub protocol: Protocol,
    pub at: At,
}

/// The limits a server must keep under attack, per row.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// How long a connection may send nothing, or no complete preface or request, before
    /// the server closes it.
    pub header_timeout: Duration,
    /// How long a stop may let calls in flight run before it cuts them.
    pub drain: Duration,
    /// Streams one HTTP/2 connection may hold open at once.
    pub streams_per_connection: usize,
    /// How much a flood may add to the server's resident memory, in KiB.
    pub rss_growth_kib: u64,
}

impl Default for Bounds {
    /// The shared defaults of `microkit_http` (10 s for headers, 5 s to drain), hyper's
    /// own stream limit (200) with room, and 32 MiB for a flood sized as the battery sizes it.
    fn default() -> Self {
        Bounds {
            header_timeout: Duration::from_secs(10),
            drain: Duration::from_secs(5),
            streams_per_connection: 256,
            rss_growth_kib: 32 * 1024,
        }
    }
}

pub struct Role {
    pub example: &'static str,
    pub args: Vec<String>,
    pub nats: Nats,
    pub ready: Ready,
    /// The tally `tests/signals.rs` checks after a stop: a stdout line that starts with the
    /// first part and ends with the second. A role without one is not in that test.
    pub tally: Option<(String, &'static str)>,
    /// The nodes it registers, as (service, id).
    pub registers: Vec<(&'static str, String)>,
    /// What it listens on, the first one being where a long call is held during a stop and
    /// where the file table is filled. A role without any is not in the battery.
    pub serves: Vec<Endpoint>,
    /// Roles started before it on its NATS (a node for the proxy to forward to).
    pub companions: Vec<Role>,
    pub bounds: Bounds,
}

pub fn role(example: &'static str, args: &[&str], nats: Nats, ready: Ready) -> Role {
    Role {
        example,
        args: args.iter().map(|a| a.to_string()).collect(),
        nats,
        ready,
        tally: None,
        registers: Vec::new(),
        serves: Vec::new(),
        companions: Vec::new(),
        bounds: Bounds::default(),
    }
}

impl Role {
    pub fn tally(mut self, starts: impl Into<String>, ends: &'static str) -> Self {
        self.tally = Some((starts.into(), ends));
        self
    }

    pub fn registers(mut self, service: &'static str, id: impl Into<String>) -> Self {
        self.registers.push((service, id.into()));
        self
    }

    /// A listener whose address is the n-th one in the ready line.
    pub fn serves(mut self, protocol: Protocol, nth: usize) -> Self {
        self.serves.push(Endpoint { protocol, at: At::Ready(nth) });
        self
    }

    /// A listener found through the registry, under the (service, id) it registered.
    pub fn serves_listed(
        mut self,
        protocol: Protocol,
        service: &'static str,
        id: impl Into<String>,
    ) -> Self {
        self.serves.push(Endpoint { protocol, at: At::Registry(service, id.into()) });
        self
    }

    /// A NATS service endpoint on the role's NATS server.
    pub fn serves_on_nats(mut self, subject: &'static str) -> Self {
        let protocol = Protocol::NatsService { subject };
        self.serves.push(Endpoint { protocol, at: At::Nats });
        self
    }

    pub fn with(mut self, companion: Role) -> Self {
        self.companions.push(companion);
        self
    }

    pub fn name(&self) -> String {
        format!("{} {}", self.example, self.args.join(" "))
    }
}

const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
/// An empty `HealthCheckRequest`: the health of the whole server.
const GRPC: Protocol = Protocol::Grpc { path: HEALTH_CHECK, message: b"" };
/// A `HelloRequest` with a name (field 1, "battery"): some greeters refuse an empty one.
const SAY_HELLO: Protocol =
    Protocol::Grpc { path: "/greeter.v1.Greeter/SayHello", message: b"\x0a\x07battery" };
const LIVE: Protocol = Protocol::Http { path: "/health/live", upload: None };
/// Its live page's events: an answer that never ends, held open through a stop.
const EVENTS: Protocol = Protocol::Http { path: "/events", upload: None };
const METRICS: Protocol = Protocol::Http { path: "/metrics", upload: None };

/// Every long-running role, its names made unique with `tag` (a signal's name, or the
/// battery's), so rounds that share a registry do not collide. `certs` is where the secure
/// server writes its certificates.
pub fn roles(tag: &str, certs: &std::path::Path) -> Vec<Role> {
    let tag = tag.to_lowercase();
    let (rr, shard, hello) = (format!("rr-{tag}"), format!("shard-{tag}"), format!("hello-{tag}"));
    let (health, node, greeter) =
        (format!("health-{tag}"), format!("shutdown-{tag}"), format!("greeter-{tag}"));
    let (calc, transport) = (format!("calc-{tag}"), format!("transport-{tag}"));
    let (api_greeter, api_calc, stock) =
        (format!("api-greeter-{tag}"), format!("api-calc-{tag}"), format!("stock-{tag}"));
    let certs = certs.to_str().expect("a UTF-8 path").to_owned();
    use Nats::*;
    use Ready::*;
    vec![
        role("pubsub", &["subscriber", "--service", "mailer"], Main, Stdout("mailer: listening"))
            .tally("mailer: 0 handled, 0 undecodable skipped", ""),
        role("event", &["serve", "--listen", "127.0.0.1:0"], Main, Stdout("serving POST"))
            .tally("served: 0 accepted, 0 refused", "")
            .serves(Protocol::Http { path: "/health/live", upload: Some("/user/login") }, 0),
        role("event", &["audit"], Main, Stdout("audit: resuming"))
            .tally("audit: 0 events taken, 0 skipped", ""),
        role("tunnel", &["node-b", "--listen", "127.0.0.1:0"], None, Stdout("node-b listens"))
            .tally("node-b stopped: 0 link(s), 0 session(s) served, every call finished", "")
            .serves(Protocol::Tunnel, 0),
        role(
            "round-robin",
            &["server", "--name", &rr, "--ttl-ms", "60000"],
            Main,
            Stdout("serving greeter on"),
        )
        .tally(format!("{rr} deregistered and stopped after 0 calls"), "")
        .registers("greeter", &rr)
        .serves(GRPC, 0),
        role(
            "round-robin",
            &["client", "--calls", "0", "--interval-ms", "50"],
            Clients,
            Stdout("call 1: "),
        )
        .tally("", " calls, 0 failed"),
        role("sharding", &["server", "--name", &shard], Main, Stdout("serving greeter on"))
            .tally(format!("{shard} deregistered and stopped after 0 calls"), "")
            .registers("greeter", &shard)
            .serves(GRPC, 0),
        role(
            "sharding",
            &["client", "--user", "ada", "--calls", "0", "--interval-ms", "50"],
            Clients,
            Stdout("call 1"),
        )
        .tally("", " calls, 0 failed"),
        role("sidecar", &["serve", "--port", "0"], Sidecar, Stdout("sidecar listening on"))
            .tally("sidecar stopped after 0 requests (0 refused)", "")
            .registers("greeter", "greeter-1")
            .serves(Protocol::Http { path: "/health/live", upload: Some("/broker/battery") }, 0)
            .serves_listed(GRPC, "greeter", "greeter-1"),
        role("web", &["serve", "--port", "0"], WebServe, Stdout("open http://127.0.0.1:"))
            .tally("stopped: the gateway forwarded 0 request(s), hello-1 served 0", "")
            .registers("web-greeter", "greeter-1")
            .registers("web", "hello-1")
            .serves(EVENTS, 0)
            .serves_listed(LIVE, "web", "hello-1")
            .serves_listed(GRPC, "web-greeter", "greeter-1"),
        role("web", &["service", "--id", &hello], Main, Stdout("serving web service hello on"))
            .tally(format!("{hello} stopped: 0 request(s) served"), "")
            .registers("web", &hello)
            .registers("web-greeter", format!("greeter-for-{hello}"))
            .serves(LIVE, 0)
            .serves_listed(GRPC, "web-greeter", format!("greeter-for-{hello}")),
        role("web", &["gateway", "--port", "0"], Main, Stdout("gateway on http://127.0.0.1:"))
            .tally("gateway stopped: 0 request(s) forwarded", "")
            .serves(EVENTS, 0),
        role("stream", &["server", "--addr", "127.0.0.1:0"], None, Stderr("serving the stream"))
            .tally(
                "server stopped: names read 0, half-closes seen 0, clients gone mid-stream 0",
                "",
            )
            .serves(GRPC, 0),
        // The roles below are attacked by the battery; their stops are tested in their own
        // files (shutdown, health, proxy, retry, trace, secure, transport).
        role("health", &["node", "--id", &health], Main, Stdout("serving greeter.v1.Greeter on"))
            .registers("health-greeter", &health)
            .serves(GRPC, 0)
            .serves(LIVE, 1),
        role("shutdown", &["serve", "--node", &node], Main, Stdout("listening on"))
            .registers("shutdown-greeter", &node)
            .serves(GRPC, 0),
        role("proxy", &["proxy", "--listen", "127.0.0.1:0"], Own, Stdout("proxy listening on"))
            // A greeter behind it, so a call through the proxy reaches a node and stays open
            // there while its body is awaited.
            .with(role(
                "proxy",
                &["greeter", "--name", &greeter],
                Own,
                Stdout("serving greeter.v1.Greeter on"),
            ))
            .serves(SAY_HELLO, 0),
        role("proxy", &["greeter", "--name", &greeter], Main, Stdout("serving greeter.v1.Greeter"))
            .registers("greeter.v1.Greeter", &greeter)
            .serves(GRPC, 0),
        role("proxy", &["calc", "--name", &calc], Main, Stdout("serving calc.v1.Calculator on"))
            .registers("calc.v1.Calculator", &calc)
            .serves(GRPC, 0),
        // The api gateway: without a token every call is refused at its edge, so the battery
        // attacks its listener and its health route; the nodes behind it are gRPC servers.
        role(
            "api",
            &["gateway", "--listen", "127.0.0.1:0", "--secret", "battery"],
            Main,
            Stdout("gateway listening on"),
        )
        .tally("gateway stopped: 0 calls sent to a node, 0 answered by the gateway", "")
        .serves(LIVE, 0),
        role("api", &["greeter", "--id", &api_greeter], Main, Stdout("serving greeter.v1.Greeter"))
            .tally(format!("{api_greeter} deregistered and stopped"), "")
            .registers("greeter.v1.Greeter", &api_greeter)
            .serves(GRPC, 0),
        role("api", &["calc", "--id", &api_calc], Main, Stdout("serving calc.v1.Calculator on"))
            .tally(format!("{api_calc} deregistered and stopped"), "")
            .registers("calc.v1.Calculator", &api_calc)
            .serves(GRPC, 0),
        role(
            "api",
            &["stock", "--id", &stock, "--revision", "2"],
            Main,
            Stdout("serving stock.v1"),
        )
        .tally(format!("{stock} was reached by 0 calls"), "")
        .registers("stock.v1.Stock", &stock)
        .serves(GRPC, 0),
        // Retry's hops and trace's services serve the Greeter alone (no health service), and
        // a hop calls the next one: each row brings the hops or services behind it.
        role("retry", &["a"], Own, Stdout("a: serving retry-a"))
            .with(role("retry", &["c"], Own, Stdout("c: serving retry-c")))
            .with(role("retry", &["b"], Own, Stdout("b: serving retry-b")))
            .registers("retry-a", "a")
            .serves_listed(SAY_HELLO, "retry-a", "a"),
        role("retry", &["b"], Own, Stdout("b: serving retry-b"))
            .with(role("retry", &["c"], Own, Stdout("c: serving retry-c")))
            .registers("retry-b", "b")
            .serves_listed(SAY_HELLO, "retry-b", "b"),
        role("retry", &["c"], Own, Stdout("c: serving retry-c"))
            .registers("retry-c", "c")
            .serves_listed(SAY_HELLO, "retry-c", "c"),
        role("trace", &["gateway"], Own, Stdout("gateway listening on")).serves(LIVE, 0),
        role("trace", &["greeter"], Own, Stdout("greeter serving on"))
            .with(role("trace", &["directory"], Own, Stdout("directory serving on")))
            .registers("trace-greeter", "greeter-1")
            .serves(SAY_HELLO, 0)
            .serves(METRICS, 1),
        role("trace", &["directory"], Own, Stdout("directory serving on"))
            .registers("directory", "directory-1")
            .serves(SAY_HELLO, 0)
            .serves(METRICS, 1),
        role(
            "secure",
            &["server", "--listen", "127.0.0.1:0", "--certs", &certs],
            None,
            Stdout("serving with mutual TLS on"),
        )
        .serves(Protocol::Tls { certs: PathBuf::from(&certs) }, 0),
        role("transport", &["serve", "--id", &transport], Own, Stdout("serving SayHello"))
            .registers("transport-greeter", &transport)
            .serves_listed(GRPC, "transport-greeter", &transport)
            .serves_on_nats("transport-greeter.SayHello"),
    ]
}

/// The nodes of `service`, as another process sees them in the NATS registry.
pub async fn nodes(nats_url: &str, service: &str) -> Vec<Node> {
    let backend = BackendArgs { backend: BackendChoice::Nats };
    let backend = backend.connect_with(Some(nats_url)).await.expect("reaching the test's NATS");
    registry::on(&backend).nodes(service).await.expect("reading the registry")
}

/// The ids of `service`'s nodes in the NATS registry.
pub async fn node_ids(nats_url: &str, service: &str) -> Vec<String> {
    nodes(nats_url, service).await.into_iter().map(|node| node.id).collect()
}

/// At most this many stderr lines are kept per role: a role that floods its log must not
/// fill the test's memory; its bytes are still counted.
const KEPT_STDERR_LINES: usize = 2000;

/// A running role: its stdout and stderr lines, tagged, as they come, and how many bytes
/// it has written to stderr so far.
pub struct Running {
    pub child: Child,
    pub lines: mpsc::UnboundedReceiver<(bool, String)>,
    pub stderr_bytes: Arc<AtomicU64>,
}

/// Starts `role` on the NATS at `nats_url` (none: the memory backend), under `launcher`
/// when given (a program that sets a limit, then runs the example in its own place, as
/// `prlimit` does).
pub fn spawn(role: &Role, nats_url: Option<&str>, launcher: &[&str]) -> Running {
    let mut command = match launcher.split_first() {
        None => super::example(role.example),
        Some((program, launcher_args)) => {
            // The clean environment of `example`, with the launcher in front.
            let mut command = tokio::process::Command::new(program);
            command
                .args(launcher_args)
                .arg(example_binary(role.example))
                .env_remove("NATS_URL")
                .env_remove("MICRO_BACKEND")
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .kill_on_drop(true);
            command
        }
    };
    command.args(&role.args).stderr(Stdio::piped());
    match nats_url {
        Some(url) => command.env("NATS_URL", url),
        None => command.env("MICRO_BACKEND", "memory"),
    };
    let mut child = command.spawn().expect("spawning an example");
    let (send, lines) = mpsc::unbounded_channel();
    let stderr_bytes = Arc::new(AtomicU64::new(0));
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let out = send.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stdout.next_line().await {
            if out.send((true, line)).is_err() {
                break;
            }
        }
    });
    let counted = stderr_bytes.clone();
    tokio::spawn(async move {
        let mut kept = 0;
        let mut line = Vec::new();
        // Read to the end even when nobody listens, so the child never blocks on a full pipe.
        while let Ok(n) = stderr.read_until(b'\n', &mut line).await {
            if n == 0 {
                break;
            }
            counted.fetch_add(n as u64, Ordering::Relaxed);
            if kept < KEPT_STDERR_LINES {
                kept += 1;
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                let _ = send.send((false, text));
            }
            line.clear();
        }
    });
    Running { child, lines, stderr_bytes }
}

impl Running {
    /// Waits (within `limit`) for the role's ready line and returns it with the lines
    /// before it; `None` and the lines seen when it never came.
    pub async fn ready(&mut self, ready: Ready, limit: Duration) -> Result<String, Vec<String>> {
        let mut seen = Vec::new();
        let wait = async {
            while let Some((is_stdout, line)) = self.lines.recv().await {
                let matched = match ready {
                    Ready::Stdout(text) => is_stdout && line.contains(text),
                    Ready::Stderr(text) => !is_stdout && line.contains(text),
                };
                if matched {
                    return Some(line);
                }
                seen.push(line);
            }
            None
        };
        match tokio::time::timeout(limit, wait).await {
            Ok(Some(line)) => Ok(line),
            _ => Err(seen),
        }
    }
}

/// Every `127.0.0.1:<port>` in a line, in order.
pub fn loopback_addresses(line: &str) -> Vec<std::net::SocketAddr> {
    line.match_indices("127.0.0.1:")
        .filter_map(|(at, _)| {
            let rest = &line[at + "127.0.0.1:".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            format!("127.0.0.1:{digits}").parse().ok()
        })
        .collect()
}
