//! The retry lesson's policy, as a library: its example and the benches use the same code.

pub mod policy;
