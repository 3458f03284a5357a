//! The tunnel lesson's parts that other code builds on (the benches measure them as they are).

pub mod deadline;
pub mod frame;
pub mod link;
pub mod session;
