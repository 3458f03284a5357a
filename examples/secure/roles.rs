//! The two-process version: a mutual-TLS `server` that writes its CA and a client
//! certificate to a folder, and a `client` in another terminal that uses them.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use microkit::PATIENCE;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secure::Authority;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::handshake::serve_tls;
use crate::refusal::{client_refusal, refused_by_the_server};
use crate::trust::{HOST, Setup, call, greeter, server_config};

/// Where the server writes the certificates and the client reads them: cargo's build folder,
/// which is the user's own and ignored by git. Not the shared `/tmp`, where anyone can
/// create the folder first, or plant links in it.
pub const CERTS: &str = "target/secure-certs";

/// Serves with mutual TLS until a stop is requested, then drains and prints its tally.
pub async fn server(listen: SocketAddr, certs: &Path) -> anyhow::Result<()> {
    let ca = Authority::new("lessons CA")?;
    write_certs(certs, &ca)?;
    let server_cert = ca.server(HOST)?;
    let setup = Setup { identity: &server_cert, client_ca: Some(&ca) };
    let acceptor = TlsAcceptor::from(Arc::new(server_config(&setup)?));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    // Armed before the ready line: a signal that follows it is a stop request.
    let stop_request = microkit::signal::stop_requested();
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
    let tcp = microkit::server::Incoming::from(listener);
    let routes = greeter(true, Arc::clone(&verified));
    let serving =
        tokio::spawn(serve_tls(tcp, acceptor, routes, refusal, stop.clone().cancelled_owned()));

    let signal = microkit::signal::stopping(stop_request.await, "draining")?;
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
///
/// Whoever can write to the folder can swap `ca.pem` for a CA of their own, or leave a link
/// named `client.key` that would send the key into a file of the user's. So the folder must
/// be the user's and closed to others, each file is made new (what was there, link or file,
/// is removed, never followed), and the key is readable by the user alone.
fn write_certs(certs: &Path, ca: &Authority) -> anyhow::Result<()> {
    let client = ca.client("client-1")?;
    let mut folder = std::fs::DirBuilder::new();
    folder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut folder, 0o700);
    folder.create(certs).with_context(|| format!("creating {}", certs.display()))?;
    closed_to_others(certs)?;
    // The certificate is public: the file made for it shows whose folder this is.
    write_new(&certs.join("ca.pem"), &ca.cert_pem(), 0o644)?;
    owned_by_us(certs, &certs.join("ca.pem"))?;
    write_new(&certs.join("client.pem"), &client.cert_pem, 0o644)?;
    write_new(&certs.join("client.key"), &client.key_pem, 0o600)
}

/// Makes `path` anew with `text`: an old file or link there is removed, not written through.
fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(error).with_context(|| format!("removing the old {}", path.display()));
        }
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode; // elsewhere the folder's own permissions apply
    let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// Refuses a folder that other users can write to: they could swap or plant files in it.
fn closed_to_others(folder: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(folder)?.permissions().mode() & 0o777;
        if mode & 0o022 != 0 {
            anyhow::bail!(
                "{} can be written by other users (mode {mode:o}), who could swap the CA or \
                 plant a link where the key goes; use a folder only you can write to \
                 (the default is {CERTS})",
                folder.display()
            );
        }
    }
    Ok(())
}

/// Refuses a folder that belongs to another user (who could swap its files at will), judged
/// by `ours`, a file this process has just made there.
fn owned_by_us(folder: &Path, ours: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let (owner, us) = (std::fs::metadata(folder)?.uid(), std::fs::metadata(ours)?.uid());
        if owner != us {
            let _ = std::fs::remove_file(ours);
            anyhow::bail!(
                "{} belongs to another user (uid {owner}), who could swap the CA or plant a \
                 link where the key goes; use a folder of your own (the default is {CERTS})",
                folder.display()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (folder, ours);
    Ok(())
}

/// One call with the CA and the client certificate found in `certs`.
pub async fn client(connect: SocketAddr, certs: &Path, name: &str) -> anyhow::Result<()> {
    // A CA read from a folder others can write to could be anyone's.
    closed_to_others(certs)?;
    let read = |file: &str| {
        let path = certs.join(file);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let (ca, cert, key) = (read("ca.pem")?, read("client.pem")?, read("client.key")?);
    // tonic skips what it cannot parse: a garbled CA would show up later as "signed by an
    // unknown CA", a garbled key as a handshake error. Say which file is wrong instead.
    let a_certificate = |text: &str| {
        CertificateDer::pem_slice_iter(text.as_bytes()).next().is_some_and(|c| c.is_ok())
    };
    let a_key = PrivateKeyDer::from_pem_slice(key.as_bytes()).is_ok();
    for (file, found, what) in [
        ("ca.pem", a_certificate(&ca), "certificate"),
        ("client.pem", a_certificate(&cert), "certificate"),
        ("client.key", a_key, "private key"),
    ] {
        anyhow::ensure!(found, "{} holds no PEM {what}", certs.join(file).display());
    }
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name(HOST);
    let reply = call(connect, Some(tls), name).await.map_err(|e| {
        if let Some(why) = client_refusal(&e) {
            anyhow::anyhow!("the client refused the server: {why}")
        } else if let Some(why) = refused_by_the_server(&e) {
            let hint = "most likely over its certificate; the server's log says why";
            anyhow::anyhow!("the server turned this client away ({why}), {hint}")
        } else {
            e
        }
    })?;
    println!("{reply}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Args, Role};

    #[test]
    fn both_roles_default_to_the_same_folder_of_the_users_own() {
        let certs_of = |args: &[&str]| match Args::try_parse_from(args).unwrap().role {
            Some(Role::Server { certs, .. } | Role::Client { certs, .. }) => certs,
            None => unreachable!("a role was given"),
        };
        let (server, client) = (certs_of(&["secure", "server"]), certs_of(&["secure", "client"]));
        assert_eq!(server, client);
        assert_eq!(server, Path::new("target/secure-certs"));
        assert!(!server.starts_with(std::env::temp_dir()), "{server:?} is in the shared temp");
    }
}
