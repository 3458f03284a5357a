//! # secure: TLS that is verified, then mutual TLS
//!
//! A certificate authority is made at run time (`microkit::tls`, with rcgen). It signs the
//! server's certificate, and the client trusts that CA and nothing else ([`trusting`]): it
//! checks the chain, the host name and the dates. Then mutual TLS: the server also demands a
//! client certificate signed by the CA ([`server_config`]). Every refusal the demo prints is
//! a real handshake that fails, and the side that refused says why ([`TlsServer`]).
//!
//! go-micro's example made a self-signed certificate and told the client to skip
//! verification: the bytes were encrypted, but the client would have talked as happily to
//! an impostor. (In the version it pinned, the option did not even reach gRPC.)
//!
//! Run it:
//!
//! ```text
//! cargo run --example secure
//! # or as two processes (the server writes the CA and a client certificate to
//! # target/secure-certs, where the client finds them; --certs picks another folder):
//! cargo run --example secure -- server
//! cargo run --example secure -- client --name bo
//! ```
//!
//! Prints `tests/golden/secure.txt`; explained in `notes/secure.md`. The two roles are in
//! `roles.rs`, the wording of each refusal in `refusal.rs`.

mod refusal;
mod roles;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Parser;
use futures::StreamExt;
use microkit::PATIENCE;
use microkit::greeter::HelloGreeter;
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::greeter_server::GreeterServer;
use microkit::server::{Connection, Incoming, RunningServer};
use microkit::tls::{Authority, Issued, Validity};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::service::Routes;
use tonic::transport::{ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

use refusal::{client_refusal, server_refusal};

/// The name the server's certificate is issued for, and the name the client checks.
const HOST: &str = "localhost";
/// How long a new connection may take to finish its TLS handshake. A real client sends its
/// hello at once; one that says nothing holds a socket and a task, so it is cut.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the client checks: a server certificate that chains to `ca` (and to no other CA:
/// no system roots), names `HOST`, and is within its dates. The server listens on
/// `127.0.0.1`, so `domain_name` says which name to check.
fn trusting(ca: &Authority) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(ca.certificate()).domain_name(HOST)
}

/// How a server is set up: its certificate, and for mutual TLS the CA whose client
/// certificates it accepts.
struct Setup<'a> {
    identity: &'a Issued,
    client_ca: Option<&'a Authority>,
}

/// What the server checks, as the rustls configuration tonic's `ServerTlsConfig` would
/// build: the server's certificate, ring as the crypto provider, HTTP/2 offered by ALPN, and
/// for mutual TLS a verifier that demands a client certificate signed by the given CA.
fn server_config(setup: &Setup<'_>) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match setup.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(CertificateDer::from(ca.cert_der()))?;
            builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?,
            )
        }
    };
    let chain = vec![CertificateDer::from(setup.identity.cert_der.clone())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(setup.identity.key_der.clone()));
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()]; // gRPC is HTTP/2; tonic's client insists
    Ok(config)
}

/// Serves `routes` over TLS on the connections of `tcp`. tonic serves the calls, but the
/// handshake is run here with tokio-rustls, so that the server can say why it refused a
/// client (tonic's own TLS only logs it at debug level): each refusal goes to `refusals`,
/// the client is dropped, and the server lives on.
async fn serve_tls(
    tcp: Incoming,
    acceptor: TlsAcceptor,
    routes: Routes,
    refusals: mpsc::UnboundedSender<String>,
    stop: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // Handshakes run side by side: one slow client must not hold up the others.
    let incoming = tcp
        .map(move |tcp| handshake(acceptor.clone(), tcp, refusals.clone()))
        .buffer_unordered(16)
        .filter_map(std::future::ready);
    microkit::server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stop)
        .await
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

/// The Greeter, counting in `verified` the calls that arrive with a verified client
/// certificate. rustls has checked that certificate before any call gets here, so the
/// interceptor sees facts, not claims.
fn greeter(mutual: bool, verified: Arc<AtomicUsize>) -> Routes {
    let greeter = GreeterServer::with_interceptor(
        HelloGreeter::new("secure-node"),
        move |request: Request<()>| {
            if mutual {
                match request.peer_certs() {
                    Some(certs) if !certs.is_empty() => verified.fetch_add(1, Ordering::Relaxed),
                    _ => return Err(Status::unauthenticated("a client certificate is required")),
                };
            }
            Ok(request)
        },
    );
    Routes::new(greeter)
}

/// One SayHello to `addr`: over TLS with `tls`, or in plaintext without it.
async fn call(
    addr: SocketAddr,
    tls: Option<ClientTlsConfig>,
    name: &str,
) -> anyhow::Result<String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?
        .connect_timeout(PATIENCE)
        .timeout(PATIENCE);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    // The handshake happens here: a client that distrusts the server stops before any call.
    let channel = endpoint.connect().await?;
    let request = HelloRequest { name: name.to_owned() };
    let reply = GreeterClient::new(channel).say_hello(request).await?.into_inner();
    Ok(format!("{}, answered by {}", reply.message, reply.node))
}

/// The story: one server certificate, then each thing a client or a server must refuse.
async fn demo() -> anyhow::Result<()> {
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
async fn served(
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
async fn refused(setup: &Setup<'_>, client: Option<ClientTlsConfig>) -> anyhow::Result<String> {
    let mut server = TlsServer::start(setup).await?;
    let error = match call(server.running.addr(), client, "ada").await {
        Ok(reply) => anyhow::bail!("should have been refused, but got: {reply}"),
        Err(error) => error,
    };
    tracing::info!(error = format!("{error:#}"), "the client's error");
    // Every failed handshake fails on both sides; the side that refused knows why.
    let server_saw = server.next_refusal().await;
    server.running.shutdown().await?;
    Ok(match client_refusal(&error) {
        Some(why) => format!("the client refused: {why}"),
        None => format!("the server refused: {server_saw}"),
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    let result = match roles::Args::parse().role {
        None => demo().await,
        Some(role) => roles::run(role).await,
    };
    microkit::report(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two CAs per test: the one the parties trust, and an impostor's.
    fn authorities() -> (Authority, Authority) {
        (Authority::new("test CA").unwrap(), Authority::new("other CA").unwrap())
    }

    fn tls_only(identity: &Issued) -> Setup<'_> {
        Setup { identity, client_ca: None }
    }

    #[tokio::test]
    async fn a_client_trusting_the_ca_is_served_over_tls() {
        let (ca, _) = authorities();
        let server_cert = ca.server(HOST).unwrap();
        let (reply, _) = served(&tls_only(&server_cert), Some(trusting(&ca))).await.unwrap();
        assert_eq!(reply, "hello ada, answered by secure-node");
    }

    #[tokio::test]
    async fn a_plaintext_client_is_refused() {
        let (ca, _) = authorities();
        let why = refused(&tls_only(&ca.server(HOST).unwrap()), None).await.unwrap();
        assert_eq!(why, "the server refused: not a TLS handshake");
    }

    #[tokio::test]
    async fn a_client_trusting_another_ca_refuses_the_server() {
        let (ca, other_ca) = authorities();
        let why =
            refused(&tls_only(&ca.server(HOST).unwrap()), Some(trusting(&other_ca))).await.unwrap();
        assert_eq!(why, "the client refused: certificate signed by an unknown CA");
    }

    #[tokio::test]
    async fn an_impostor_ca_with_the_trusted_name_is_refused() {
        let (ca, _) = authorities();
        let impostor = Authority::new("test CA").unwrap(); // same name, another key
        let server_cert = impostor.server(HOST).unwrap();
        let why = refused(&tls_only(&server_cert), Some(trusting(&ca))).await.unwrap();
        assert_eq!(why, "the client refused: certificate not signed by the trusted CA's key");
    }

    #[tokio::test]
    async fn a_certificate_for_another_host_is_refused() {
        let (ca, _) = authorities();
        let why = refused(&tls_only(&ca.server("db.internal").unwrap()), Some(trusting(&ca)))
            .await
            .unwrap();
        assert_eq!(why, "the client refused: certificate not valid for this host name");
    }

    #[tokio::test]
    async fn an_expired_server_certificate_is_refused() {
        let (ca, _) = authorities();
        let expired = ca.server_valid(HOST, Validity::Expired).unwrap();
        let why = refused(&tls_only(&expired), Some(trusting(&ca))).await.unwrap();
        assert_eq!(why, "the client refused: certificate expired");
    }

    /// Why a mutual-TLS server (certificate and client CA from `ca`) refused `client`.
    async fn refused_by_mutual_server(
        ca: &Authority,
        client: ClientTlsConfig,
    ) -> anyhow::Result<String> {
        let server_cert = ca.server(HOST).unwrap();
        refused(&Setup { identity: &server_cert, client_ca: Some(ca) }, Some(client)).await
    }

    #[tokio::test]
    async fn mutual_tls_serves_a_client_with_a_certificate_and_the_handler_sees_it() {
        let (ca, _) = authorities();
        let server_cert = ca.server(HOST).unwrap();
        let setup = Setup { identity: &server_cert, client_ca: Some(&ca) };
        let tls = trusting(&ca).identity(ca.client("c").unwrap().identity());
        let (reply, verified) = served(&setup, Some(tls)).await.unwrap();
        assert_eq!(reply, "hello ada, answered by secure-node");
        assert_eq!(verified, 1);
    }

    #[tokio::test]
    async fn mutual_tls_refuses_a_client_without_a_certificate() {
        let (ca, _) = authorities();
        let why = refused_by_mutual_server(&ca, trusting(&ca)).await.unwrap();
        assert_eq!(why, "the server refused: no client certificate");
    }

    #[tokio::test]
    async fn mutual_tls_refuses_a_client_certificate_from_another_ca() {
        let (ca, other_ca) = authorities();
        let tls = trusting(&ca).identity(other_ca.client("c").unwrap().identity());
        let why = refused_by_mutual_server(&ca, tls).await.unwrap();
        assert_eq!(why, "the server refused: client certificate signed by an unknown CA");
    }

    #[tokio::test]
    async fn mutual_tls_refuses_an_expired_client_certificate() {
        let (ca, _) = authorities();
        let expired = ca.client_valid("c", Validity::Expired).unwrap();
        let why = refused_by_mutual_server(&ca, trusting(&ca).identity(expired.identity()))
            .await
            .unwrap();
        assert_eq!(why, "the server refused: client certificate expired");
    }

    #[tokio::test]
    async fn a_call_that_gets_through_is_not_passed_off_as_refused() {
        let (ca, _) = authorities();
        let error =
            refused(&tls_only(&ca.server(HOST).unwrap()), Some(trusting(&ca))).await.unwrap_err();
        assert!(error.to_string().contains("should have been refused"), "{error}");
    }
}
