//! Which backend an example runs on: real NATS, or the memory backend inside this process.
//!
//! One rule, the same in every example:
//! 1. `NATS_URL` is set: connect to it (an unreachable URL is an error naming it, never a
//!    silent fall-back: the user asked for that server). It may name a cluster, as a
//!    comma-separated list (`nats://a:4222,nats://b:4222`, see [`server_list`]).
//! 2. Else a `nats-server` binary is installed: start a private one (loopback, random port,
//!    JetStream in a temporary folder, killed on exit).
//! 3. Else: the memory backend (everything inside this one process), with one line on
//!    stderr saying so and how to install NATS.
//!
//! `--backend memory|nats` (or `MICRO_BACKEND=memory|nats`) overrides the rule; the tests
//! use it to run each example on both. Whichever runs, stdout is the same.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::broker::{Broker, MemoryBroker, NatsBroker};
use crate::nats::{self, NatsServer};
use crate::registry::{MemoryRegistry, NatsRegistry, Registry};

/// The environment variable naming a NATS server to use.
pub const NATS_URL: &str = "NATS_URL";

/// The `--backend` flag, to `#[command(flatten)]` into an example's arguments.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct BackendArgs {
    /// Where the broker and the registry live.
    #[arg(long, env = "MICRO_BACKEND", value_enum, default_value_t)]
    pub backend: BackendChoice,
}

/// What an example with roles says about itself, for `--help`.
pub trait Roles: clap::Subcommand {
    /// One line: what the example shows.
    const ABOUT: &'static str;
}

/// The command line of an example whose topic is several programs: `--backend`, and the
/// role to run in this process (none: the whole story, in one process).
#[derive(clap::Parser, Debug)]
#[command(about = R::ABOUT)]
pub struct Cli<R: Roles> {
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Run one role against a shared NATS server; without a role, everything runs here.
    #[command(subcommand)]
    pub role: Option<R>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// NATS_URL if set, else a private nats-server if installed, else memory.
    #[default]
    Auto,
    /// The memory backend: nothing to install, one process only.
    Memory,
    /// NATS: NATS_URL if set, else a private nats-server.
    Nats,
}

/// The backend an example ended up with.
#[allow(clippy::large_enum_variant)] // one value per process: its size does not matter
pub enum Backend {
    /// The registry and the broker hub live in this process, and every part of it shares
    /// them, as separate programs would share one NATS deployment.
    Memory { registry: MemoryRegistry, broker: MemoryBroker },
    Nats {
        client: async_nats::Client,
        url: String,
        /// The private server, when we started one; it stops when this is dropped.
        server: Option<NatsServer>,
    },
}

impl Backend {
    /// A short name for logs: `memory` or `nats`, as the `--backend` flag spells them.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Memory { .. } => "memory",
            Backend::Nats { .. } => "nats",
        }
    }

    /// The service registry on this backend. In memory, every call hands out the same
    /// registry; on NATS, each is a handle on the same bucket.
    pub fn registry(&self) -> Arc<dyn Registry> {
        match self {
            Backend::Memory { registry, .. } => Arc::new(registry.clone()),
            Backend::Nats { client, .. } => Arc::new(NatsRegistry::new(client.clone())),
        }
    }
}

fn memory() -> Backend {
    Backend::Memory { registry: MemoryRegistry::new(), broker: MemoryBroker::new() }
}

impl Backend {
    /// For roles run as separate processes: they meet only on a NATS server that outlives
    /// them (named by `NATS_URL`), never on a private server or memory backend of their
    /// own, which would leave each role alone with itself. `roles` names them in the error.
    pub fn require_shared_nats(&self, roles: &str) -> anyhow::Result<()> {
        match self {
            Backend::Nats { server: None, .. } => Ok(()),
            _ => anyhow::bail!(
                "{roles} find each other through a shared NATS: start one (`nats-server -js`) \
                 and set {NATS_URL}, e.g. {NATS_URL}=nats://127.0.0.1:4222"
            ),
        }
    }
}

impl BackendArgs {
    /// Applies the rule above, reading `NATS_URL` from the environment.
    pub async fn connect(&self) -> anyhow::Result<Backend> {
        let url = std::env::var(NATS_URL).ok().filter(|u| !u.is_empty());
        self.connect_with(url.as_deref()).await
    }

    /// The rule, with `NATS_URL`'s value passed in (so tests need not touch the environment).
    pub async fn connect_with(&self, nats_url: Option<&str>) -> anyhow::Result<Backend> {
        match (self.backend, nats_url) {
            (BackendChoice::Memory, _) => Ok(memory()),
            (BackendChoice::Auto | BackendChoice::Nats, Some(url)) => {
                let client = connect(url).await?;
                Ok(Backend::Nats { client, url: url.to_owned(), server: None })
            }
            (BackendChoice::Nats, None) => start_private().await,
            (BackendChoice::Auto, None) if nats::available() => start_private().await,
            (BackendChoice::Auto, None) => {
                eprintln!(
                    "note: no NATS_URL and no nats-server installed, so running on the memory \
                     backend (one process only); to run on NATS, {}",
                    nats::INSTALL_HINT
                );
                Ok(memory())
            }
        }
    }
}

impl Backend {
    /// A new broker client: on NATS its own connection (sized for no silent drops, see
    /// `broker::nats`); in memory, another client of this backend's one hub, so a
    /// publisher and its subscribers in the same program always meet.
    pub async fn broker(&self) -> anyhow::Result<Arc<dyn Broker>> {
        Ok(match self {
            Backend::Memory { broker, .. } => Arc::new(broker.connect_another()),
            Backend::Nats { url, .. } => Arc::new(NatsBroker::connect(url).await?),
        })
    }
}

async fn start_private() -> anyhow::Result<Backend> {
    let server = NatsServer::start().await.context("starting a private nats-server")?;
    let url = server.url();
    let client = connect(&url).await?;
    tracing::info!(%url, "started a private nats-server");
    Ok(Backend::Nats { client, url, server: Some(server) })
}

/// The servers a `NATS_URL` names: one URL, or several separated by commas, the convention
/// of nats.go's `Connect` and the `nats` tool (spaces around an entry and empty entries are
/// ignored, as there). Given every node of a cluster, a client connects to one that answers
/// (async-nats tries them in random order, spreading clients over the nodes) and, when its
/// node goes down, reconnects to another.
pub fn server_list(url: &str) -> Vec<&str> {
    url.split(',').map(str::trim).filter(|server| !server.is_empty()).collect()
}

/// Connects once, failing fast with a message that names the URL and what to do.
pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    let servers = server_list(url);
    if servers.is_empty() {
        anyhow::bail!("{NATS_URL} {url:?} names no server: set it to e.g. nats://127.0.0.1:4222");
    }
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(servers)
        .await
        .with_context(|| {
            format!(
                "cannot reach NATS at {url} (from {NATS_URL} or --backend nats): is a server \
                 running there? Start one with `nats-server -js`, or unset {NATS_URL} to run \
                 in memory"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(backend: BackendChoice) -> BackendArgs {
        BackendArgs { backend }
    }

    #[tokio::test]
    async fn memory_is_chosen_explicitly_even_with_a_url() {
        let backend = args(BackendChoice::Memory).connect_with(Some("nats://127.0.0.1:1")).await;
        assert!(matches!(backend.unwrap(), Backend::Memory { .. }));
    }

    #[tokio::test]
    async fn an_unreachable_url_is_an_error_naming_it() {
        // Port 1 on loopback: nothing listens there.
        let url = "nats://127.0.0.1:1";
        for choice in [BackendChoice::Auto, BackendChoice::Nats] {
            let error = match args(choice).connect_with(Some(url)).await {
                Ok(_) => panic!("{choice:?} connected to a closed port"),
                Err(e) => format!("{e:#}"),
            };
            assert!(error.contains(url), "{error}");
            assert!(error.contains("nats-server"), "says how to start one: {error}");
        }
    }

    #[tokio::test]
    async fn a_reachable_url_is_used_as_given() {
        let server = NatsServer::start().await.expect(nats::INSTALL_HINT);
        let backend = args(BackendChoice::Auto).connect_with(Some(&server.url())).await.unwrap();
        let Backend::Nats { url, server: private, .. } = backend else { panic!("not NATS") };
        assert_eq!(url, server.url());
        assert!(private.is_none(), "no private server when a URL is given");
    }

    #[test]
    fn a_url_list_is_split_on_commas_as_nats_go_splits_it() {
        assert_eq!(server_list("nats://a:4222"), ["nats://a:4222"]);
        assert_eq!(
            server_list("nats://a:4222, nats://b:4222,,nats://c:4222,"),
            ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
        assert!(server_list(" , ").is_empty());
    }

    #[tokio::test]
    async fn a_list_naming_no_server_is_refused_saying_so() {
        let error = args(BackendChoice::Nats).connect_with(Some(",")).await.err().unwrap();
        assert!(error.to_string().contains("names no server"), "{error:#}");
    }

    #[tokio::test]
    async fn a_url_list_reaches_a_cluster_whose_first_node_is_down() {
        use futures::StreamExt;
        let mut cluster = nats::NatsCluster::start(3).await.expect(nats::INSTALL_HINT);
        cluster.nodes[0].stop().await.unwrap();
        let list = cluster.urls().join(",");
        let backend = args(BackendChoice::Auto).connect_with(Some(&list)).await.unwrap();
        let Backend::Nats { client, url, server } = &backend else { panic!("not NATS") };
        assert_eq!((url, server.is_none()), (&list, true));
        client.flush().await.unwrap();
        // The broker takes the same list: a message goes out and comes back through it.
        let broker = backend.broker().await.unwrap();
        let mut messages = broker.subscribe("list.check", None).await.unwrap();
        broker.publish("list.check", Default::default(), "hi".into()).await.unwrap();
        let message = tokio::time::timeout(crate::PATIENCE, messages.next()).await.unwrap();
        assert_eq!(&message.unwrap().payload[..], b"hi");
    }

    #[tokio::test]
    async fn without_a_url_a_private_server_is_started() {
        let backend = args(BackendChoice::Nats).connect_with(None).await.unwrap();
        let Backend::Nats { client, server, .. } = backend else { panic!("not NATS") };
        assert!(server.is_some_and(|s| s.is_running()));
        client.flush().await.unwrap();
    }

    #[tokio::test]
    async fn the_memory_backend_shares_one_registry() {
        let backend = args(BackendChoice::Memory).connect_with(None).await.unwrap();
        let node = crate::registry::Node::new("greeter", "a", "127.0.0.1:1");
        backend.registry().register(&node, Duration::from_secs(5)).await.unwrap();
        assert_eq!(backend.registry().nodes("greeter").await.unwrap(), [node]);
    }

    #[test]
    fn the_flag_parses_and_rejects_unknown_values() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            backend: BackendArgs,
        }
        let cli = Cli::try_parse_from(["x", "--backend", "memory"]).unwrap();
        assert_eq!(cli.backend.backend, BackendChoice::Memory);
        let error = Cli::try_parse_from(["x", "--backend", "redis"]).err().unwrap().to_string();
        assert!(error.contains("redis") && error.contains("memory"), "{error}");
    }
}
