//! The other stand-in: the real Greeter server in this process, reached by a real tonic
//! client over an in-memory pipe.

use std::io;

use futures::future::{Ready, ready};
use hyper_util::rt::TokioIo;
use microkit::greeter::HelloGreeter;
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use tokio::io::DuplexStream;
use tokio::sync::Mutex;
use tonic::Status;
use tonic::transport::{Channel, Endpoint, Server, Uri};

use crate::seam::Greet;

/// A tonic client connected to a real Greeter server running in this process, over an
/// in-memory pipe instead of a socket: the whole gRPC stack (encoding, HTTP/2, status
/// codes) runs, with no port to pick and nothing to clean up.
pub async fn in_process_client(node: &str) -> anyhow::Result<GreeterClient<Channel>> {
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);

    let greeter = HelloGreeter::new(node).into_service();
    // The server's "listener" yields exactly one connection: the server end of the pipe.
    let incoming = futures::stream::iter([Ok::<_, io::Error>(server_end)]);
    tokio::spawn(Server::builder().add_service(greeter).serve_with_incoming(incoming));

    // The URI is required but unused: the connector decides where bytes go.
    let channel = Endpoint::from_static("http://in-process")
        .connect_with_connector(tower::service_fn(connect_once(client_end)))
        .await?;
    Ok(GreeterClient::new(channel))
}

/// A connector, for `tower::service_fn`, that hands tonic the client end of a pipe, once. A
/// second call would mean tonic is reconnecting, which a pipe cannot do: that is an error,
/// not a hang.
pub fn connect_once(
    pipe: DuplexStream,
) -> impl FnMut(Uri) -> Ready<io::Result<TokioIo<DuplexStream>>> {
    let mut pipe = Some(pipe);
    move |_| {
        ready(
            pipe.take()
                .map(TokioIo::new)
                .ok_or_else(|| io::Error::other("the in-process pipe is used up")),
        )
    }
}

/// `Greet` over gRPC. The generated client wants `&mut self`, so calls go through a lock
/// (cloning the client per call would do as well: a `Channel` clone is cheap).
pub struct GrpcGreet {
    pub client: Mutex<GreeterClient<Channel>>,
}

impl Greet for GrpcGreet {
    async fn say_hello(&self, name: &str) -> Result<String, Status> {
        let request = HelloRequest { name: name.to_owned() };
        let reply = self.client.lock().await.say_hello(request).await?.into_inner();
        Ok(format!("{} (from {})", reply.message, reply.node))
    }
}
