//! A plain Greeter that says which node answered, for the examples whose lesson is not the
//! server itself (round-robin, sharding, sidecar, tunnel, secure...). The stream example
//! writes its own, because there the server *is* the lesson.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::proto::greeter::greeter_server::{Greeter, GreeterServer};
use crate::proto::greeter::{GreetingsRequest, HelloReply, HelloRequest, NamesSummary};
use crate::server::RunningServer;

/// Answers every call with a greeting signed by its node name.
#[derive(Clone, Debug)]
pub struct HelloGreeter {
    node: String,
}

impl HelloGreeter {
    pub fn new(node: impl Into<String>) -> Self {
        HelloGreeter { node: node.into() }
    }

    /// This greeter as a tonic service, ready for `Server::builder().add_service(..)`.
    pub fn into_service(self) -> GreeterServer<Self> {
        GreeterServer::new(self)
    }

    fn reply(&self, name: &str, seq: u32) -> HelloReply {
        HelloReply { message: format!("hello {name}"), node: self.node.clone(), seq }
    }
}

/// What a streaming Greeter call answers with.
pub type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

#[tonic::async_trait]
impl Greeter for HelloGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(self.reply(&request.into_inner().name, 0)))
    }

    async fn greetings(
        &self,
        request: Request<GreetingsRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let GreetingsRequest { name, count, interval_ms } = request.into_inner();
        let this = self.clone();
        let interval = Duration::from_millis(interval_ms.into());
        // count 0: until the client goes away (tonic then drops this stream).
        let limit = if count == 0 { u32::MAX } else { count };
        let replies = futures::stream::iter(1..=limit).then(move |seq| {
            let reply = this.reply(&name, seq);
            async move {
                if seq > 1 && !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                Ok(reply)
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn collect_names(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<NamesSummary>, Status> {
        let mut names = Vec::new();
        let mut incoming = request.into_inner();
        while let Some(request) = incoming.message().await? {
            names.push(request.name);
        }
        let message = format!("hello {} from {}", names.join(", "), self.node);
        Ok(Response::new(NamesSummary { count: names.len() as u32, message }))
    }

    async fn chat(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let this = self.clone();
        let replies = request
            .into_inner()
            .enumerate()
            .map(move |(i, request)| request.map(|r| this.reply(&r.name, i as u32 + 1)));
        Ok(Response::new(Box::pin(replies)))
    }
}

/// Starts a [`HelloGreeter`] named `node` on a free loopback port.
/// It serves health (SERVING for the server and for `greeter.v1.Greeter`) and reflection too.
pub async fn serve(node: &str) -> std::io::Result<RunningServer> {
    let routes = tonic::service::Routes::new(HelloGreeter::new(node).into_service());
    let health = crate::health::Health::new(&[GREETER]);
    RunningServer::start_describing(routes, health, crate::health::DESCRIPTORS).await
}

/// The Greeter's full gRPC name, what health checks and reflection call it.
pub const GREETER: &str = <GreeterServer<HelloGreeter> as tonic::server::NamedService>::NAME;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::greeter::greeter_client::GreeterClient;

    #[tokio::test]
    async fn every_call_shape_answers_and_names_the_node() {
        let server = serve("node-a").await.unwrap();
        let mut client = GreeterClient::connect(server.url()).await.unwrap();

        let reply = client.say_hello(HelloRequest { name: "ada".into() }).await.unwrap();
        assert_eq!(reply.get_ref().message, "hello ada");
        assert_eq!(reply.get_ref().node, "node-a");

        let request = GreetingsRequest { name: "bo".into(), count: 3, interval_ms: 0 };
        let stream = client.greetings(request).await.unwrap().into_inner();
        let seqs: Vec<u32> = stream.map(|r| r.unwrap().seq).collect().await;
        assert_eq!(seqs, [1, 2, 3]);

        let names = ["a", "b"].map(|n| HelloRequest { name: n.into() });
        let summary = client.collect_names(futures::stream::iter(names)).await.unwrap();
        assert_eq!(summary.get_ref().count, 2);

        let names = ["x", "y"].map(|n| HelloRequest { name: n.into() });
        let replies = client.chat(futures::stream::iter(names)).await.unwrap().into_inner();
        let messages: Vec<String> = replies.map(|r| r.unwrap().message).collect().await;
        assert_eq!(messages, ["hello x", "hello y"]);
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_crashed_server_fails_an_open_stream_instead_of_hanging() {
        let server = serve("node-a").await.unwrap();
        let mut client = GreeterClient::connect(server.url()).await.unwrap();
        let endless = GreetingsRequest { name: "ada".into(), count: 0, interval_ms: 10 };
        let mut stream = client.greetings(endless).await.unwrap().into_inner();
        assert!(stream.message().await.unwrap().is_some());
        server.crash().await;
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue, // replies already in flight
                    other => return other,
                }
            }
        })
        .await
        .expect("the client must notice the crash, not hang");
        let status = end.expect_err("a crash is an error, not a clean end of stream");
        assert!(
            matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::Cancelled
            ),
            "unexpected status {status:?}"
        );
    }
}
