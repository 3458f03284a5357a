//! The second service the proxy was never built for: `calc.v1.Calculator` (`calc.proto`
//! beside this file), its messages and its tonic server and client written by hand with
//! prost's derive, as `tonic-prost-build` would generate them. The proxy knows none of it.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use http::uri::PathAndQuery;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, StdError};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct AddRequest {
    #[prost(int64, repeated, tag = "1")]
    pub terms: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AddReply {
    #[prost(int64, tag = "1")]
    pub sum: i64,
    #[prost(string, tag = "2")]
    pub node: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CountRequest {
    #[prost(uint32, tag = "1")]
    pub up_to: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CountReply {
    #[prost(uint32, tag = "1")]
    pub n: u32,
    #[prost(string, tag = "2")]
    pub node: String,
}

/// The service's name in gRPC paths, and so in the registry.
pub const SERVICE: &str = "calc.v1.Calculator";
/// `calc.proto` as an encoded `FileDescriptorSet`, which the node's reflection hands out.
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/calc-descriptors.bin"));
/// The most a `Count` may ask for: a bound on what one request can make a node send.
const MAX_COUNT: u32 = 100_000;

/// The Calculator as a tower service over HTTP requests, what tonic's server routes to.
#[derive(Clone, Debug)]
pub struct CalculatorServer {
    node: String,
}

impl CalculatorServer {
    pub fn new(node: &str) -> Self {
        CalculatorServer { node: node.to_owned() }
    }
}

impl tonic::server::NamedService for CalculatorServer {
    const NAME: &'static str = SERVICE;
}

impl<B> tower::Service<http::Request<B>> for CalculatorServer
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let node = self.node.clone();
        Box::pin(async move {
            // One codec per method: each knows the message types it decodes and encodes.
            let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
            let mut streaming = tonic::server::Grpc::new(ProstCodec::default());
            Ok(match request.uri().path() {
                "/calc.v1.Calculator/Add" => {
                    let add = tower::service_fn(move |r: Request<AddRequest>| {
                        let node = node.clone();
                        async move {
                            let sum =
                                r.into_inner().terms.iter().fold(0i64, |a, t| a.wrapping_add(*t));
                            Ok::<_, Status>(Response::new(AddReply { sum, node }))
                        }
                    });
                    grpc.unary(add, request).await
                }
                "/calc.v1.Calculator/Count" => {
                    let count = tower::service_fn(move |r: Request<CountRequest>| {
                        let node = node.clone();
                        async move {
                            let up_to = r.into_inner().up_to;
                            if up_to > MAX_COUNT {
                                return Err(Status::invalid_argument(format!(
                                    "up_to may be at most {MAX_COUNT}"
                                )));
                            }
                            let replies = futures::stream::iter(1..=up_to)
                                .map(move |n| Ok(CountReply { n, node: node.clone() }));
                            Ok(Response::new(Box::pin(replies) as ReplyStream))
                        }
                    });
                    streaming.server_streaming(count, request).await
                }
                path => Status::unimplemented(format!("no method {path}")).into_http(),
            })
        })
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<CountReply, Status>> + Send>>;

/// A Calculator client over any gRPC channel (here: the proxy's address).
#[derive(Clone, Debug)]
pub struct CalculatorClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl CalculatorClient {
    pub fn new(channel: tonic::transport::Channel) -> Self {
        CalculatorClient { grpc: tonic::client::Grpc::new(channel) }
    }

    pub async fn add(&mut self, terms: Vec<i64>) -> Result<AddReply, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/calc.v1.Calculator/Add");
        let reply =
            self.grpc.unary(Request::new(AddRequest { terms }), path, ProstCodec::default());
        Ok(reply.await?.into_inner())
    }

    pub async fn count(&mut self, up_to: u32) -> Result<Streaming<CountReply>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/calc.v1.Calculator/Count");
        let request = Request::new(CountRequest { up_to });
        Ok(self.grpc.server_streaming(request, path, ProstCodec::default()).await?.into_inner())
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc.ready().await.map_err(|e| Status::unavailable(format!("channel: {e}")))
    }
}
