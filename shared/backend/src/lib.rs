//! Which backend an example runs on: real NATS, or the memory backend inside this process.
//! One rule, the same in every example:
//! 1. `NATS_URL` is set: connect to it, a cluster as a comma-separated list (an unreachable
//!    URL is an error naming it, never a silent fall-back: the user asked for that server).
//! 2. Else a `nats-server` binary is installed: start a private one (loopback, random port,
//!    JetStream in a temporary folder, killed on exit).
//! 3. Else the memory backend (everything in this one process), saying so on stderr.
//!
//! `--backend memory|nats` (or `MICRO_BACKEND`) overrides the rule; the tests run each
//! example on both. Whichever runs, stdout is the same.

pub mod nats;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use crate::nats::PrivateServer;

/// The environment variable naming a NATS server to use.
pub const NATS_URL: &str = "NATS_URL";

/// The `--backend` flag, to `#[command(flatten)]` into an example's arguments.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct BackendArgs {
    /// Where the broker and the registry live.
    #[arg(long, env = "MICRO_BACKEND", value_enum, default_value_t)]
    pub backend: BackendChoice,
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
    /// Everything lives in this process, and every part of it shares the same state, as
    /// separate programs would share one NATS deployment.
    Memory(Shared),
    Nats {
        client: async_nats::Client,
        url: String,
        /// The private server, when we started one; it stops when this is dropped.
        server: Option<PrivateServer>,
    },
}

/// The memory backend's state: one value of each type, made on first use and handed to
/// every part of the program that asks for it. The registry and broker lessons keep their
/// memory implementations here, so a publisher and its subscribers in the same program
/// always meet, as they would on one NATS server.
#[derive(Clone, Default)]
pub struct Shared(Arc<Mutex<HashMap<TypeId, Box<dyn Any + Send>>>>);

impl Shared {
    /// The one `T` of this backend (a handle: cloning it must share its state).
    pub fn get<T: Any + Clone + Default + Send>(&self) -> T {
        let mut values = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let value = values.entry(TypeId::of::<T>()).or_insert_with(|| Box::new(T::default()));
        value.downcast_ref::<T>().expect("stored under its own type id").clone()
    }
}

impl Backend {
    /// A short name for logs: `memory` or `nats`, as the `--backend` flag spells them.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Memory(_) => "memory",
            Backend::Nats { .. } => "nats",
        }
    }
}

fn memory() -> Backend {
    Backend::Memory(Shared::default())
}

impl BackendArgs {
    /// Applies the rule above, reading `NATS_URL` from the environment.
    pub async fn connect(&self) -> anyhow::Result<Backend> {
        let url = std::env::var(NATS_URL).ok().filter(|u| !u.is_empty());
        self.connect_with(url.as_deref()).await
    }

    /// For roles run as separate processes: they meet only on a NATS server that outlives
    /// them (named by `NATS_URL`), never on a private server or memory backend of their
    /// own, which would leave each role alone with itself. So without `NATS_URL`, or with
    /// `--backend memory`, this refuses before starting anything; `roles` names them.
    pub async fn connect_shared(&self, roles: &str) -> anyhow::Result<Backend> {
        let url = std::env::var(NATS_URL).ok().filter(|u| !u.is_empty());
        self.connect_shared_with(url.as_deref(), roles).await
    }

    /// [`connect_shared`](Self::connect_shared), with `NATS_URL`'s value passed in.
    async fn connect_shared_with(
        &self,
        nats_url: Option<&str>,
        roles: &str,
    ) -> anyhow::Result<Backend> {
        match (self.backend, nats_url) {
            (BackendChoice::Auto | BackendChoice::Nats, Some(url)) => {
                self.connect_with(Some(url)).await
            }
            _ => anyhow::bail!(
                "{roles} find each other through a shared NATS: start one (`nats-server -js`) \
                 and set {NATS_URL}, e.g. {NATS_URL}=nats://127.0.0.1:4222"
            ),
        }
    }

    /// The rule, with `NATS_URL`'s value passed in (so tests need not touch the environment).
    pub async fn connect_with(&self, nats_url: Option<&str>) -> anyhow::Result<Backend> {
        match (self.backend, nats_url) {
            (BackendChoice::Memory, _) => Ok(memory()),
            (BackendChoice::Auto | BackendChoice::Nats, Some(url)) => {
                let client = connect(url, Default::default()).await?;
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

async fn start_private() -> anyhow::Result<Backend> {
    let server = PrivateServer::start().await.context("starting a private nats-server")?;
    let url = server.url();
    let client = connect(&url, Default::default()).await?;
    // One line, as the memory fall-back says one: a learner sees which backend runs.
    eprintln!(
        "note: started a private nats-server at {url} for this run (set {NATS_URL} to use another)"
    );
    Ok(Backend::Nats { client, url, server: Some(server) })
}

/// The servers a `NATS_URL` names, comma-separated as nats.go's `Connect` and the `nats` tool
/// take them (spaces and empty entries ignored). async-nats connects to one that answers, in
/// random order, and reconnects to another when its node goes down.
fn server_list(url: &str) -> Vec<&str> {
    url.split(',').map(str::trim).filter(|server| !server.is_empty()).collect()
}

/// Connects once with `options` (a broker sets its buffers; most callers take the default),
/// to every server `url` lists (see `server_list`), failing within 3 s with a message that
/// names the URL and what to do.
pub async fn connect(
    url: &str,
    options: async_nats::ConnectOptions,
) -> anyhow::Result<async_nats::Client> {
    let servers = server_list(url);
    if servers.is_empty() {
        anyhow::bail!("{NATS_URL} {url:?} names no server: set it to e.g. nats://127.0.0.1:4222");
    }
    options.connection_timeout(Duration::from_secs(3)).connect(servers).await.with_context(|| {
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
        let server = PrivateServer::start().await.unwrap();
        let backend = args(BackendChoice::Auto).connect_with(Some(&server.url())).await.unwrap();
        let Backend::Nats { url, server: private, .. } = backend else { panic!("not NATS") };
        assert_eq!(url, server.url());
        assert!(private.is_none(), "no private server when a URL is given");
    }

    #[tokio::test]
    async fn roles_refuse_without_a_shared_server_before_starting_one() {
        for (choice, url) in [
            (BackendChoice::Auto, None),
            (BackendChoice::Nats, None),
            (BackendChoice::Memory, Some("nats://127.0.0.1:1")),
        ] {
            let error = match args(choice).connect_shared_with(url, "the a and b roles").await {
                Ok(backend) => panic!("{choice:?} with {url:?} gave {}", backend.name()),
                Err(e) => e.to_string(),
            };
            assert!(error.starts_with("the a and b roles find each other"), "{error}");
            assert!(error.contains("NATS_URL=nats://"), "says what to set: {error}");
        }
    }

    #[tokio::test]
    async fn roles_use_the_shared_server_named() {
        let server = PrivateServer::start().await.unwrap();
        let backend = args(BackendChoice::Auto)
            .connect_shared_with(Some(&server.url()), "roles")
            .await
            .unwrap();
        let Backend::Nats { server: private, .. } = backend else { panic!("not NATS") };
        assert!(private.is_none(), "no private server for roles");
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
    async fn without_a_url_a_private_server_is_started() {
        let backend = args(BackendChoice::Nats).connect_with(None).await.unwrap();
        let Backend::Nats { client, server, .. } = backend else { panic!("not NATS") };
        assert!(server.is_some(), "the private server is kept with the backend");
        client.flush().await.unwrap();
    }

    #[tokio::test]
    async fn every_part_of_a_memory_backend_gets_the_same_state() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let Backend::Memory(shared) = args(BackendChoice::Memory).connect_with(None).await.unwrap()
        else {
            panic!("not memory")
        };
        shared.get::<Arc<AtomicU32>>().fetch_add(1, Ordering::SeqCst);
        assert_eq!(shared.clone().get::<Arc<AtomicU32>>().load(Ordering::SeqCst), 1);
        let other = Shared::default();
        assert_eq!(other.get::<Arc<AtomicU32>>().load(Ordering::SeqCst), 0, "not another's");
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
