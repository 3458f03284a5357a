//! The server's side of the handshake, run by hand so that the server can say why it
//! refused a client, and bounded so that silent peers cannot stall the real ones.

use std::future::Future;

use futures::StreamExt;
use microkit::server::{Connection, Incoming};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;

use crate::refusal::server_refusal;

/// How long a new connection may take to finish its TLS handshake. A real client sends its
/// hello at once; one that says nothing holds a socket and a task, so it is cut.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Handshakes under way at once, each a task of its own. The bound is what a crowd of silent
/// peers can hold (a socket and a task each, for [`HANDSHAKE_TIMEOUT`]), and it must be far
/// above what one attacker opens cheaply: at 16, sixteen idle sockets stalled every real
/// client for 5 s, and 64 for 20 s, while the real ones waited behind them unaccepted.
const HANDSHAKES: usize = 1024;

/// Serves `routes` over TLS on the connections of `tcp`. tonic serves the calls, but the
/// handshake is run here with tokio-rustls, so that the server can say why it refused a
/// client (tonic's own TLS only logs it at debug level): each refusal goes to `refusals`,
/// the client is dropped, and the server lives on.
pub async fn serve_tls(
    tcp: Incoming,
    acceptor: TlsAcceptor,
    routes: Routes,
    refusals: mpsc::UnboundedSender<String>,
    stop: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (handshaken, incoming) = mpsc::channel(16);
    // Each connection is accepted at once and its handshake spawned: a silent peer holds up
    // only its own task, never the accepting of the next connection.
    let accepting = async move {
        let mut tcp = tcp;
        // Dropped with this future when the server stops: every handshake left is aborted.
        let mut handshakes = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                Some(_) = handshakes.join_next() => {} // one finished: room for another
                next = tcp.next(), if handshakes.len() < HANDSHAKES => {
                    let Some(tcp) = next else { return };
                    let (acceptor, refusals) = (acceptor.clone(), refusals.clone());
                    let handshaken = handshaken.clone();
                    handshakes.spawn(async move {
                        if let Some(tls) = handshake(acceptor, tcp, refusals).await {
                            let _ = handshaken.send(tls).await; // gone only if tonic stopped
                        }
                    });
                }
            }
        }
    };
    let serving = microkit::server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), stop);
    tokio::pin!(serving);
    tokio::select! {
        served = &mut serving => served,
        // The listener ended: serve what was handshaken, then stop with the channel.
        () = accepting => serving.await,
    }
}

/// One server-side handshake: the TLS stream, or `None` for a client that was refused.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: std::io::Result<Connection>,
    refusals: mpsc::UnboundedSender<String>,
) -> Option<std::io::Result<TlsStream<Connection>>> {
    let tcp = match tcp {
        Ok(tcp) => tcp,
        Err(error) => return Some(Err(error)),
    };
    let why = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => return Some(Ok(tls)),
        Ok(Err(error)) => server_refusal(&error),
        Err(_) => "the client never finished its handshake".to_owned(),
    };
    tracing::info!(%why, "handshake refused");
    let _ = refusals.send(why);
    None
}
