//! Why a handshake failed, in one stable phrase: the words the demo prints and the roles
//! report. rustls' own messages can carry times (an expiry), so they are summarised here.

/// Why the client refused the server, if it did: its verdict on the server's certificate,
/// found deep in the error's causes (gRPC, HTTP, I/O, then rustls). rustls' own text can
/// carry timestamps (an expiry), so it is summarised rather than printed.
pub fn client_refusal(error: &anyhow::Error) -> Option<&'static str> {
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
pub fn server_refusal(error: &std::io::Error) -> String {
    use rustls::CertificateError as Cert;
    let Some(tls_error) = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return error.to_string();
    };
    match tls_error {
        rustls::Error::NoCertificatesPresented => "no client certificate".to_owned(),
        rustls::Error::InvalidCertificate(Cert::UnknownIssuer) => {
            "client certificate signed by an unknown CA".to_owned()
        }
        rustls::Error::InvalidCertificate(Cert::BadSignature) => {
            "client certificate not signed by the trusted CA's key".to_owned()
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

/// The sign, as the client sees it, that the server turned it away: a TLS alert from the
/// server, or the connection ended right after a handshake the client thought was done. In
/// TLS 1.3 a client has finished its side before the server has checked its certificate,
/// so a refusal arrives as the first call failing, with a transport error that names none
/// of this; the server's own log says what was wrong.
pub fn refused_by_the_server(error: &anyhow::Error) -> Option<String> {
    let mut ended = false;
    for cause in error.chain() {
        let tls = cause.downcast_ref::<rustls::Error>().or_else(|| {
            let io = cause.downcast_ref::<std::io::Error>()?;
            io.get_ref()?.downcast_ref::<rustls::Error>()
        });
        if let Some(rustls::Error::AlertReceived(alert)) = tls {
            return Some(format!("TLS alert {alert:?}"));
        }
        // The call itself failed for want of a connection (a failed connect is no `Status`):
        // the connection the handshake had just made was gone.
        ended |= cause.downcast_ref::<tonic::Status>().is_some_and(|status| {
            std::error::Error::source(status).is_some_and(|e| e.is::<tonic::transport::Error>())
        });
    }
    ended.then(|| "the connection ended right after the handshake".to_owned())
}
