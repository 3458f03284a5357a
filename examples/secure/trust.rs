//! What each side verifies: the client trusts one CA and checks the server's name and dates;
//! with mutual TLS the server demands a client certificate from that CA, and then decides
//! whose it is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use microkit::PATIENCE;
use microkit::greeter::HelloGreeter;
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::greeter_server::GreeterServer;
use rustls::RootCertStore;
use rustls::client::verify_server_name;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::{ParsedCertificate, ServerConfig, WebPkiClientVerifier};
use secure::{Authority, Issued};
use tonic::service::Routes;
use tonic::transport::{ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

/// The name the server's certificate is issued for, and the name the client checks.
pub const HOST: &str = "localhost";

/// What the client checks: a server certificate that chains to `ca` (and to no other CA:
/// no system roots), names `HOST`, and is within its dates. The server listens on
/// `127.0.0.1`, so `domain_name` says which name to check.
pub fn trusting(ca: &Authority) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(ca.certificate()).domain_name(HOST)
}

/// How a server is set up: its certificate, and for mutual TLS the CA whose client
/// certificates it accepts.
pub struct Setup<'a> {
    pub identity: &'a Issued,
    pub client_ca: Option<&'a Authority>,
}

/// What the server checks, as the rustls configuration tonic's `ServerTlsConfig` would
/// build: the server's certificate, ring as the crypto provider, HTTP/2 offered by ALPN, and
/// for mutual TLS a verifier that demands a client certificate signed by the given CA.
pub fn server_config(setup: &Setup<'_>) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    // exercise begins: for mutual TLS, demand a client certificate signed by the given CA
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
    // exercise ends
    let chain = vec![CertificateDer::from(setup.identity.cert_der.clone())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(setup.identity.key_der.clone()));
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()]; // gRPC is HTTP/2; tonic's client insists
    Ok(config)
}

/// The clients a mutual-TLS server serves, by the name their certificate is issued for.
pub const CLIENTS: &[&str] = &["client-1"];

/// Which of `allowed` the client's certificate names. rustls has verified that certificate
/// (chain to the CA, dates, `clientAuth` usage) before any call gets here, but not whose it
/// is: every certificate the CA signed passes. Authorization is this check: the names in the
/// certificate's SAN, compared by webpki's own name check (the one a client makes on a
/// server's name), and a name that is not on the list is `PermissionDenied`.
fn authorized(request: &Request<()>, allowed: &[&str]) -> Result<String, Status> {
    let certs = request.peer_certs().filter(|certs| !certs.is_empty());
    let certs = certs.ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let cert = ParsedCertificate::try_from(&certs[0])
        .map_err(|_| Status::unauthenticated("the client certificate cannot be read"))?;
    let names = |name: &&str| {
        ServerName::try_from(*name).is_ok_and(|name| verify_server_name(&cert, &name).is_ok())
    };
    match allowed.iter().copied().find(names) {
        Some(name) => Ok(name.to_owned()),
        None => Err(Status::permission_denied("this client certificate is not on the list")),
    }
}

/// The Greeter, counting in `verified` the calls that arrive with a verified client
/// certificate whose name is on [`CLIENTS`].
pub fn greeter(mutual: bool, verified: Arc<AtomicUsize>) -> Routes {
    let greeter = GreeterServer::with_interceptor(
        HelloGreeter::new("secure-node"),
        move |request: Request<()>| {
            if mutual {
                let client = authorized(&request, CLIENTS)?;
                tracing::info!(%client, "a call from an allowed client");
                verified.fetch_add(1, Ordering::Relaxed);
            }
            Ok(request)
        },
    );
    Routes::new(greeter)
}

/// One SayHello to `addr`: over TLS with `tls`, or in plaintext without it.
pub async fn call(
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
