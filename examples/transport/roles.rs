//! The roles, run as separate processes on one NATS: instances of the service, and a client
//! that finds and calls them.

use std::collections::BTreeSet;

use anyhow::Context;
use bytes::Bytes;
use clap::Subcommand;
use microkit::proto::greeter::greeter_server::GreeterServer;
use microkit::proto::greeter::{HelloReply, HelloRequest};
use microkit::server::RunningServer;
use prost::Message;
use registry::Registered;

use crate::bus::{Answer, Bus, Ping};
use crate::memory::MemoryBus;
use crate::service::{METHOD, OverHttp2, SERVICE, VERSION};
use crate::story::TTL;

#[derive(Subcommand, Debug)]
pub(crate) enum Role {
    /// One instance: the greeter over HTTP/2 (listed in the registry) and as a NATS service
    /// instance, until SIGTERM, SIGINT or SIGHUP.
    Serve {
        /// This node's name, in the registry and in the service's metadata.
        #[arg(long, default_value = "greeter-1", value_parser = word)]
        id: String,
    },
    /// Finds the service's instances with $SRV.PING and calls SayHello over NATS.
    Client {
        #[arg(long, default_value = "ada", value_parser = word)]
        name: String,
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        calls: u32,
    },
}

/// Names and ids: one word of letters, digits, `-` and `_`, at most 64 characters.
fn word(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?}: use letters, digits, '-' and '_' (at most 64)"))
    }
}

/// One role in this process: an instance until it is stopped, or the client's calls.
pub(crate) async fn run(role: Role, backend: &microkit_backend::Backend) -> anyhow::Result<()> {
    let bus = Bus::connect(backend, &MemoryBus::new()).await?;
    match role {
        Role::Serve { id } => serve(backend, &bus, &id).await,
        Role::Client { name, calls } => client(&bus, &name, calls).await,
    }
}

/// Serves until asked to stop, then leaves the queue group and the registry, and says how
/// many calls it served over NATS.
async fn serve(backend: &microkit_backend::Backend, bus: &Bus, id: &str) -> anyhow::Result<()> {
    let routes = tonic::service::Routes::new(GreeterServer::new(OverHttp2 { node: id.into() }));
    let server = RunningServer::start(routes).await?;
    let grpc = Registered::new(&registry::on(backend), server, SERVICE, id, TTL).await?;
    let nats = crate::service::serve_over_nats(bus, id).await?;
    // Armed before the ready line: a signal that follows it is a stop request.
    let stop = microkit::signal::stop_requested();
    println!("{id}: serving {METHOD} over HTTP/2 and as NATS service {SERVICE} {VERSION}");
    let signal = microkit::signal::stopping(stop.await, "leaving the queue group, then draining")?;
    let served = nats.stop().await;
    // Deregister, then drain the HTTP/2 calls in flight, for at most PATIENCE; even if the
    // NATS side failed, so the registry never keeps a node that has gone.
    tokio::time::timeout(microkit::PATIENCE, grpc.stop())
        .await
        .context("the HTTP/2 drain hung")??;
    let served = served?;
    println!("{id}: stopped on {signal}: {served} calls served over NATS");
    Ok(())
}

/// Discovery first (who is there, in which version), then the calls.
async fn client(bus: &Bus, name: &str, calls: u32) -> anyhow::Result<()> {
    let pings = bus.gather(&format!("$SRV.PING.{SERVICE}")).await?;
    let pings: Vec<Ping> = crate::bus::parse_all(pings);
    anyhow::ensure!(!pings.is_empty(), "no instance of {SERVICE} answered $SRV.PING.{SERVICE}");
    let found: BTreeSet<String> = pings
        .iter()
        .map(|p| format!("{} {}: {}", p.name, p.version, crate::bus::node_of(p)))
        .collect();
    for instance in found {
        println!("found {instance}");
    }
    let payload = Bytes::from(HelloRequest { name: name.into() }.encode_to_vec());
    for _ in 0..calls {
        match bus.request(&format!("{SERVICE}.{METHOD}"), payload.clone()).await? {
            Answer::Reply(reply) => {
                let reply = HelloReply::decode(reply).context("not a HelloReply")?;
                println!("{} from {}", reply.message, reply.node);
            }
            Answer::ServiceError { code, description } => {
                anyhow::bail!("{SERVICE}.{METHOD} refused: {code} {description}")
            }
        }
    }
    Ok(())
}
