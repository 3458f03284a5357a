use secure::{Authority, Issued, Validity};
use tonic::transport::ClientTlsConfig;

use crate::story::{refused, served};
use crate::trust::{CLIENTS, HOST, Setup, trusting};

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
    let why =
        refused(&tls_only(&ca.server("db.internal").unwrap()), Some(trusting(&ca))).await.unwrap();
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
    let tls = trusting(&ca).identity(ca.client(CLIENTS[0]).unwrap().identity());
    let (reply, verified) = served(&setup, Some(tls)).await.unwrap();
    assert_eq!(reply, "hello ada, answered by secure-node");
    assert_eq!(verified, 1);
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_the_same_ca_signed_for_a_name_not_on_the_list() {
    let (ca, _) = authorities();
    let stranger = ca.client("client-2").unwrap();
    let why =
        refused_by_mutual_server(&ca, trusting(&ca).identity(stranger.identity())).await.unwrap();
    let denied = "PermissionDenied \"this client certificate is not on the list\"";
    assert_eq!(why, format!("the server refused the call: {denied}"));
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
    let why =
        refused_by_mutual_server(&ca, trusting(&ca).identity(expired.identity())).await.unwrap();
    assert_eq!(why, "the server refused: client certificate expired");
}

#[tokio::test]
async fn a_call_that_gets_through_is_not_passed_off_as_refused() {
    let (ca, _) = authorities();
    let error =
        refused(&tls_only(&ca.server(HOST).unwrap()), Some(trusting(&ca))).await.unwrap_err();
    assert!(error.to_string().contains("should have been refused"), "{error}");
}
