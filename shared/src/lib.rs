//! `microkit`: the plumbing go-micro's lessons, ported to Rust, stand on, which a reader can
//! take on trust. go-micro's own ideas (the registry, the broker) are lessons of their own.
//!
//! - [`proto`]: the Greeter service and the example events, generated at build time;
//! - [`server`] and [`greeter`]: a server on a free loopback port, and a Greeter to serve;
//! - [`health`]: health checking and reflection, mounted on every server;
//! - [`signal`]: the stop request (SIGTERM, SIGINT, SIGHUP) every long-running role honours;
//! - [`timeout`]: the `grpc-timeout` header, read the same way by every hop.
//!
//! Beside it: `microkit-http` (axum) and `microkit-backend` (NATS or memory).

pub mod greeter;
pub mod health;
pub mod server;
pub mod signal;
pub mod timeout;

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
