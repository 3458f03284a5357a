//! The `client` role, for several terminals over a shared NATS (the `server` role is
//! round-robin's `round_robin::serve`).

use std::sync::Arc;
use std::time::Duration;

use microkit::proto::greeter::greeter_client::GreeterClient;
use registry::Registry;

use crate::affinity::{ShardRouter, USER_HEADER, hello};

/// The `client` role: every call as `user` (or without the header), and who answered.
pub async fn client(
    registry: &Arc<dyn Registry>,
    user: Option<&str>,
    calls: u64,
    interval: Duration,
) -> anyhow::Result<()> {
    let mut client =
        GreeterClient::new(ShardRouter::new(round_robin::watch_service(registry).await?));
    let who = user.map_or("no header".to_owned(), |u| format!("{USER_HEADER}: {u}"));
    round_robin::call_until_stopped(calls, interval, async |_| {
        match hello(&mut client, user).await {
            Ok(node) => Ok(format!(" ({who}): {node}")),
            Err(status) => Err(format!(" ({who}): {:?}: {}", status.code(), status.message())),
        }
    })
    .await?;
    Ok(())
}
