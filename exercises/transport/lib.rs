//! The transport lesson's parts that other code builds on (the benches measure them as they are).

pub mod bus;
pub mod memory;
pub mod service;
