//! The trace lesson's parts that other code builds on (the benches measure them as they are).

pub mod metrics;
pub mod propagation;
