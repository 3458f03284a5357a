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
//! - [`out`] and [`golden`]: deterministic stdout, logs on stderr, golden-file checks.

pub mod backend;
pub mod broker;
pub mod discovery;
pub mod golden;
pub mod greeter;
pub mod health;
pub mod http;
pub mod nats;
pub mod out;
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

pub use out::{Out, init_tracing, report};

/// How long a demo or a test waits for something that should happen at once (a registry
/// change to arrive, a message to be delivered): a guard against a hang, never a pace. Every
/// wait of that kind uses this one bound, so a slow machine is given the same room everywhere.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
