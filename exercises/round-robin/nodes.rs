//! The `server` and `client` roles that the round-robin and sharding examples share: a
//! Greeter node that stays registered until it is asked to stop, and a client that calls
//! until its count is reached or it is asked to stop. How a client *picks* its node is each
//! example's lesson and stays in that example; everything here is the same for both.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use health::LiveNodes;
use microkit::greeter::HelloGreeter;
use microkit::health::Health;
use microkit::server::{Limits, RunningServer};
use registry::Registered;
use registry::Registry;
use tonic::body::Body;
use tonic::service::Routes;

/// The service every node of these examples belongs to.
pub const SERVICE: &str = "greeter";

/// A Greeter named `name` on a free port, listed as a node of [`SERVICE`] with heartbeats
/// every third of `ttl`.
pub async fn start_node(
    registry: &Arc<dyn Registry>,
    name: &str,
    ttl: Duration,
) -> anyhow::Result<Registered> {
    let server = microkit::greeter::serve(name).await?;
    Ok(Registered::new(registry, server, SERVICE, name, ttl).await?)
}

/// The `server` role's flags, the same in both examples.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// The node's id in the registry, e.g. greeter-a.
    #[arg(long)]
    pub name: String,
    /// The address to serve on, at a free port: another host's clients need one of this
    /// host's addresses, not loopback.
    #[arg(long, default_value = "127.0.0.1")]
    pub listen: IpAddr,
}

/// The `server` role: serve on a free port of `listen` and stay registered until a stop
/// request, then report NOT_SERVING and leave the registry before draining (no client is
/// sent to a closing node) and print the tally.
pub async fn serve(
    registry: &Arc<dyn Registry>,
    name: &str,
    listen: IpAddr,
    ttl: Duration,
) -> anyhow::Result<()> {
    let received = Arc::new(AtomicU64::new(0));
    let server = counting_greeter(name, listen, received.clone()).await?;
    let node = Registered::new(registry, server, SERVICE, name, ttl).await?;
    // Armed before the ready line: a signal that follows it is a stop request, not a kill.
    let stop = microkit::signal::stop_requested();
    println!("{name} serving {SERVICE} on {}, registered with a TTL of {ttl:?}", node.addr());
    microkit::signal::stopping(stop.await, "deregistering, then draining")?;
    node.stop().await?;
    let calls = received.load(Ordering::Relaxed);
    println!("{name} deregistered and stopped after {calls} calls");
    Ok(())
}

/// A Greeter whose every incoming Greeter call adds one to `received`: the server role's
/// tally. It serves health and reflection too; their calls are not counted.
async fn counting_greeter(
    name: &str,
    listen: IpAddr,
    received: Arc<AtomicU64>,
) -> std::io::Result<RunningServer> {
    let greeter = HelloGreeter::new(name).into_service();
    let health = Health::new(&[microkit::greeter::GREETER]);
    let routes = health.mount(Routes::new(greeter));
    let addr = SocketAddr::new(listen, 0);
    let server = RunningServer::start_on(addr, Limits::default(), move |incoming, stop| {
        let count = tower::util::MapRequestLayer::new(move |request: http::Request<Body>| {
            if request.uri().path().starts_with("/greeter.v1.Greeter/") {
                received.fetch_add(1, Ordering::Relaxed);
            }
            request
        });
        microkit::server::builder()
            .layer(count)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, stop)
    })
    .await?;
    Ok(server.with_health(health))
}

/// The client's view of [`SERVICE`], once it shows every node the registry lists now.
///
/// A watch reports the nodes already registered one by one, a moment after it starts: a
/// client that called at once would find no node at all, or only some of them (round
/// robin over one node of three, a user hashed to a node that is not theirs). So the
/// first call waits, at most `microkit::PATIENCE`, for the registry's snapshot.
///
/// Sharding's client takes this one: it hashes over every listed node.
pub async fn watch_service(registry: &Arc<dyn Registry>) -> anyhow::Result<LiveNodes> {
    watch_nodes(registry, LiveNodes::watch(registry, SERVICE).await?).await
}

/// The same, following each node's health too: only nodes that serve are in the list
/// (round-robin's client).
pub async fn watch_healthy_service(registry: &Arc<dyn Registry>) -> anyhow::Result<LiveNodes> {
    watch_nodes(registry, LiveNodes::watch_healthy(registry, SERVICE).await?).await
}

async fn watch_nodes(registry: &Arc<dyn Registry>, nodes: LiveNodes) -> anyhow::Result<LiveNodes> {
    let listed: Vec<String> = registry.nodes(SERVICE).await?.into_iter().map(|n| n.id).collect();
    let listed: Vec<&str> = listed.iter().map(String::as_str).collect();
    nodes.wait_for_ids(&listed, microkit::PATIENCE).await?;
    Ok(nodes)
}

/// What a client role did, printed as it stops.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub calls: u64,
    pub failed: u64,
}

/// The `client` role's loop: call number `n` is `call(n)`, which answers the rest of the
/// line to print (`Err` for a failed call); `calls` of them (0: until stopped), `interval`
/// apart. A stop request ends it between calls or during one; the tally is printed either
/// way, and a failed call makes the role fail.
pub async fn call_until_stopped(
    calls: u64,
    interval: Duration,
    mut call: impl AsyncFnMut(u64) -> Result<String, String>,
) -> anyhow::Result<Tally> {
    let stop = microkit::signal::stop_requested();
    tokio::pin!(stop);
    let mut tally = Tally::default();
    while calls == 0 || tally.calls < calls {
        let n = tally.calls + 1;
        let outcome = tokio::select! {
            outcome = call(n) => outcome,
            signal = &mut stop => {
                microkit::signal::stopping(signal, "making no more calls")?;
                break;
            }
        };
        tally.calls = n;
        match outcome {
            Ok(line) => println!("call {n}{line}"),
            Err(line) => {
                tally.failed += 1;
                println!("call {n} failed{line}");
            }
        }
        if tally.calls == calls {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            signal = &mut stop => {
                microkit::signal::stopping(signal, "making no more calls")?;
                break;
            }
        }
    }
    println!("{} calls, {} failed", tally.calls, tally.failed);
    if tally.failed > 0 {
        anyhow::bail!("{} of {} calls failed", tally.failed, tally.calls);
    }
    Ok(tally)
}

/// For the examples' tests: a memory registry with a greeter node registered per name, and
/// a live view of them that already sees them all.
pub async fn memory_cluster(
    names: &[&str],
    ttl: Duration,
) -> (Arc<dyn Registry>, Vec<Registered>, LiveNodes) {
    let registry: Arc<dyn Registry> = Arc::new(registry::MemoryRegistry::new());
    let mut nodes = Vec::new();
    for name in names {
        nodes.push(start_node(&registry, name, ttl).await.unwrap());
    }
    let live = LiveNodes::watch(&registry, SERVICE).await.unwrap();
    live.wait_for_ids(names, microkit::PATIENCE).await.unwrap();
    (registry, nodes, live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use microkit::proto::greeter::HelloRequest;
    use microkit::proto::greeter::greeter_client::GreeterClient;
    use registry::MemoryRegistry;

    #[tokio::test]
    async fn the_server_counts_the_calls_it_receives() {
        let received = Arc::new(AtomicU64::new(0));
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let server = counting_greeter("n1", loopback, received.clone()).await.unwrap();
        let mut client = GreeterClient::connect(server.url()).await.unwrap();
        for _ in 0..3 {
            client.say_hello(HelloRequest { name: "x".into() }).await.unwrap();
        }
        assert_eq!(received.load(Ordering::Relaxed), 3);
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn the_client_waits_for_the_nodes_already_registered() {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let mut nodes = Vec::new();
        for name in ["n1", "n2", "n3"] {
            nodes.push(start_node(&registry, name, Duration::from_secs(5)).await.unwrap());
        }
        let live = watch_service(&registry).await.unwrap();
        let ids: Vec<String> = live.current().into_iter().map(|n| n.id).collect();
        assert_eq!(ids, ["n1", "n2", "n3"], "every listed node, before the first call");
    }

    #[tokio::test]
    async fn the_client_loop_makes_its_calls_and_counts_the_failures() {
        let mut seen = Vec::new();
        let tally = call_until_stopped(3, Duration::ZERO, async |n| {
            seen.push(n);
            Ok(String::new())
        })
        .await
        .unwrap();
        assert_eq!((tally, seen), (Tally { calls: 3, failed: 0 }, vec![1, 2, 3]));

        let error = call_until_stopped(3, Duration::ZERO, async |n| {
            if n == 2 { Err(": no".to_owned()) } else { Ok(String::new()) }
        })
        .await
        .unwrap_err();
        assert_eq!(error.to_string(), "1 of 3 calls failed");
    }
}
