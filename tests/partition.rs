//! Network partitions, as processes on separate test hosts (Linux network namespaces, so
//! root): a 3-node NATS cluster with one node per host, the examples' roles on the hosts,
//! and host 1 cut off while everything on it keeps running. Each test asserts the facts
//! of its timeline; `notes/partition.md` explains them, `scripts/partition-demo.sh` shows
//! the first one live (`--nocapture` prints every timeline here too).
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::hosts::{Hosts, Proc, Stream, within};
use futures::StreamExt;
use registry::{NatsRegistry, Registry};

/// Nodes' TTL in the registry: short, so the cut node expires within seconds. After the
/// heal the bucket may have no leader for some seconds, and a TTL shorter than that gap
/// expires every node; the test counts the calls that fail then (`notes/partition.md`).
const TTL: Duration = Duration::from_secs(3);
/// A bound for what takes a few seconds on a cluster (elections, a TCP retransmission
/// after a heal): a hang guard, never a pace.
const SLOW: Duration = Duration::from_secs(30);

/// The stream behind the registry's key-value bucket (`micro_registry`, NATS names it so).
const REGISTRY_STREAM: &str = "KV_micro_registry";

/// Three hosts with a nats-server each, routed into one JetStream cluster.
struct Cluster {
    nats: Vec<Proc>,
    /// One cluster at a time: three at once on a small machine starve each other's
    /// heartbeats, and a test of timing must not measure its neighbours.
    _serial: tokio::sync::MutexGuard<'static, ()>,
    _data: tempfile::TempDir,
    hosts: Hosts,
}

impl Cluster {
    async fn start() -> Cluster {
        static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let serial = SERIAL.lock().await;
        let hosts = Hosts::new(3);
        let data = tempfile::tempdir().unwrap();
        let mut nats = Vec::new();
        for i in 1..=3 {
            // TCP gives up on a connection after 4 unanswered retransmissions (about 6 s)
            // instead of 15 (about 15 minutes), on these hosts only: a cut is noticed when
            // something times out, and the NATS routes, always busy, time out here first.
            hosts.sysctl(i, "net/ipv4/tcp_retries2", "4");
            let ip = hosts.host(i).ip;
            let routes: Vec<String> = (1..=3)
                .filter(|&j| j != i)
                .map(|j| format!("\"nats://{}:6222\"", hosts.host(j).ip))
                .collect();
            let dir = data.path().join(format!("n{i}"));
            // Pings every second, two unanswered end a connection: a route across the cut
            // is declared dead within seconds (the default is minutes), which is when core
            // NATS starts dropping what it cannot deliver.
            let config = format!(
                "server_name: n{i}\nlisten: \"{ip}:4222\"\nping_interval: \"1s\"\nping_max: 2\n\
                 jetstream {{ store_dir: \"{}\" }}\n\
                 cluster {{ name: partition, listen: \"{ip}:6222\", routes: [{}] }}\n",
                dir.display(),
                routes.join(", ")
            );
            let file = data.path().join(format!("n{i}.conf"));
            std::fs::write(&file, config).unwrap();
            let args = ["--config", file.to_str().unwrap()];
            nats.push(hosts.spawn(i, &format!("n{i}"), "nats-server", &args, &[]));
        }
        Cluster { nats, _serial: serial, _data: data, hosts }
    }

    /// The NATS URL of host `i`'s node: each process talks to the node on its own host.
    fn url(&self, i: usize) -> String {
        format!("nats://{}:4222", self.hosts.host(i).ip)
    }

    /// Creates `stream` with 3 replicas (through `create`, from host 3, once the cluster has
    /// elected its JetStream leader), then moves its leader off host 1 and waits until every
    /// replica is current. The leader is moved so that cutting host 1 tests the registry and
    /// the stream, not the few seconds of a new election (the notes say what those do).
    async fn replicated<F, Fut>(&self, stream: &'static str, create: F)
    where
        F: Fn(async_nats::Client) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let url = self.url(3);
        within(self.hosts.host(3), move || async move {
            let deadline = tokio::time::Instant::now() + SLOW;
            let mut last = String::new();
            loop {
                assert!(tokio::time::Instant::now() < deadline, "{stream} never settled: {last}");
                tokio::time::sleep(Duration::from_millis(300)).await;
                let Ok(client) = async_nats::connect(&url).await else { continue };
                if let Err(e) = create(client.clone()).await {
                    last = format!("{e:#}");
                    continue;
                }
                let js = jetstream::new(client.clone());
                let info = match js.get_stream(stream).await {
                    Ok(mut s) => match s.info().await {
                        Ok(info) => info.clone(),
                        Err(e) => {
                            last = e.to_string();
                            continue;
                        }
                    },
                    Err(e) => {
                        last = e.to_string();
                        continue;
                    }
                };
                let Some(cluster) = info.cluster else {
                    last = "no cluster info".into();
                    continue;
                };
                if cluster.leader.as_deref() == Some("n1") {
                    let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}");
                    let _ = client.request(subject, "".into()).await;
                    last = "leader on n1, stepped down".into();
                    continue;
                }
                let current = cluster.replicas.iter().filter(|r| r.current).count();
                if cluster.leader.is_some() && current == 2 {
                    return;
                }
                last = format!("leader {:?}, {current} of 2 followers current", cluster.leader);
            }
        })
        .await;
    }
}

fn example(topic: &str) -> String {
    common::example_binary(topic).to_str().unwrap().to_owned()
}

/// The number of a `call N...` line of a client role.
fn call_number(line: &str) -> Option<u64> {
    line.strip_prefix("call ")?.split([':', ' ']).next()?.parse().ok()
}

/// Discovery and round robin under a partition: during the cut every call is served by
/// host 2's node (a call to the cut node retried there), the cut node expires on the
/// majority side after its TTL, the cut side cannot write its heartbeats (the bucket's
/// replicas need a quorum) and says so; after the heal it is listed and called again.
#[tokio::test]
async fn discovery_and_round_robin_survive_a_cut_host() {
    let cluster = Cluster::start().await;
    let hosts = &cluster.hosts;
    cluster
        .replicated(REGISTRY_STREAM, |client| async move {
            NatsRegistry::new(client).with_replicas(3).nodes("greeter").await?;
            Ok(())
        })
        .await;
    hosts.note("registry bucket replicated on n1, n2, n3; its leader off host 1");

    let rr = example("round-robin");
    let ttl = TTL.as_millis().to_string();
    let server = |i: usize, name: &str| {
        let ip = hosts.host(i).ip.to_string();
        let args = ["--ttl-ms", &ttl, "server", "--name", name, "--listen", &ip];
        hosts.spawn(i, name, &rr, &args, &[("NATS_URL", &cluster.url(i))])
    };
    let a = server(1, "greeter-a");
    let b = server(2, "greeter-b");
    a.wait_for(0, SLOW, |l| l.starts_with("greeter-a serving")).await;
    b.wait_for(0, SLOW, |l| l.starts_with("greeter-b serving")).await;
    let args = ["--ttl-ms", &ttl, "client", "--calls", "0", "--interval-ms", "200"];
    let mut client = hosts.spawn(3, "client", &rr, &args, &[("NATS_URL", &cluster.url(3))]);
    client.wait_for(0, SLOW, |l| l == "nodes of greeter: greeter-a, greeter-b").await;
    client.wait_for(0, SLOW, |l| l.ends_with(": greeter-a")).await;
    client.wait_for(0, SLOW, |l| l.ends_with(": greeter-b")).await;

    // The cut. Host 1's processes run on; only the network between the hosts is gone.
    let (from, a_from) = (client.mark(), a.mark());
    let cut_at = hosts.clock();
    hosts.cut(1);
    let (expired_at, _) =
        client.wait_for(from, TTL + SLOW, |l| l == "nodes of greeter: greeter-b").await;
    let (failed_at, beat) = a.wait_for(a_from, SLOW, |l| l.contains("heartbeat failed")).await;
    let beat = beat[beat.find("heartbeat failed").unwrap()..].to_owned();
    // A few calls after the expiry, before the heal.
    for _ in 0..3 {
        client.wait_for(client.mark(), SLOW, |l| call_number(l).is_some()).await;
    }
    let heal_mark = client.mark();
    let healed_at = hosts.clock();
    hosts.heal(1);
    let (back_at, _) =
        client.wait_for(heal_mark, SLOW, |l| l == "nodes of greeter: greeter-a, greeter-b").await;
    let (served_at, _) = client.wait_for(heal_mark, SLOW, |l| l.ends_with(": greeter-a")).await;
    // And once more, so the rotation is seen to include it again, not a lucky call.
    let again = client.mark();
    client.wait_for(again, SLOW, |l| l.ends_with(": greeter-a")).await;

    // The client prints its tally as it stops. Calls that failed after the heal (no leader
    // for the bucket, so nodes expired) are counted, not hidden, and not the point here.
    client.stop(SLOW).await;
    let tally = client.out().last().cloned().unwrap_or_default();
    assert!(tally.contains(" calls, "), "the client's tally:\n{}", client.dump());
    for mut node in [a, b] {
        node.stop(SLOW).await;
    }

    // The facts of the timeline.
    let calls = call_lines(&client, cut_at, healed_at);
    let after_heal = call_lines(&client, healed_at, f64::MAX)
        .iter()
        .filter(|(_, l)| l.contains(" failed: "))
        .count();
    assert!(!calls.is_empty(), "calls were made during the cut");
    for (_, line) in &calls {
        assert!(
            line.ends_with(": greeter-b") || line.ends_with("retried on greeter-b"),
            "during the cut every call is served by greeter-b (or retried on it): {line}"
        );
    }
    let retried = calls.iter().filter(|(_, l)| l.contains("greeter-a failed, retried on")).count();
    let expiry = expired_at - cut_at;
    assert!(
        expiry >= (TTL * 2 / 3).as_secs_f64(),
        "greeter-a expired {expiry:.1}s after the cut: sooner than its TTL allows"
    );
    assert!(failed_at > cut_at, "{beat}");
    let summary = [
        format!("cut host 1 at {cut_at:.1}s"),
        format!(
            "{} calls during the cut, all served, {retried} retried after greeter-a failed",
            calls.len()
        ),
        format!("greeter-a expired from the registry {expiry:.1}s after the cut (TTL {TTL:?})"),
        format!("greeter-a's heartbeat failed {:.1}s after the cut: {beat}", failed_at - cut_at),
        format!(
            "healed at {healed_at:.1}s; greeter-a listed again {:.1}s later, served a call {:.1}s later",
            back_at - healed_at,
            served_at - healed_at
        ),
        format!("after the heal: {after_heal} calls failed; in all: {tally}"),
    ];
    for line in summary {
        hosts.note(&line);
    }
}

/// The `call` lines the client printed between `from` and `to` on the hosts' clock.
fn call_lines(client: &Proc, from: f64, to: f64) -> Vec<(f64, String)> {
    client
        .lines_of(Stream::Out)
        .into_iter()
        .filter(|(t, l)| *t > from && *t < to && call_number(l).is_some())
        .collect()
}

/// The event example's stream, as `examples/event/bus.rs` creates it, but on 3 replicas.
fn events_stream() -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: "EVENTS".to_owned(),
        subjects: vec!["events.>".to_owned()],
        storage: jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        num_replicas: 3,
        ..Default::default()
    }
}

/// Posts the login events `ids` to the event example's `serve` role at `addr`, from the
/// host this runs in; each is sent again, with the same id, until it is answered 202 (the
/// stream drops a second copy by id), so every event is stored once the call returns.
async fn post_events(addr: String, ids: std::ops::RangeInclusive<u32>) -> u32 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut retries = 0;
    for k in ids {
        let body = serde_json::json!({
            "specversion": "1.0", "id": format!("e{k}"), "source": "/partition-test",
            "type": "com.example.user.logged_in", "datacontenttype": "application/json",
            "data": { "user": format!("e{k}") },
        })
        .to_string();
        let request = format!(
            "POST /events HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/cloudevents+json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let deadline = tokio::time::Instant::now() + SLOW;
        loop {
            assert!(tokio::time::Instant::now() < deadline, "event e{k} never accepted");
            let mut answer = String::new();
            if let Ok(mut socket) = tokio::net::TcpStream::connect(&addr).await {
                let _ = socket.write_all(request.as_bytes()).await;
                let _ = socket.read_to_string(&mut answer).await;
            }
            if answer.starts_with("HTTP/1.1 202") {
                break;
            }
            retries += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    retries
}

/// Events under a partition: a stream on all three nodes, the publisher on host 3, a
/// durable consumer and a plain (core NATS) subscriber on host 1. Host 1 is cut while
/// events are published. After the heal the durable consumer has every event (duplicates
/// recognised by id); the plain subscriber lost what was published during the cut.
#[tokio::test]
async fn a_durable_consumer_loses_nothing_to_a_cut_and_a_plain_subscriber_does() {
    let cluster = Cluster::start().await;
    let hosts = &cluster.hosts;
    cluster
        .replicated("EVENTS", |client| async move {
            jetstream::new(client).get_or_create_stream(events_stream()).await?;
            Ok(())
        })
        .await;
    hosts.note("stream EVENTS replicated on n1, n2, n3; its leader off host 1");

    let event = example("event");
    let mut audit = hosts.spawn(1, "audit", &event, &["audit"], &[("NATS_URL", &cluster.url(1))]);
    audit.wait_for(0, SLOW, |l| l.starts_with("audit: resuming")).await;
    let listen = format!("{}:8080", hosts.host(3).ip);
    let args = ["serve", "--listen", &listen];
    let mut serve = hosts.spawn(3, "serve", &event, &args, &[("NATS_URL", &cluster.url(3))]);
    serve.wait_for(0, SLOW, |l| l.starts_with("serving POST")).await;

    // The plain subscriber: what core NATS hands it while it is reachable, and nothing
    // more. It ends with the last event, e40, published well after the heal.
    let (subscribed, ready) = tokio::sync::oneshot::channel();
    let url = cluster.url(1);
    let plain = within(hosts.host(1), move || async move {
        let client = async_nats::connect(&url).await.unwrap();
        let mut messages = client.subscribe("events.user.login").await.unwrap();
        client.flush().await.unwrap();
        let _ = subscribed.send(());
        let mut ids = std::collections::BTreeSet::new();
        while let Some(message) = messages.next().await {
            let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
            let id = event["id"].as_str().unwrap().to_owned();
            let last = id == "e40";
            ids.insert(id);
            if last {
                break;
            }
        }
        ids
    });
    ready.await.unwrap();

    let addr = listen.clone();
    let mut retries = within(hosts.host(3), move || post_events(addr, 1..=10)).await;
    hosts.note("posted e1..e10");
    let n3_from = cluster.nats[2].mark();
    let cut_at = hosts.clock();
    hosts.cut(1);
    // Core NATS holds what it sends over a route in the connection's buffers: what is
    // published before the route is declared dead may still arrive after a short cut. From
    // then on, host 1 has no subscription the others know of, and its messages are dropped.
    cluster.nats[2].wait_for(n3_from, SLOW, |l| l.contains("Router connection closed")).await;
    hosts.note("n3 declared its route to n1 dead");
    let addr = listen.clone();
    retries += within(hosts.host(3), move || post_events(addr, 11..=30)).await;
    hosts.note("posted e11..e30 during the cut: all stored by the majority");
    let healed_at = hosts.clock();
    hosts.heal(1);
    // The durable consumer catches up with everything it missed.
    let all: std::collections::BTreeSet<String> = (1..=30).map(|k| format!("e{k}")).collect();
    let received = |audit: &Proc| -> Vec<String> {
        audit
            .out()
            .iter()
            .filter_map(|l| l.strip_prefix("audit: ")?.split(' ').next().map(str::to_owned))
            .filter(|id| id.starts_with('e'))
            .collect()
    };
    let caught_up = tokio::time::timeout(SLOW, async {
        loop {
            let got: std::collections::BTreeSet<String> = received(&audit).into_iter().collect();
            if all.is_subset(&got) {
                return;
            }
            audit.wait_for(audit.mark(), SLOW, |_| true).await;
        }
    })
    .await;
    assert!(caught_up.is_ok(), "the durable consumer missed events:\n{}", audit.dump());
    hosts.note("the durable consumer has e1..e30");
    let addr = listen.clone();
    retries += within(hosts.host(3), move || post_events(addr, 31..=40)).await;
    hosts.note("posted e31..e40 after the heal");
    audit.wait_for(0, SLOW, |l| l.starts_with("audit: e40 ")).await;
    let plain = tokio::time::timeout(SLOW, plain).await.expect("the plain subscriber gets e40");

    let status = audit.stop(SLOW).await;
    assert!(status.success(), "{}", audit.dump());
    assert!(serve.stop(SLOW).await.success(), "{}", serve.dump());

    // The facts of the timeline.
    let taken = received(&audit);
    let distinct: std::collections::BTreeSet<&String> = taken.iter().collect();
    let expected: Vec<String> = (1..=40).map(|k| format!("e{k}")).collect();
    assert_eq!(distinct.into_iter().cloned().collect::<Vec<_>>().len(), 40);
    for id in &expected {
        assert!(taken.contains(id), "the durable consumer lost {id}:\n{}", audit.dump());
    }
    let duplicates = taken.len() - 40;
    let in_cut =
        audit.lines_of(Stream::Out).iter().filter(|(t, _)| *t > cut_at && *t < healed_at).count();
    let during_cut: Vec<String> = (11..=30).map(|k| format!("e{k}")).collect();
    let lost: Vec<&String> = expected.iter().filter(|id| !plain.contains(*id)).collect();
    assert!(
        during_cut.iter().all(|id| !plain.contains(id)),
        "the plain subscriber cannot have what was published while it was cut off: {plain:?}"
    );
    for k in (1..=10).chain(31..=40) {
        assert!(plain.contains(&format!("e{k}")), "the plain subscriber missed e{k}: {plain:?}");
    }
    hosts.note(&format!(
        "durable consumer: 40 of 40 events, {duplicates} duplicates (same id) skipped; \
         {in_cut} taken during the cut, the rest after the heal"
    ));
    hosts.note(&format!(
        "plain subscriber: {} of 40 events, {} lost (published during the cut); {retries} posts retried",
        plain.len(),
        lost.len()
    ));
}

/// The node that answered a sharding client's `call N (x-from-user: u): node` line.
fn answered_by(line: &str) -> Option<&str> {
    call_number(line)?;
    let (_, node) = line.rsplit_once("): ")?;
    (!line.contains(" failed ")).then_some(node)
}

/// Sharding under a partition: nodes on all three hosts, one client per user on host 3.
/// The users whose node is on the cut host move to another node once it expires, and back
/// after the heal; the others never move. Affinity is a preference, not a guarantee.
#[tokio::test]
async fn sharded_users_move_off_a_cut_host_and_back() {
    const USERS: [&str; 8] = ["ada", "bo", "carol", "dan", "eve", "finn", "gus", "hana"];
    let cluster = Cluster::start().await;
    let hosts = &cluster.hosts;
    cluster
        .replicated(REGISTRY_STREAM, |client| async move {
            NatsRegistry::new(client).with_replicas(3).nodes("greeter").await?;
            Ok(())
        })
        .await;
    let sharding = example("sharding");
    let mut servers = Vec::new();
    for (i, name) in [(1, "greeter-a"), (2, "greeter-b"), (3, "greeter-c")] {
        let ip = hosts.host(i).ip.to_string();
        let args = ["server", "--name", name, "--listen", &ip];
        let server = hosts.spawn(i, name, &sharding, &args, &[("NATS_URL", &cluster.url(i))]);
        server.wait_for(0, SLOW, |l| l.contains(" serving ")).await;
        servers.push(server);
    }
    let mut clients = Vec::new();
    for user in USERS {
        let args = ["client", "--user", user, "--calls", "0", "--interval-ms", "250"];
        clients.push(hosts.spawn(3, user, &sharding, &args, &[("NATS_URL", &cluster.url(3))]));
    }
    let mut home = Vec::new();
    for client in &clients {
        let (_, line) = client.wait_for(0, SLOW, |l| answered_by(l).is_some()).await;
        home.push(answered_by(&line).unwrap().to_owned());
    }
    let on_cut_host: Vec<usize> = (0..USERS.len()).filter(|&u| home[u] == "greeter-a").collect();
    assert!(!on_cut_host.is_empty(), "some user's node is greeter-a: {home:?}");

    let marks: Vec<usize> = clients.iter().map(Proc::mark).collect();
    let cut_at = hosts.clock();
    hosts.cut(1);
    let mut moved_to = Vec::new();
    for &u in &on_cut_host {
        let (_, line) = clients[u]
            .wait_for(marks[u], TTL + SLOW, |l| answered_by(l).is_some_and(|n| n != "greeter-a"))
            .await;
        moved_to.push(answered_by(&line).unwrap().to_owned());
    }
    let healed_at = hosts.clock();
    hosts.heal(1);
    let marks: Vec<usize> = clients.iter().map(Proc::mark).collect();
    for &u in &on_cut_host {
        clients[u].wait_for(marks[u], SLOW, |l| answered_by(l) == Some("greeter-a")).await;
    }
    let back_at = hosts.clock();
    for client in &mut clients {
        client.stop(SLOW).await;
    }
    for server in &mut servers {
        server.stop(SLOW).await;
    }

    // The facts: the users of the cut node moved and came back; nobody else moved during
    // the cut; the calls that failed before the cut node expired are counted.
    let mut failed_in_cut = 0;
    for (u, client) in clients.iter().enumerate() {
        for (t, line) in client.lines_of(Stream::Out) {
            if t <= cut_at || t >= healed_at || call_number(&line).is_none() {
                continue;
            }
            match answered_by(&line) {
                None => failed_in_cut += 1,
                Some(node) if on_cut_host.contains(&u) => {
                    assert_ne!(node, "greeter-a", "{}: reached the cut node: {line}", USERS[u])
                }
                Some(node) => assert_eq!(node, home[u], "{} moved without cause: {line}", USERS[u]),
            }
        }
    }
    let moved: Vec<String> =
        on_cut_host.iter().zip(&moved_to).map(|(&u, to)| format!("{} to {to}", USERS[u])).collect();
    hosts.note(&format!(
        "cut at {cut_at:.1}s: {} of {} users moved off greeter-a ({}); {} stayed where they were",
        on_cut_host.len(),
        USERS.len(),
        moved.join(", "),
        USERS.len() - on_cut_host.len()
    ));
    hosts.note(&format!(
        "healed at {healed_at:.1}s: all {} back on greeter-a by {back_at:.1}s; {failed_in_cut} calls \
         failed during the cut (before greeter-a expired, and with no retry)",
        on_cut_host.len()
    ));
}
