//! Transport security: unary calls over TLS and mutual TLS vs plaintext, and what a new
//! connection's handshake costs. Certificates come from `secure::Authority`, as in
//! the secure example; tonic runs rustls on ring.
//!
//! Reported, not judged: encryption is the price of the lesson, not overhead to remove.

use micro_benches::{Effort, Row, Target, latency_pair};
use microkit::greeter::HelloGreeter;
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::server::RunningServer;
use secure::Authority;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Server, ServerTlsConfig};

/// The name the server certificate is issued for, and the name the client checks.
const HOST: &str = "localhost";

pub async fn rows(effort: Effort) -> Vec<Row> {
    let ca = Authority::new("bench CA").unwrap();
    let server_cert = ca.server(HOST).unwrap();
    let client_cert = ca.client("bench-client").unwrap();

    let plain = serve(None).await;
    let tls = serve(Some(ServerTlsConfig::new().identity(server_cert.identity()))).await;
    let mtls = serve(Some(
        ServerTlsConfig::new().identity(server_cert.identity()).client_ca_root(ca.certificate()),
    ))
    .await;
    let trusting = ClientTlsConfig::new().ca_certificate(ca.certificate()).domain_name(HOST);
    let with_cert = trusting.clone().identity(client_cert.identity());

    let plain_endpoint = endpoint(&plain, None);
    let tls_endpoint = endpoint(&tls, Some(trusting));
    let mtls_endpoint = endpoint(&mtls, Some(with_cert));
    let mut plain_client = GreeterClient::new(plain_endpoint.connect().await.unwrap());
    let mut tls_client = GreeterClient::new(tls_endpoint.connect().await.unwrap());
    let mut mtls_client = GreeterClient::new(mtls_endpoint.connect().await.unwrap());

    let tls_unary = latency_pair(
        effort,
        async || hello(&mut plain_client).await,
        async || hello(&mut tls_client).await,
    )
    .await;
    let mtls_unary = latency_pair(
        effort,
        async || hello(&mut plain_client).await,
        async || hello(&mut mtls_client).await,
    )
    .await;

    // A handshake happens once per connection: connect and make one call, many times.
    let connects = Effort { calls_per_round: (effort.calls_per_round / 20).max(4), ..effort };
    let first_call = async |endpoint: &Endpoint| {
        hello(&mut GreeterClient::new(endpoint.connect().await.unwrap())).await;
    };
    let tls_connect = latency_pair(
        connects,
        async || first_call(&plain_endpoint).await,
        async || first_call(&tls_endpoint).await,
    )
    .await;
    let mtls_connect = latency_pair(
        connects,
        async || first_call(&plain_endpoint).await,
        async || first_call(&mtls_endpoint).await,
    )
    .await;

    vec![
        Row::latency("TLS: unary p50 vs plaintext", tls_unary, Target::Report),
        Row::latency("mTLS: unary p50 vs plaintext", mtls_unary, Target::Report),
        Row::latency("TLS: connect + first call vs plaintext", tls_connect, Target::Report),
        Row::latency("mTLS: connect + first call vs plaintext", mtls_connect, Target::Report),
    ]
}

async fn hello(client: &mut GreeterClient<Channel>) {
    client.say_hello(HelloRequest { name: "bench".into() }).await.unwrap();
}

async fn serve(tls: Option<ServerTlsConfig>) -> RunningServer {
    let greeter = HelloGreeter::new("secure").into_service();
    RunningServer::start_with(move |incoming, stop| {
        let mut builder = Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).expect("a valid server TLS setup");
        }
        builder.add_service(greeter).serve_with_incoming_shutdown(incoming, stop)
    })
    .await
    .unwrap()
}

fn endpoint(server: &RunningServer, tls: Option<ClientTlsConfig>) -> Endpoint {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{}", server.addr())).unwrap();
    match tls {
        Some(tls) => endpoint.tls_config(tls).unwrap(),
        None => endpoint,
    }
}
