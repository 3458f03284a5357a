//! # api: an API gateway, JSON in, any registered gRPC service out
//!
//! `POST /<service>/<method>` with a JSON body becomes a gRPC call on a node of that service
//! found in the registry. The gateway holds no proto: it asks the node by reflection what the
//! method takes and returns, and converts JSON to protobuf and back. At the edge it checks a
//! signed token and its scopes, a rate limit per client, a circuit breaker per service, and
//! bounds on size, depth and time.
//!
//! Run it: `cargo run --example api`
//!
//! Read `convert.rs` first, then `edge.rs`; explained in `notes/api.md`.

mod roles; // roles, for several terminals
mod story; // the story the default run tells
#[cfg(test)]
mod tests; // tests

use clap::Parser;

/// An API gateway: HTTP/JSON to any gRPC service in the registry, learned by reflection
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    backend: microkit_backend::BackendArgs,
    #[command(subcommand)]
    role: Option<roles::Role>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse()).await)
}

/// The whole story in this process, or one role of it over a shared NATS.
async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(roles::Role::Token(token)) = &args.role {
        return token.print();
    }
    // Roles meet only on a shared NATS: without one they refuse before starting anything.
    let backend = match &args.role {
        None => args.backend.connect().await?,
        Some(_) => args.backend.connect_shared("the gateway and the services behind it").await?,
    };
    let registry = registry::on(&backend);
    let Some(role) = args.role else { return story::demo(&registry).await };
    roles::run(role, registry).await
}
