//! Every shape against one server, then a server that dies mid-stream.

use anyhow::Context;
use microkit::PATIENCE;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::server::RunningServer;
use tonic::transport::Channel;

use crate::bounds::{endpoint, within_deadline};
use crate::stream::{
    StreamGreeter, bidirectional, client_goes_away, client_streaming, server_goes_away,
    server_streaming,
};

/// The steps the client role runs too: the three shapes, then a client that goes away. Each
/// is one call, under its deadline.
pub async fn client_steps(client: &mut GreeterClient<Channel>) -> anyhow::Result<()> {
    within_deadline(server_streaming(client)).await?;
    within_deadline(client_streaming(client)).await?;
    within_deadline(bidirectional(client)).await?;
    within_deadline(client_goes_away(client)).await
}

/// The one-process run: a server on a free port, every client step against it, then a
/// server that crashes mid-stream.
pub async fn run() -> anyhow::Result<()> {
    let greeter = StreamGreeter::new();
    let mut seen = greeter.seen.subscribe();
    let server = RunningServer::start(tonic::service::Routes::new(greeter.into_service())).await?;
    let mut client = GreeterClient::new(endpoint(server.url())?.connect().await?);
    client_steps(&mut client).await?;
    // Wait (capped) until the server has noticed, so the printed order is fixed.
    tokio::time::timeout(PATIENCE, seen.wait_for(|seen| seen.clients_gone > 0))
        .await
        .context("the server never noticed that its client went away")??;
    server.shutdown().await?;
    server_goes_away().await.map(drop)
}
