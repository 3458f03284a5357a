//! # secure: TLS that is verified, then mutual TLS
//!
//! go-micro's example made a self-signed certificate and told the client to skip
//! verification: the bytes were encrypted, but the client would have talked as happily to
//! an impostor. (In the version the example pinned, the option did not even reach gRPC.)
//! Here a certificate authority is made at run time (`microkit::tls`, with rcgen); it
//! signs the server's certificate, and the client trusts that CA and nothing else. Then
//! mutual TLS: the server also demands a client certificate signed by the CA. Every
//! refusal below is a real handshake that fails, and each has a test that fails if the
//! refusal ever stops.
//!
//! Run it:
//!
//! ```text
//! cargo run --example secure
//! # or as two processes (the server writes the CA and a client certificate to --certs):
//! cargo run --example secure -- server --listen 127.0.0.1:7443 --certs /tmp/lessons-certs
//! cargo run --example secure -- client --connect 127.0.0.1:7443 --certs /tmp/lessons-certs
//! ```
//!
//! It prints (the golden file `tests/golden/secure.txt` holds exactly this):
//!
//! ```text
//! CA "lessons CA" made at run time; it signs a server certificate for "localhost"
//! TLS, the client verifies the server:
//!   client trusting lessons CA: hello ada, answered by secure-node
//!   refused, plaintext client: the server refused: not a TLS handshake
//!   refused, client trusting another CA: the client refused: certificate signed by an unknown CA
//!   refused, certificate for the wrong host name: the client refused: certificate not valid for this host name
//!   refused, expired server certificate: the client refused: certificate expired
//! mutual TLS, the server verifies the client too:
//!   client with a certificate from lessons CA: hello ada, answered by secure-node
//!   calls that reached the handler with a verified client certificate: 1
//!   refused, client without a certificate: the server refused: no client certificate
//!   refused, client certificate from another CA: the server refused: client certificate signed by an unknown CA
//!   refused, expired client certificate: the server refused: client certificate expired
//! ```
//!
//! Read it beside `notes/secure.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use microkit::greeter::HelloGreeter;
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::greeter_server::GreeterServer;
use microkit::server::RunningServer;
use microkit::tls::{Authority, Issued, Validity};
use microkit::{Out, say};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};

/// Every connection attempt and call is capped: a refused handshake must fail, not hang.
const PATIENCE: Duration = Duration::from_secs(5);
/// The name the server's certificate is issued for, and the name the client checks.
const HOST: &str = "localhost";

#[derive(Parser, Debug)]
#[command(about = "TLS verified against a CA made at run time, then mutual TLS")]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Serve the Greeter with mutual TLS until ctrl-c; write ca.pem, client.pem and
    /// client.key to --certs for the client.
    Server {
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        #[arg(long)]
        certs: PathBuf,
    },
    /// Call the server with the CA and client certificate found in --certs.
    Client {
        #[arg(long, default_value = "127.0.0.1:7443")]
        connect: SocketAddr,
        #[arg(long)]
        certs: PathBuf,
        #[arg(long, default_value = "ada")]
        name: String,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse(), &Out::stdout()).await)
}

async fn run(args: Args, out: &Out) -> anyhow::Result<()> {
    match args.role {
        None => demo(out).await,
        Some(Role::Server { listen, certs }) => serve_until_ctrl_c(listen, &certs, out).await,
        Some(Role::Client { connect, certs, name }) => {
            let read = |file: &str| {
                let path = certs.join(file);
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))
            };
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read("ca.pem")?))
                .identity(Identity::from_pem(read("client.pem")?, read("client.key")?))
                .domain_name(HOST);
            let reply = call(connect, Some(tls), &name).await;
            let reply = reply.map_err(|e| match client_refusal(&e) {
                Some(why) => anyhow::anyhow!("the client refused the server: {why}"),
                None => e,
            })?;
            say!(out, "{reply}");
            Ok(())
        }
    }
}

async fn demo(out: &Out) -> anyhow::Result<()> {
    let ca = Authority::new("lessons CA")?;
    // The impostor: a CA nobody here trusts, which can sign any name it likes.
    let other_ca = Authority::new("other CA")?;
    say!(
        out,
        "CA \"{}\" made at run time; it signs a server certificate for \"{HOST}\"",
        ca.name()
    );
    let server_cert = ca.server(HOST)?;
    let tls_only = |identity| Setup { identity, client_ca: None };
    let mutual = |identity| Setup { identity, client_ca: Some(&ca) };
    let trusting =
        |ca: &Authority| ClientTlsConfig::new().ca_certificate(ca.certificate()).domain_name(HOST);

    say!(out, "TLS, the client verifies the server:");
    let (reply, _) = served(&tls_only(&server_cert), Some(trusting(&ca))).await?;
    say!(out, "  client trusting {}: {reply}", ca.name());
    let why = refused(&tls_only(&server_cert), None).await?;
    say!(out, "  refused, plaintext client: {why}");
    let why = refused(&tls_only(&server_cert), Some(trusting(&other_ca))).await?;
    say!(out, "  refused, client trusting another CA: {why}");
    let other_host = ca.server("db.internal")?;
    let why = refused(&tls_only(&other_host), Some(trusting(&ca))).await?;
    say!(out, "  refused, certificate for the wrong host name: {why}");
    let expired = ca.server_valid(HOST, Validity::Expired)?;
    let why = refused(&tls_only(&expired), Some(trusting(&ca))).await?;
    say!(out, "  refused, expired server certificate: {why}");

    say!(out, "mutual TLS, the server verifies the client too:");
    let with_cert = |issued: &Issued| trusting(&ca).identity(issued.identity());
    let (reply, verified) =
        served(&mutual(&server_cert), Some(with_cert(&ca.client("client-1")?))).await?;
    say!(out, "  client with a certificate from {}: {reply}", ca.name());
    say!(out, "  calls that reached the handler with a verified client certificate: {verified}");
    let why = refused(&mutual(&server_cert), Some(trusting(&ca))).await?;
    say!(out, "  refused, client without a certificate: {why}");
    let why =
        refused(&mutual(&server_cert), Some(with_cert(&other_ca.client("client-1")?))).await?;
    say!(out, "  refused, client certificate from another CA: {why}");
    let expired = ca.client_valid("client-1", Validity::Expired)?;
    let why = refused(&mutual(&server_cert), Some(with_cert(&expired))).await?;
    say!(out, "  refused, expired client certificate: {why}");
    Ok(())
}

/// How a demo server is set up: its certificate, and for mutual TLS the CA whose client
/// certificates it accepts.
struct Setup<'a> {
    identity: &'a Issued,
    client_ca: Option<&'a Authority>,
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

/// The demo's server: tonic serves the Greeter, but the TLS handshake is run here with
/// tokio-rustls, so that the server can say why it refused a client (tonic's own TLS,
/// used by the `server` role, only logs it). The handshake and its checks are the same.
struct TlsServer {
    running: RunningServer,
    refusals: mpsc::UnboundedReceiver<String>,
    /// Calls that reached the handler with a verified client certificate.
    verified: Arc<AtomicUsize>,
}

impl TlsServer {
    async fn start(setup: &Setup<'_>) -> anyhow::Result<TlsServer> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(setup)?));
        let mutual = setup.client_ca.is_some();
        let (refusal, refusals) = mpsc::unbounded_channel();
        let verified = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&verified);
        // rustls has checked the client's certificate before any call gets here, so the
        // interceptor sees facts, not claims.
        let greeter = GreeterServer::with_interceptor(
            HelloGreeter::new("secure-node"),
            move |request: Request<()>| {
                if mutual {
                    match request.peer_certs() {
                        Some(certs) if !certs.is_empty() => counter.fetch_add(1, Ordering::Relaxed),
                        _ => {
                            return Err(Status::unauthenticated(
                                "a client certificate is required",
                            ));
                        }
                    };
                }
                Ok(request)
            },
        );
        let running = RunningServer::start_with(move |tcp, stop| {
            // Handshakes run side by side: one slow client must not hold up the others.
            let incoming = tcp
                .map(move |tcp| handshake(acceptor.clone(), tcp, refusal.clone()))
                .buffer_unordered(16)
                .filter_map(std::future::ready);
            Server::builder().add_service(greeter).serve_with_incoming_shutdown(incoming, stop)
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

/// The rustls configuration tonic's `ServerTlsConfig` would build: the server's
/// certificate, ring as the crypto provider, HTTP/2 offered by ALPN, and for mutual TLS a
/// verifier that demands a client certificate signed by the given CA.
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

/// One server-side handshake. A refused client is reported and dropped; the server lives on.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: std::io::Result<TcpStream>,
    refusal: mpsc::UnboundedSender<String>,
) -> Option<std::io::Result<TlsStream<TcpStream>>> {
    let tcp = match tcp {
        Ok(tcp) => tcp,
        Err(error) => return Some(Err(error)),
    };
    let why = match tokio::time::timeout(PATIENCE, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => return Some(Ok(tls)),
        Ok(Err(error)) => server_refusal(&error),
        Err(_) => "the client never finished its handshake".to_owned(),
    };
    tracing::info!(%why, "handshake refused");
    let _ = refusal.send(why);
    None
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

/// Why the client refused the server, if it did: its verdict on the server's certificate,
/// found deep in the error's causes (gRPC, HTTP, I/O, then rustls). rustls' own text can
/// carry timestamps (an expiry), so it is summarised rather than printed.
fn client_refusal(error: &anyhow::Error) -> Option<&'static str> {
    use rustls::CertificateError as Cert;
    let tls_error = error.chain().find_map(|cause| {
        cause.downcast_ref::<rustls::Error>().or_else(|| {
            let io = cause.downcast_ref::<std::io::Error>()?;
            io.get_ref()?.downcast_ref::<rustls::Error>()
        })
    });
    match tls_error? {
        rustls::Error::InvalidCertificate(Cert::UnknownIssuer) => {
            Some("certificate signed by an unknown CA")
        }
        // A CA with the trusted one's name but another key: found by name, then the
        // signature does not verify. An impostor, or a CA that was made anew.
        rustls::Error::InvalidCertificate(Cert::BadSignature) => {
            Some("certificate not signed by the trusted CA's key")
        }
        rustls::Error::InvalidCertificate(
            Cert::NotValidForName | Cert::NotValidForNameContext { .. },
        ) => Some("certificate not valid for this host name"),
        rustls::Error::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }) => {
            Some("certificate expired")
        }
        _ => None,
    }
}

/// Why the server's side of a handshake failed, in one stable phrase.
fn server_refusal(error: &std::io::Error) -> String {
    use rustls::CertificateError as Cert;
    let Some(tls_error) = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return error.to_string();
    };
    match tls_error {
        rustls::Error::NoCertificatesPresented => "no client certificate".to_owned(),
        rustls::Error::InvalidCertificate(Cert::UnknownIssuer) => {
            "client certificate signed by an unknown CA".to_owned()
        }
        rustls::Error::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }) => {
            "client certificate expired".to_owned()
        }
        // Plaintext HTTP/2 starts with "PRI * HTTP/2.0": not a TLS record at all.
        rustls::Error::InvalidMessage(_) => "not a TLS handshake".to_owned(),
        rustls::Error::AlertReceived(alert) => format!("the client sent alert {alert:?}"),
        other => other.to_string(),
    }
}

/// The two-process server: mutual TLS, with the CA and a client certificate written to
/// `certs` so that a client in another terminal can use them.
async fn serve_until_ctrl_c(listen: SocketAddr, certs: &Path, out: &Out) -> anyhow::Result<()> {
    let ca = Authority::new("lessons CA")?;
    let client = ca.client("client-1")?;
    std::fs::create_dir_all(certs).with_context(|| format!("creating {}", certs.display()))?;
    for (file, text) in
        [("ca.pem", ca.cert_pem()), ("client.pem", client.cert_pem), ("client.key", client.key_pem)]
    {
        std::fs::write(certs.join(file), text).with_context(|| format!("writing {file}"))?;
    }
    let identity = ca.server(HOST)?.identity();
    // tonic's own TLS: the certificate, and the CA that client certificates must chain to.
    let tls = ServerTlsConfig::new().identity(identity).client_ca_root(ca.certificate());
    let greeter = HelloGreeter::new("secure-node").into_service();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    say!(
        out,
        "serving with mutual TLS on {addr}; CA and client certificate in {}",
        certs.display()
    );
    Server::builder()
        .tls_config(tls)?
        .add_service(greeter)
        // No Nagle delay: a handshake's small writes would otherwise wait for an ACK.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async {
            let _ = microkit::signal::stop_requested().await;
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prints_its_golden_output() {
        let out = Out::capture();
        run(Args::parse_from(["secure"]), &out).await.unwrap();
        microkit::golden::assert_matches("secure", &out.text());
    }

    /// Two CAs per test: the one the parties trust, and an impostor's.
    fn authorities() -> (Authority, Authority) {
        (Authority::new("test CA").unwrap(), Authority::new("other CA").unwrap())
    }

    fn trusting(ca: &Authority) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(ca.certificate()).domain_name(HOST)
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
        let server_cert = ca.server(HOST).unwrap();
        let setup = Setup { identity: &server_cert, client_ca: Some(&ca) };
        let why = refused(&setup, Some(trusting(&ca))).await.unwrap();
        assert_eq!(why, "the server refused: no client certificate");
    }

    #[tokio::test]
    async fn mutual_tls_refuses_a_client_certificate_from_another_ca() {
        let (ca, other_ca) = authorities();
        let server_cert = ca.server(HOST).unwrap();
        let setup = Setup { identity: &server_cert, client_ca: Some(&ca) };
        let tls = trusting(&ca).identity(other_ca.client("c").unwrap().identity());
        let why = refused(&setup, Some(tls)).await.unwrap();
        assert_eq!(why, "the server refused: client certificate signed by an unknown CA");
    }

    #[tokio::test]
    async fn mutual_tls_refuses_an_expired_client_certificate() {
        let (ca, _) = authorities();
        let server_cert = ca.server(HOST).unwrap();
        let setup = Setup { identity: &server_cert, client_ca: Some(&ca) };
        let expired = ca.client_valid("c", Validity::Expired).unwrap();
        let why = refused(&setup, Some(trusting(&ca).identity(expired.identity()))).await.unwrap();
        assert_eq!(why, "the server refused: client certificate expired");
    }

    #[tokio::test]
    async fn a_call_that_gets_through_is_not_passed_off_as_refused() {
        let (ca, _) = authorities();
        let error =
            refused(&tls_only(&ca.server(HOST).unwrap()), Some(trusting(&ca))).await.unwrap_err();
        assert!(error.to_string().contains("should have been refused"), "{error}");
    }

    #[test]
    fn the_server_role_needs_a_certificate_folder() {
        let error = Args::try_parse_from(["secure", "server"]).unwrap_err().to_string();
        assert!(error.contains("--certs"), "{error}");
    }
}
