//! Fixtures only tests use: a NATS cluster on this machine. Only dev-dependencies pull this
//! crate, so no example's build compiles it.

use std::net::TcpListener;

use microkit_backend::nats::NatsServer;

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
            nodes.push(NatsServer::start_node(&format!("node-{}", i + 1), port, args).await?);
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
}
