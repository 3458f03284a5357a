//! Fixtures only tests use: `nats-server` nodes on this machine that a test can stop, restart,
//! pause or route into a cluster. Only dev-dependencies pull this crate, so no topic's
//! library compiles it (an example program, which cargo builds with its package's
//! dev-dependencies, may).

use std::net::TcpListener;
use std::time::Duration;

use anyhow::Context;
use microkit_backend::nats::spawn;
use tempfile::TempDir;
use tokio::process::Child;

/// One `nats-server` owned by a test: JetStream on, on a loopback port, killed on drop.
/// It can be stopped and restarted on the same port with the same store, which is what a
/// real outage looks like to clients.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    name: String,
    /// Extra arguments (cluster settings); empty for a single node.
    extra_args: Vec<String>,
    /// JetStream's store, the server's log and its process id; deleted on drop.
    dir: TempDir,
}

impl NatsServer {
    /// Starts a single node on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::launch("solo", None, Vec::new()).await
    }

    async fn launch(
        name: &str,
        port: Option<u16>,
        extra_args: Vec<String>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("nats-").tempdir()?;
        let (child, port) = spawn(dir.path(), name, port, &extra_args).await?;
        Ok(NatsServer { child: Some(child), port, name: name.to_owned(), extra_args, dir })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id, so a test can pause it (`kill -STOP`) and see what clients
    /// do with a server that is up but stalled. `None` when it is not running. (The child
    /// held here is the supervisor, not the server: the server writes its own id.)
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref()?;
        let written = std::fs::read_to_string(self.dir.path().join("nats-server.pid")).ok()?;
        written.trim().parse().ok()
    }

    /// Kills the server (clients see the connection drop); the store is kept.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // Closing the supervisor's stdin is the kill order; it exits once the server is
            // gone, so the port is free when this returns.
            drop(child.stdin.take());
            match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(status) => {
                    status.context("stopping nats-server")?;
                }
                Err(_) => child.kill().await.context("stopping nats-server")?,
            }
        }
        Ok(())
    }

    /// Starts it again on the same port with the same JetStream store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        let (child, _) =
            spawn(self.dir.path(), &self.name, Some(self.port), &self.extra_args).await?;
        self.child = Some(child);
        Ok(())
    }
}

/// Three `nats-server` nodes routed into one cluster, JetStream replicated across them.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes (3 for a JetStream quorum) on loopback and waits for the routes.
    pub async fn start(size: usize) -> anyhow::Result<Self> {
        let client_ports: Vec<u16> = (0..size).map(|_| free_port()).collect::<Result<_, _>>()?;
        let route_ports: Vec<u16> = (0..size).map(|_| free_port()).collect::<Result<_, _>>()?;
        let routes: Vec<String> =
            route_ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
        let mut nodes = Vec::with_capacity(size);
        for (i, (&port, &route_port)) in client_ports.iter().zip(&route_ports).enumerate() {
            let args = vec![
                "--cluster_name".to_owned(),
                "lessons".to_owned(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{route_port}"),
                "--routes".to_owned(),
                routes.join(","),
            ];
            nodes.push(NatsServer::launch(&format!("node-{}", i + 1), Some(port), args).await?);
        }
        Ok(NatsCluster { nodes })
    }

    /// Every node's URL, comma-joined: what a client is given so it can fail over.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }
}

/// A port the OS says is free now (another process may take it before a node binds; the
/// node's start then fails saying so).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_message_crosses_a_three_node_cluster() {
        use futures::StreamExt;
        let cluster = NatsCluster::start(3).await.unwrap();
        let subscriber = async_nats::connect(cluster.nodes[0].url()).await.unwrap();
        let publisher = async_nats::connect(cluster.nodes[2].url()).await.unwrap();
        let mut sub = subscriber.subscribe("cluster.check").await.unwrap();
        subscriber.flush().await.unwrap();
        // Routes form asynchronously: publish until the interest has propagated.
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                publisher.publish("cluster.check", "hi".into()).await.unwrap();
                publisher.flush().await.unwrap();
                if let Ok(Some(m)) =
                    tokio::time::timeout(Duration::from_millis(100), sub.next()).await
                {
                    return m;
                }
            }
        })
        .await
        .expect("the cluster routes the message from node 3 to node 1");
        assert_eq!(&got.payload[..], b"hi");
    }

    #[tokio::test]
    async fn starts_stops_and_restarts_on_the_same_port() {
        let mut server = NatsServer::start().await.unwrap();
        let client = async_nats::connect(server.url()).await.unwrap();
        client.flush().await.unwrap();
        let url = server.url();

        server.stop().await.unwrap();
        assert!(server.pid().is_none(), "no process id while stopped");
        assert!(async_nats::connect(server.url()).await.is_err(), "stopped means unreachable");

        server.restart().await.unwrap();
        assert_eq!(server.url(), url);
        assert!(server.pid().is_some(), "the restarted server wrote its process id");
        let again = async_nats::connect(server.url()).await.unwrap();
        again.flush().await.unwrap();
    }
}
