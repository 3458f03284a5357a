//! The sharding lesson's parts that other code builds on (the benches measure them as they are).

pub mod hashing;
