//! `microkit`: the small toolkit that go-micro's lessons, ported to Rust, stand on.
//!
//! It holds only what two or more examples need. Each example keeps the idea it teaches
//! in its own file; what lives here is plumbing a reader can take on trust:
//!
//! - [`proto`]: the Greeter service and the example events, generated from `shared/proto`
//!   at build time.
//! - [`registry`]: service discovery (a `Registry` trait, memory and NATS implementations).
//! - [`broker`]: publish/subscribe (a `Broker` trait, memory and NATS implementations).
//! - [`health`]: health checking and reflection, mounted on every server.
//! - [`registered`]: a server listed in the registry for as long as it serves.
//! - [`discovery`]: a client's live view of a service's nodes, and a channel per node.
//! - [`backend`]: the one rule every example uses to pick NATS or the memory backend.
//! - [`server`] and [`greeter`]: a gRPC server on a free loopback port, for demos and tests.
//! - [`http`]: an axum server on a free loopback port and a forwarding client, for gateways.
//! - [`nats`]: a private `nats-server` (single node or a small cluster) for demos and tests.
//! - [`tls`]: an in-memory certificate authority with server and client certificates.
//! - [`signal`]: the stop request (SIGTERM, SIGINT, SIGHUP) every long-running role honours.
//! - [`report`] and [`init_tracing`]: how every example's `main` ends and where its logs go.

pub mod backend;
pub mod broker;
pub mod discovery;
pub mod greeter;
pub mod health;
pub mod http;
pub mod nats;
pub mod registered;
pub mod registry;
pub mod server;
pub mod signal;
pub mod tls;

/// Code generated from `shared/proto/*.proto`.
pub mod proto {
    /// The Greeter service: unary, server-, client- and bidi-streaming calls.
    pub mod greeter {
        tonic::include_proto!("greeter.v1");
    }

    /// The typed events of the pubsub and event examples (messages only, no service).
    pub mod events {
        tonic::include_proto!("events.v1");
    }
}

/// The `main` of every example: logs go to stderr, the command line is parsed (a bad flag
/// exits 2 with clap's message), `run` runs on a multi-threaded tokio runtime, and its error,
/// if any, is printed by [`report`] with exit code 1.
///
/// ```ignore
/// fn main() -> std::process::ExitCode {
///     microkit::main(run) // async fn run(args: Args) -> anyhow::Result<()>
/// }
/// ```
pub fn main<A, F>(run: impl FnOnce(A) -> F) -> std::process::ExitCode
where
    A: clap::Parser,
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    init_tracing();
    let args = A::parse();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => report(runtime.block_on(run(args))),
        Err(error) => report(Err(anyhow::Error::new(error).context("starting the tokio runtime"))),
    }
}

/// Ends `main`: an error is printed on stderr with its causes, and the exit code is 1.
///
/// Used instead of returning `anyhow::Result` from `main`, whose `Debug` output adds a
/// backtrace when `RUST_BACKTRACE` is set: a learner should see one clear sentence.
pub fn report(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line (`outer: inner: root`), for a message that leaves
/// the process (an HTTP answer, a printed line) where `{:#}` of anyhow is not at hand.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        line.push_str(": ");
        line.push_str(&inner.to_string());
        cause = inner.source();
    }
    line
}

/// Sends logs to stderr, filtered by `RUST_LOG` (default: warnings and errors only), so
/// stdout holds an example's results alone. Safe to call more than once.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// How long a demo or a test waits for something that should happen at once (a registry
/// change to arrive, a message to be delivered): a guard against a hang, never a pace. Every
/// wait of that kind uses this one bound, so a slow machine is given the same room everywhere.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
