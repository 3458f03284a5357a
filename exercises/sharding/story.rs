//! The default run: eight users over three nodes, then a fourth node joins and only the
//! users it wins move; beside it, how many users go-micro's crc32 modulo would move.

use std::sync::Arc;

use anyhow::bail;
use health::LiveNodes;
use microkit::PATIENCE;
use microkit::proto::greeter::greeter_client::GreeterClient;
use registry::Registry;
use round_robin::{SERVICE, start_node};
use sharding::hashing::{crc32_modulo, moved_fraction, rendezvous};

use crate::TTL;
use crate::affinity::{ShardRouter, USER_HEADER, hello};

/// The users of the printed table.
const USERS: [&str; 8] = ["ada", "bo", "carol", "dan", "eve", "finn", "gus", "hana"];
/// How many users the moved fractions are measured over.
pub const POPULATION: usize = 10_000;

/// One process, the whole story: three nodes, eight users, then a fourth node joins.
pub async fn demo(registry: &Arc<dyn Registry>) -> anyhow::Result<()> {
    let mut running = Vec::new();
    for name in ["greeter-a", "greeter-b", "greeter-c"] {
        running.push(start_node(registry, name, TTL).await?);
    }
    let nodes = LiveNodes::watch(registry, SERVICE).await?;
    nodes.wait_for_ids(&["greeter-a", "greeter-b", "greeter-c"], PATIENCE).await?;
    let router = ShardRouter::new(nodes);
    let mut client = GreeterClient::new(router.clone());
    let three = router.nodes.current();
    let ids: Vec<String> = three.iter().map(|n| n.id.clone()).collect();
    println!("nodes of {SERVICE}: {}", ids.join(", "));

    println!("user   node (3 calls each)");
    let mut before = Vec::new();
    for user in USERS {
        let node = same_node_every_time(&mut client, user, 3).await?;
        println!("{user:<6} {node}");
        before.push(node);
    }

    running.push(start_node(registry, "greeter-d", TTL).await?);
    let all = ["greeter-a", "greeter-b", "greeter-c", "greeter-d"];
    router.nodes.wait_for_ids(&all, PATIENCE).await?;
    println!("greeter-d joined");
    println!("user   node (3 calls each)");
    let mut moved = 0;
    for (user, old) in USERS.iter().zip(&before) {
        let node = same_node_every_time(&mut client, user, 3).await?;
        if &node == old {
            println!("{user:<6} {node}");
        } else {
            moved += 1;
            println!("{user:<6} {node} (moved from {old})");
        }
    }
    println!("moved: {moved} of {} users", USERS.len());

    let four = router.nodes.current();
    let population: Vec<String> = (0..POPULATION).map(|i| format!("user-{i}")).collect();
    println!("of {POPULATION} users, adding a 4th node moves:");
    let rendezvous_moved = moved_fraction(&population, &three, &four, rendezvous);
    println!("  rendezvous hashing {:5.1}%  (ideal: 1/4 = 25.0%)", rendezvous_moved * 100.0);
    let modulo_moved = moved_fraction(&population, &three, &four, crc32_modulo);
    println!("  crc32 modulo       {:5.1}%  (go-micro's choice)", modulo_moved * 100.0);

    let mut turns = Vec::new();
    for _ in 0..4 {
        turns.push(hello(&mut client, None).await?);
    }
    println!("no {USER_HEADER} header, 4 calls: {}", turns.join(" "));

    for node in running {
        node.stop().await?;
    }
    Ok(())
}

/// Calls `count` times as `user` and checks one node answered them all.
pub async fn same_node_every_time(
    client: &mut GreeterClient<ShardRouter>,
    user: &str,
    count: usize,
) -> anyhow::Result<String> {
    let first = hello(client, Some(user)).await?;
    for _ in 1..count {
        let node = hello(client, Some(user)).await?;
        if node != first {
            bail!("{user} reached {first}, then {node}: affinity broken");
        }
    }
    Ok(first)
}
