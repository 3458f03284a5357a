//! An in-memory TLS authority: a certificate authority made at run time, and the server and
//! client certificates it signs. Nothing touches the disk and nothing is trusted by the
//! machine, so demos and tests can make as many authorities as they like (one to trust, one
//! to play the impostor).
//!
//! The keys are ECDSA P-256 made by rcgen with ring, the one crypto provider of this
//! repository; tonic's `tls-ring` feature verifies them with rustls on the same provider.
//!
//! ```no_run
//! # fn demo() -> Result<(), rcgen::Error> {
//! let ca = secure::Authority::new("lessons CA")?;
//! let server = ca.server("localhost")?; // valid for the host name `localhost`
//! let client = ca.client("client-1")?; // for mutual TLS
//! // server.identity() goes to ServerTlsConfig, ca.certificate() to ClientTlsConfig.
//! # Ok(()) }
//! ```

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, Identity};

/// A certificate authority that lives only in this process.
pub struct Authority {
    name: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("name", &self.name).finish_non_exhaustive()
    }
}

/// A certificate with its private key, as PEM text (what tonic reads) and as DER bytes
/// (what rustls takes: `CertificateDer::from(cert_der)`, `PrivatePkcs8KeyDer::from(key_der)`).
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    /// The private key in PKCS#8 form.
    pub key_der: Vec<u8>,
}

impl Issued {
    /// The certificate and key as tonic takes them: for `ServerTlsConfig::identity` on a
    /// server, or `ClientTlsConfig::identity` on a client doing mutual TLS.
    pub fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// From 1975 until far in the future (rcgen's default).
    Current,
    /// Only during the year 2000: long expired, as a certificate nobody renewed.
    Expired,
}

impl Authority {
    /// A new self-signed CA named `name`, with a fresh key.
    pub fn new(name: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        // A CA that may sign end-entity certificates only (path length 0).
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Authority { name: name.to_owned(), issuer })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA certificate, as PEM text.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate as DER bytes, for a rustls `RootCertStore`.
    pub fn cert_der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// The CA certificate as tonic takes it: what a client trusts
    /// (`ClientTlsConfig::ca_certificate`), or what a server checks client certificates
    /// against (`ServerTlsConfig::client_ca_root`).
    pub fn certificate(&self) -> Certificate {
        Certificate::from_pem(self.cert_pem())
    }

    /// A server certificate for `host` (a DNS name, or an IP address written as text).
    pub fn server(&self, host: &str) -> Result<Issued, rcgen::Error> {
        self.server_valid(host, Validity::Current)
    }

    /// A server certificate for `host`, valid when `validity` says.
    pub fn server_valid(&self, host: &str, validity: Validity) -> Result<Issued, rcgen::Error> {
        self.issue(host, vec![host.to_owned()], ExtendedKeyUsagePurpose::ServerAuth, validity)
    }

    /// A client certificate for mutual TLS, issued for `name`: its common name, and a DNS
    /// name in its SAN, which is what a server that authorizes clients by name checks
    /// (webpki compares SAN names only, never the common name).
    pub fn client(&self, name: &str) -> Result<Issued, rcgen::Error> {
        self.client_valid(name, Validity::Current)
    }

    /// A client certificate for `name`, valid when `validity` says.
    pub fn client_valid(&self, name: &str, validity: Validity) -> Result<Issued, rcgen::Error> {
        self.issue(name, vec![name.to_owned()], ExtendedKeyUsagePurpose::ClientAuth, validity)
    }

    fn issue(
        &self,
        common_name: &str,
        names: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
        validity: Validity,
    ) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        if validity == Validity::Expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_pem_certificates_and_keys() {
        let ca = Authority::new("test CA").unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let server = ca.server("localhost").unwrap();
        assert!(server.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(server.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let client = ca.client_valid("client-1", Validity::Expired).unwrap();
        assert_ne!(client.cert_pem, server.cert_pem);
    }

    #[test]
    fn two_authorities_have_different_certificates() {
        let one = Authority::new("same name").unwrap();
        let two = Authority::new("same name").unwrap();
        assert_ne!(one.cert_pem(), two.cert_pem(), "each CA gets a fresh key");
    }
}
