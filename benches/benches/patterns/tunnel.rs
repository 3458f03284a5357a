//! The tunnel: a gRPC call whose HTTP/2 connection is a session inside the tunnel's one TCP
//! link, vs the same call on its own TCP connection.
//!
//! The link, session and frame code is the tunnel example's own (`examples/tunnel/link.rs`,
//! `session.rs` and `frame.rs`, from the `tunnel` package's library); the wiring
//! of the two nodes is the example's `NodeB::start` and `NodeA::channel` in a few lines,
//! without the example's relinking and bookkeeping. Both servers run on this bench's
//! runtime, so the only difference between the two calls is the path their bytes take.

use std::collections::HashMap;

use futures::StreamExt;
use hyper_util::rt::TokioIo;
use micro_benches::{Effort, Row, Target, say_hello_pair};
use microkit::greeter::HelloGreeter;
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Channel, Endpoint, Server};

use crate::link::{Side, Tunnel};

pub async fn rows(effort: Effort) -> Vec<Row> {
    let mut direct = GreeterClient::new(direct_channel().await);
    let mut tunneled = GreeterClient::new(tunnel_channel().await);
    let hello = || HelloRequest { name: "bench".into() };
    let reply = tunneled.say_hello(hello()).await.unwrap().into_inner();
    assert_eq!(reply.node, "node-b", "the call went through the tunnel");
    let unary = say_hello_pair(effort, &mut direct, &mut tunneled).await;
    vec![Row::latency("tunnel: unary p50 through the tunnel vs direct", unary, Target::AtMost(1.5))]
}

/// A Greeter on its own TCP listener, and a channel to it.
async fn direct_channel() -> Channel {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let greeter = HelloGreeter::new("direct").into_service();
    tokio::spawn(
        Server::builder()
            .add_service(greeter)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

/// node-b serves the Greeter on channel "greeter" to every link; node-a dials one link and
/// opens a session on it for each connection its gRPC channel makes.
async fn tunnel_channel() -> Channel {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrivals, sessions) = mpsc::channel(16);
    let greeter = HelloGreeter::new("node-b").into_service();
    let incoming = ReceiverStream::new(sessions).map(Ok::<_, std::io::Error>);
    tokio::spawn(Server::builder().add_service(greeter).serve_with_incoming(incoming));
    tokio::spawn(async move {
        let mut links = Vec::new(); // node-b keeps its links, as the example's does
        while let Ok((stream, _)) = listener.accept().await {
            let services = HashMap::from([("greeter".to_owned(), arrivals.clone())]);
            links.push(Tunnel::start("node-b", stream, Side::Listener, services));
        }
    });

    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let link = Tunnel::start("node-a", stream, Side::Dialer, HashMap::new());
    let connector = tower::service_fn(move |_uri| {
        let link = link.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(link.open("greeter").await?)) }
    });
    Endpoint::from_static("http://greeter.tunnel").connect_with_connector(connector).await.unwrap()
}
