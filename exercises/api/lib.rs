//! The api gateway as a library: what the example runs, and what the benches measure.
//!
//! - [`convert`]: JSON to protobuf and back, with descriptors a node hands over by reflection.
//! - [`edge`]: what the edge checks before a call goes in: tokens and scopes, a rate limit per
//!   client, a circuit breaker per service, and bounds on what a request may hold.
//! - [`gateway`]: the two put together behind `POST /<service>/<method>`.
//! - [`backends`]: the services behind it in the story (the Calculator, two revisions of Stock).

pub mod backends;
pub mod convert;
pub mod edge;
pub mod gateway;

pub use gateway::{Gateway, Settings};
