//! The one-process story: two services through one proxy, nodes joining and leaving, what
//! the proxy refuses, a stream whose node crashes, and the proxy's neighbours.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::TryStreamExt;
use http::uri::PathAndQuery;
use microkit::PATIENCE;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::{GreetingsRequest, HelloReply, HelloRequest};
use registry::Registry;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::calc::{self, CalculatorClient};
use crate::roles::{GREETER, start_calc, start_greeter};
use proxy::{Limits, Proxy, ProxyServer};

/// Where the one-process story's proxy listens: any free loopback port.
const LOOPBACK: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// One process, the whole story: two services through one proxy, nodes coming and going.
pub async fn demo(registry: &Arc<dyn Registry>, ttl: Duration) -> anyhow::Result<()> {
    let mut greeters = BTreeMap::new();
    for name in ["greeter-a", "greeter-b"] {
        greeters.insert(name, start_greeter(registry, name, ttl).await?);
    }
    let calc_node = start_calc(registry, "calc-a", ttl).await?;
    let proxy = Arc::new(Proxy::new(registry.clone(), Limits::default()));
    let server = ProxyServer::start(proxy.clone(), LOOPBACK).await?;
    println!("the proxy knows no proto: /<service>/<method> goes to a node of <service>");
    let channel = Endpoint::from_shared(format!("http://{}", server.addr()))?.connect().await?;
    let mut greeter = GreeterClient::new(channel.clone());
    let mut calculator = CalculatorClient::new(channel.clone());

    println!("two services through it:");
    for name in ["ada", "bo"] {
        let reply = greeter.say_hello(hello(name)).await?.into_inner();
        println!("  Greeter/SayHello {name}: {:?} from {}", reply.message, reply.node);
    }
    let request = GreetingsRequest { name: "cy".into(), count: 3, interval_ms: 0 };
    let replies: Vec<HelloReply> =
        greeter.greetings(request).await?.into_inner().try_collect().await?;
    let seqs: Vec<String> = replies.iter().map(|r| r.seq.to_string()).collect();
    println!("  Greeter/Greetings cy: replies {} from {}", seqs.join(", "), replies[0].node);
    let names = futures::stream::iter(["di", "ed"].map(hello));
    let summary = greeter.collect_names(names).await?.into_inner();
    println!("  Greeter/CollectNames di, ed: {:?}", summary.message);
    println!("  Greeter/Chat: {}", chat(&mut greeter, &["fay", "gus"]).await?);
    let sum = calculator.add(vec![1, 2, 3]).await?;
    println!("  Calculator/Add 1, 2, 3: {} from {}", sum.sum, sum.node);
    let counted: Vec<calc::CountReply> = calculator.count(4).await?.try_collect().await?;
    let ns: Vec<String> = counted.iter().map(|r| r.n.to_string()).collect();
    println!("  Calculator/Count 4: {} from {}", ns.join(", "), counted[0].node);

    greeters.insert("greeter-c", start_greeter(registry, "greeter-c", ttl).await?);
    proxy.wait_for(GREETER, &["greeter-a", "greeter-b", "greeter-c"], PATIENCE).await?;
    println!("greeter-c joined while the proxy runs: {}", turns(&mut greeter, 3).await?);
    greeters.remove("greeter-a").unwrap().stop().await?;
    proxy.wait_for(GREETER, &["greeter-b", "greeter-c"], PATIENCE).await?;
    println!("greeter-a left: {}", turns(&mut greeter, 4).await?);

    println!("what it refuses, or passes on:");
    for path in ["/billing.v1.Billing/Charge", "/greeter.v1.Greeter/Shout", "/no-service"] {
        let refused_before = proxy.refused.load(Ordering::Relaxed);
        let status = call_path(channel.clone(), path).await;
        let by =
            if proxy.refused.load(Ordering::Relaxed) > refused_before { "proxy" } else { "node" };
        println!("  {path}: {:?} from the {by} {:?}", status.code(), status.message());
    }
    let endless = GreetingsRequest { name: "hal".into(), count: 0, interval_ms: 5 };
    let mut stream = greeter.greetings(endless).await?.into_inner();
    let first = stream.message().await?.ok_or_else(|| anyhow::anyhow!("no first reply"))?;
    greeters.remove(first.node.as_str()).unwrap().crash().await;
    let end = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue, // replies already on their way
                Ok(None) => anyhow::bail!("the stream ended cleanly, as if nothing happened"),
                Err(status) => return Ok(status),
            }
        }
    });
    let status = end.await??;
    println!("  a stream whose node crashed: {:?} {:?}", status.code(), status.message());

    println!("its neighbours:");
    println!("  a tunnel moves connections between two places and reads nothing in them");
    println!("  a sidecar converts HTTP/JSON to the system's protocols, for one program");
    println!("  an API gateway is the public edge: it converts, authenticates, authorises");
    println!("  this proxy routes RPCs by the service their path names, and converts nothing");

    drop((greeter, calculator, channel));
    server.stop(PATIENCE).await;
    let (forwarded, refused) =
        (proxy.forwarded.load(Ordering::Relaxed), proxy.refused.load(Ordering::Relaxed));
    println!("the proxy forwarded {forwarded} calls and refused {refused}");
    for (_, node) in greeters {
        node.stop().await?;
    }
    calc_node.stop().await
}

fn hello(name: &str) -> HelloRequest {
    HelloRequest { name: name.to_owned() }
}

/// A bidi stream through the proxy: each name is sent only once the reply to the one before
/// has come back, so the two directions really interleave.
async fn chat(greeter: &mut GreeterClient<Channel>, names: &[&str]) -> anyhow::Result<String> {
    let (send, requests) = mpsc::channel(1);
    send.send(hello(names[0])).await?;
    let mut replies = greeter.chat(ReceiverStream::new(requests)).await?.into_inner();
    let mut heard = Vec::new();
    for next in names[1..].iter().map(Some).chain([None]) {
        let reply = replies.message().await?.ok_or_else(|| anyhow::anyhow!("chat ended early"))?;
        heard.push(format!("{:?} from {}", reply.message, reply.node));
        match next {
            Some(name) => send.send(hello(name)).await?,
            None => break,
        }
    }
    drop(send); // half-close: the node ends its side, and the stream ends cleanly
    anyhow::ensure!(replies.message().await?.is_none(), "the chat did not end");
    Ok(heard.join(", then "))
}

/// `count` SayHello calls: who answered each, in turn.
async fn turns(greeter: &mut GreeterClient<Channel>, count: usize) -> anyhow::Result<String> {
    let mut nodes = Vec::new();
    for _ in 0..count {
        nodes.push(greeter.say_hello(hello("ivy")).await?.into_inner().node);
    }
    Ok(nodes.join(" "))
}

/// A unary call to any path, with an empty message: what the proxy answers for it.
async fn call_path(channel: Channel, path: &'static str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return tonic::Status::unavailable(e.to_string());
    }
    let codec = tonic_prost::ProstCodec::<HelloRequest, HelloReply>::default();
    let call = grpc.unary(tonic::Request::new(hello("x")), PathAndQuery::from_static(path), codec);
    match call.await {
        Ok(_) => tonic::Status::ok("answered"),
        Err(status) => status,
    }
}
