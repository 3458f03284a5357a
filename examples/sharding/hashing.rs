//! Choosing a node for a user: rendezvous hashing, and go-micro's crc32 modulo beside it.
//!
//! Part of the sharding example (`affinity.rs` routes calls with it); the benchmarks compile
//! this same file to measure what a pick costs.

use registry::Node;

/// Rendezvous (highest random weight) hashing: every node scores the user, the highest
/// score wins. A node that joins wins only the users it now outscores everyone for; a node
/// that leaves gives up only its own users. No ring, no virtual nodes.
pub fn rendezvous<'a>(user: &str, nodes: &'a [Node]) -> Option<&'a Node> {
    // exercise begins: every node scores the user; the highest score wins
    nodes.iter().max_by_key(|node| score(user, &node.id))
    // exercise ends
}

/// A stable score: the same on every machine, in every process, in every Rust version.
/// (`std`'s `DefaultHasher` is none of these: its algorithm may change between releases.)
pub fn score(user: &str, node: &str) -> u64 {
    let mut bytes = Vec::with_capacity(user.len() + node.len() + 1);
    bytes.extend_from_slice(user.as_bytes());
    bytes.push(0); // so ("ab", "c") and ("a", "bc") differ
    bytes.extend_from_slice(node.as_bytes());
    mix(fnv1a(&bytes))
}

/// FNV-1a, 64 bits: tiny and stable.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64's finaliser: FNV alone leaves similar inputs with similar high bits, and
/// rendezvous compares whole scores, so every input bit must reach every output bit.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// go-micro's choice, for comparison: `crc32(user) % number of nodes`.
pub fn crc32_modulo<'a>(user: &str, nodes: &'a [Node]) -> Option<&'a Node> {
    if nodes.is_empty() {
        return None;
    }
    nodes.get(crc32(user.as_bytes()) as usize % nodes.len())
}

/// CRC-32 (IEEE), as Go's `crc32.ChecksumIEEE`, bit by bit: slow, short, and enough here.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

pub type Chooser = for<'a> fn(&str, &'a [Node]) -> Option<&'a Node>;

/// The share of `users` whose node differs between `before` and `after`.
pub fn moved_fraction(users: &[String], before: &[Node], after: &[Node], choose: Chooser) -> f64 {
    let moved = users
        .iter()
        .filter(|user| choose(user, before).map(|n| &n.id) != choose(user, after).map(|n| &n.id))
        .count();
    moved as f64 / users.len() as f64
}
