//! The proxy: a gRPC call through the proxy example's own code (`examples/proxy/proxy.rs`,
//! the `proxy` package's library, which this bench depends on) vs the same call straight to the node.
//! One more hop over loopback: the unary target allows for it (<= 1.6), and streaming must
//! keep most of its rate (>= 0.8) because frames pass through unread.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use micro_benches::{Effort, Row, Target, say_hello_pair, throughput_pair};
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::{GreetingsRequest, HelloRequest};
use registry::Registered;
use registry::{MemoryRegistry, Registry};
use tonic::transport::{Channel, Endpoint};

use crate::proxy_code::{Limits, Proxy, ProxyServer};

pub async fn rows(effort: Effort) -> Vec<Row> {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let server = microkit::greeter::serve("node-a").await.unwrap();
    let node =
        Registered::new(&registry, server, "greeter.v1.Greeter", "node-a", Duration::from_secs(60))
            .await
            .unwrap();
    let proxy = Arc::new(Proxy::new(registry.clone(), Limits::default()));
    let listen = "127.0.0.1:0".parse().unwrap();
    let proxy_server = ProxyServer::start(proxy, listen).await.unwrap();
    let mut direct = GreeterClient::new(channel(&node.addr().to_string()).await);
    let mut proxied = GreeterClient::new(channel(&proxy_server.addr().to_string()).await);
    let hello = || HelloRequest { name: "bench".into() };
    assert_eq!(proxied.say_hello(hello()).await.unwrap().into_inner().node, "node-a");

    let unary = say_hello_pair(effort, &mut direct, &mut proxied).await;
    let count = effort.messages_per_round / 4;
    let stream = async |client: &mut GreeterClient<Channel>| {
        let request = GreetingsRequest { name: "bench".into(), count, interval_ms: 0 };
        let replies = client.greetings(request).await.unwrap().into_inner();
        replies.filter(|r| std::future::ready(r.is_ok())).count().await as u64
    };
    let streaming = throughput_pair(
        effort,
        async || stream(&mut direct).await,
        async || stream(&mut proxied).await,
    )
    .await;
    vec![
        Row::latency("proxy: unary p50 through the proxy vs direct", unary, Target::AtMost(1.6)),
        Row::throughput(
            "proxy: server streaming through the proxy vs direct",
            streaming,
            Target::AtLeast(0.8),
        ),
    ]
}

async fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}
