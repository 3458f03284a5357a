//! Health checking and reflection: unary p50 on a server that mounts both (as every server
//! in the lessons does) vs one that serves the Greeter alone. A router dispatches on the
//! path, so services nobody calls should cost nothing on the call path.

use micro_benches::{Effort, Row, Target, latency_pair};
use microkit::greeter::HelloGreeter;
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::server::RunningServer;
use tonic::transport::{Channel, Server};

pub async fn rows(effort: Effort) -> Vec<Row> {
    let bare = {
        let greeter = HelloGreeter::new("bare").into_service();
        RunningServer::start_with(move |incoming, stop| {
            Server::builder().add_service(greeter).serve_with_incoming_shutdown(incoming, stop)
        })
        .await
        .unwrap()
    };
    // What microkit::greeter::serve starts: the Greeter, health and reflection.
    let mounted = microkit::greeter::serve("mounted").await.unwrap();

    let mut bare_client = GreeterClient::connect(bare.url()).await.unwrap();
    let mut mounted_client = GreeterClient::connect(mounted.url()).await.unwrap();
    let unary = latency_pair(
        effort,
        async || hello(&mut bare_client).await,
        async || hello(&mut mounted_client).await,
    )
    .await;
    vec![Row::latency(
        "health + reflection mounted: unary p50 vs bare",
        unary,
        Target::AtMost(1.02),
    )]
}

async fn hello(client: &mut GreeterClient<Channel>) {
    client.say_hello(HelloRequest { name: "bench".into() }).await.unwrap();
}
