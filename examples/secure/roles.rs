//! The two-process version: a mutual-TLS `server` that writes its CA and a client
//! certificate to a folder, and a `client` in another terminal that uses them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use clap::{Parser, Subcommand};
use microkit::PATIENCE;
use microkit::tls::Authority;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::refusal::client_refusal;
use crate::{HOST, Setup, call, greeter, serve_tls, server_config};

#[derive(Parser, Debug)]
#[command(about = "TLS verified against a CA made at run time, then mutual TLS")]
pub struct Args {
    #[command(subcommand)]
    pub role: Option<Role>,
}

#[derive(Subcommand, Debug)]
pub enum Role {
    /// Serve the Greeter with mutual TLS until SIGTERM, SIGINT or SIGHUP; write ca.pem,
    /// client.pem and client.key to --certs for the client.
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

pub async fn run(role: Role) -> anyhow::Result<()> {
    match role {
        Role::Server { listen, certs } => server(listen, &certs).await,
        Role::Client { connect, certs, name } => client(connect, &certs, &name).await,
    }
}

/// Serves with mutual TLS until a stop is requested, then drains and prints its tally.
async fn server(listen: SocketAddr, certs: &Path) -> anyhow::Result<()> {
    let ca = Authority::new("lessons CA")?;
    write_certs(certs, &ca)?;
    let server_cert = ca.server(HOST)?;
    let setup = Setup { identity: &server_cert, client_ca: Some(&ca) };
    let acceptor = TlsAcceptor::from(Arc::new(server_config(&setup)?));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    println!("serving with mutual TLS on {addr}; CA and client certificate in {}", certs.display());

    // Each refused client is logged: the operator's only view of a client that gave up.
    let (refusal, mut refusals) = mpsc::unbounded_channel::<String>();
    let refused = tokio::spawn(async move {
        let mut count = 0;
        while let Some(why) = refusals.recv().await {
            tracing::warn!("refused a client: {why}");
            count += 1;
        }
        count
    });
    let verified = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    // No Nagle delay: a handshake's small writes would otherwise wait for an ACK.
    let tcp = TcpIncoming::from(listener).with_nodelay(Some(true));
    let routes = greeter(true, Arc::clone(&verified));
    let serving =
        tokio::spawn(serve_tls(tcp, acceptor, routes, refusal, stop.clone().cancelled_owned()));

    let signal = microkit::signal::stop_requested().await?;
    microkit::signal::exit_on_next();
    tracing::info!("{signal}: draining");
    stop.cancel();
    match tokio::time::timeout(PATIENCE, serving).await {
        Ok(served) => served.context("the server task failed")??,
        Err(_) => tracing::warn!("the drain took over {PATIENCE:?}; open connections are cut"),
    }
    let refused = tokio::time::timeout(PATIENCE, refused).await.unwrap_or(Ok(0))?;
    let served = verified.load(Ordering::Relaxed);
    println!("stopped on {signal}: calls served {served}, handshakes refused {refused}");
    Ok(())
}

/// Writes the CA's certificate, and a client certificate with its key, for the client role.
fn write_certs(certs: &Path, ca: &Authority) -> anyhow::Result<()> {
    let client = ca.client("client-1")?;
    std::fs::create_dir_all(certs).with_context(|| format!("creating {}", certs.display()))?;
    for (file, text) in
        [("ca.pem", ca.cert_pem()), ("client.pem", client.cert_pem), ("client.key", client.key_pem)]
    {
        std::fs::write(certs.join(file), text).with_context(|| format!("writing {file}"))?;
    }
    Ok(())
}

/// One call with the CA and the client certificate found in `certs`.
async fn client(connect: SocketAddr, certs: &Path, name: &str) -> anyhow::Result<()> {
    let read = |file: &str| {
        let path = certs.join(file);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")?))
        .identity(Identity::from_pem(read("client.pem")?, read("client.key")?))
        .domain_name(HOST);
    let reply = call(connect, Some(tls), name).await.map_err(|e| match client_refusal(&e) {
        Some(why) => anyhow::anyhow!("the client refused the server: {why}"),
        None => e,
    })?;
    println!("{reply}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_role_needs_a_certificate_folder() {
        let error = Args::try_parse_from(["secure", "server"]).unwrap_err().to_string();
        assert!(error.contains("--certs"), "{error}");
    }
}
