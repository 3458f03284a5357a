//! One server certificate, then each thing a client or a server must refuse.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use microkit::PATIENCE;
use microkit::server::RunningServer;
use secure::{Authority, Issued, Validity};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tonic::transport::ClientTlsConfig;
use tonic::{Code, Status};

use crate::handshake::serve_tls;
use crate::refusal::client_refusal;
use crate::trust::{HOST, Setup, call, greeter, server_config, trusting};

/// The story: one server certificate, then each thing a client or a server must refuse.
pub async fn run() -> anyhow::Result<()> {
    let ca = Authority::new("lessons CA")?;
    // The impostor: a CA nobody here trusts, which can sign any name it likes.
    let other_ca = Authority::new("other CA")?;
    println!("CA \"{}\" made at run time; it signs a server certificate for \"{HOST}\"", ca.name());
    let server_cert = ca.server(HOST)?;
    let tls_only = |identity| Setup { identity, client_ca: None };
    let mutual = |identity| Setup { identity, client_ca: Some(&ca) };

    println!("TLS, the client verifies the server:");
    let (reply, _) = served(&tls_only(&server_cert), Some(trusting(&ca))).await?;
    println!("  client trusting {}: {reply}", ca.name());
    let why = refused(&tls_only(&server_cert), None).await?;
    println!("  refused, plaintext client: {why}");
    let why = refused(&tls_only(&server_cert), Some(trusting(&other_ca))).await?;
    println!("  refused, client trusting another CA: {why}");
    let other_host = ca.server("db.internal")?;
    let why = refused(&tls_only(&other_host), Some(trusting(&ca))).await?;
    println!("  refused, certificate for the wrong host name: {why}");
    let expired = ca.server_valid(HOST, Validity::Expired)?;
    let why = refused(&tls_only(&expired), Some(trusting(&ca))).await?;
    println!("  refused, expired server certificate: {why}");

    println!("mutual TLS, the server verifies the client too:");
    let with_cert = |issued: &Issued| trusting(&ca).identity(issued.identity());
    let (reply, verified) =
        served(&mutual(&server_cert), Some(with_cert(&ca.client("client-1")?))).await?;
    println!("  client with a certificate from {}: {reply}", ca.name());
    println!("  calls that reached the handler with a verified client certificate: {verified}");
    // Signed by the same CA, so rustls accepts it; only the list of clients refuses it.
    let why = refused(&mutual(&server_cert), Some(with_cert(&ca.client("client-2")?))).await?;
    println!("  refused, client certificate for a name not on the list: {why}");
    let why = refused(&mutual(&server_cert), Some(trusting(&ca))).await?;
    println!("  refused, client without a certificate: {why}");
    let why =
        refused(&mutual(&server_cert), Some(with_cert(&other_ca.client("client-1")?))).await?;
    println!("  refused, client certificate from another CA: {why}");
    let expired = ca.client_valid("client-1", Validity::Expired)?;
    let why = refused(&mutual(&server_cert), Some(with_cert(&expired))).await?;
    println!("  refused, expired client certificate: {why}");
    Ok(())
}

/// The demo's server: set up as `setup` says, on a free loopback port.
struct TlsServer {
    running: RunningServer,
    refusals: mpsc::UnboundedReceiver<String>,
    /// Calls that reached the handler with a verified client certificate.
    verified: Arc<AtomicUsize>,
}

impl TlsServer {
    async fn start(setup: &Setup<'_>) -> anyhow::Result<TlsServer> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(setup)?));
        let (refusal, refusals) = mpsc::unbounded_channel();
        let verified = Arc::new(AtomicUsize::new(0));
        let routes = greeter(setup.client_ca.is_some(), Arc::clone(&verified));
        let running = RunningServer::start_with(move |tcp, stop| {
            serve_tls(tcp, acceptor, routes, refusal, stop)
        })
        .await?;
        Ok(TlsServer { running, refusals, verified })
    }

    /// Why the server refused the first handshake that failed.
    async fn next_refusal(&mut self) -> String {
        match tokio::time::timeout(PATIENCE, self.refusals.recv()).await {
            Ok(Some(reason)) => reason,
            _ => "no handshake failed on the server".to_owned(),
        }
    }
}

/// Starts a server as `setup` says, makes one call that must succeed, and returns the
/// reply with the number of calls the handler saw with a verified client certificate.
pub async fn served(
    setup: &Setup<'_>,
    client: Option<ClientTlsConfig>,
) -> anyhow::Result<(String, usize)> {
    let server = TlsServer::start(setup).await?;
    let reply = call(server.running.addr(), client, "ada").await?;
    let verified = server.verified.load(Ordering::Relaxed);
    server.running.shutdown().await?;
    Ok((reply, verified))
}

/// Starts a server as `setup` says, makes one call that must be refused, and says who
/// refused and why. A call that gets through is an error.
pub async fn refused(setup: &Setup<'_>, client: Option<ClientTlsConfig>) -> anyhow::Result<String> {
    let mut server = TlsServer::start(setup).await?;
    let error = match call(server.running.addr(), client, "ada").await {
        Ok(reply) => anyhow::bail!("should have been refused, but got: {reply}"),
        Err(error) => error,
    };
    tracing::info!(error = format!("{error:#}"), "the client's error");
    // The handshake passed, and the server refused the call itself: its status says why.
    if let Some(status) = error.downcast_ref::<Status>()
        && status.code() == Code::PermissionDenied
    {
        let why =
            format!("the server refused the call: {:?} \"{}\"", status.code(), status.message());
        server.running.shutdown().await?;
        return Ok(why);
    }
    // Every failed handshake fails on both sides; the side that refused knows why.
    let server_saw = server.next_refusal().await;
    server.running.shutdown().await?;
    Ok(match client_refusal(&error) {
        Some(why) => format!("the client refused: {why}"),
        None => format!("the server refused: {server_saw}"),
    })
}
