//! Service discovery, the registry every other topic finds its nodes in: the [`Registry`]
//! trait and [`Registration`] (`registry.rs`, the lesson), kept in memory ([`MemoryRegistry`])
//! or in a NATS JetStream key-value bucket ([`NatsRegistry`]), and [`Registered`], a server
//! listed for exactly as long as it serves.

mod memory;
mod nats;
mod registered;
mod registry;
#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use memory::MemoryRegistry;
pub use nats::{DEFAULT_BUCKET, MAX_TTL, NatsRegistry};
pub use registered::Registered;
pub use registry::{BoxError, Change, Node, Registration, Registry, RegistryError};

use microkit_backend::Backend;

/// The registry of `backend`: in memory, the one every part of this program shares (as
/// separate programs share one NATS server); on NATS, a handle on the registry's bucket.
pub fn on(backend: &Backend) -> Arc<dyn Registry> {
    match backend {
        Backend::Memory(shared) => Arc::new(shared.get::<MemoryRegistry>()),
        Backend::Nats { client, .. } => Arc::new(NatsRegistry::new(client.clone())),
    }
}
