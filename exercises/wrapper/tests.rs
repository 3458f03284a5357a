use clap::Parser;
use futures::StreamExt;
use microkit::proto::greeter::{GreetingsRequest, HelloReply, HelloRequest};
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Response, Status};

use crate::Args;
use crate::story::{Demo, Traced, hello};
use crate::wrapper::{
    Journal, Note, TOKEN, bearer, check_token, client_with_token, client_without_token,
};

fn note(depth: usize, what: impl Into<String>) -> Note {
    Note { depth, what: what.into() }
}

/// One SayHello against a fresh demo: through the full client stack with `Some(token)`,
/// through the stack without its auth wrapper with `None`.
async fn hello_with(token: Option<&str>) -> Traced<Response<HelloReply>> {
    let demo = Demo::start().await.unwrap();
    let traced = match token {
        Some(token) => {
            let mut client = client_with_token(demo.channel.clone(), &demo.client, token.into());
            demo.trace(client.say_hello(hello())).await
        }
        None => {
            let mut client = client_without_token(demo.channel.clone(), &demo.client);
            demo.trace(client.say_hello(hello())).await
        }
    };
    demo.server.shutdown().await.unwrap();
    traced
}

/// What one side's journal holds for a call that passed both of its wrappers.
fn passed(side: &str, method: &str) -> Vec<Note> {
    let auth = if side == "client" { "token added" } else { "token accepted" };
    vec![
        note(0, format!("{side} log: request /greeter.v1.Greeter/{method}")),
        note(1, format!("{side} auth: {auth}")),
        note(0, format!("{side} log: response head, grpc-status in trailers")),
        note(0, format!("{side} log: response end")),
    ]
}

fn refused(traced: Traced<Response<HelloReply>>) -> (Status, Vec<Note>, Vec<Note>) {
    (traced.result.unwrap_err(), traced.client, traced.server)
}

#[tokio::test]
async fn a_unary_call_passes_log_then_auth_on_each_side() {
    let traced = hello_with(Some(TOKEN)).await;
    assert_eq!(traced.result.unwrap().get_ref().message, "hello ada");
    assert_eq!(traced.client, passed("client", "SayHello"));
    assert_eq!(traced.server, passed("server", "SayHello"));
}

#[tokio::test]
async fn a_server_stream_passes_the_same_wrappers_and_ends_after_its_last_reply() {
    let demo = Demo::start().await.unwrap();
    let mut client = client_with_token(demo.channel.clone(), &demo.client, TOKEN.into());
    let request = GreetingsRequest { name: "ada".into(), count: 3, interval_ms: 0 };
    let traced =
        demo.trace(async { Ok(client.greetings(request).await?.into_inner().count().await) }).await;
    assert_eq!(traced.result.unwrap(), 3);
    assert_eq!(traced.client, passed("client", "Greetings"));
    assert_eq!(traced.server, passed("server", "Greetings"));
    demo.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_server_wrappers_wrap_a_bidi_stream_too() {
    let demo = Demo::start().await.unwrap();
    let mut client = client_with_token(demo.channel.clone(), &demo.client, TOKEN.into());
    let names = futures::stream::iter(["a", "b"].map(|n| HelloRequest { name: n.into() }));
    let traced =
        demo.trace(async { Ok(client.chat(names).await?.into_inner().count().await) }).await;
    assert_eq!(traced.result.unwrap(), 2);
    assert_eq!(traced.server, passed("server", "Chat"));
    demo.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_call_without_a_token_is_refused_before_the_handler() {
    let (status, client, server) = refused(hello_with(None).await);
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(status.message(), "missing bearer token");
    // Trailers-only: the status is in the head, and there is no body whose end to note.
    let head = note(0, "client log: response head, grpc-status 16");
    assert_eq!(client, [passed("client", "SayHello")[0].clone(), head]);
    assert!(server.contains(&note(1, "server auth: no token, refused")), "{server:?}");
}

#[tokio::test]
async fn a_wrong_token_is_refused_by_the_server_wrapper() {
    let (status, _, server) = refused(hello_with(Some("wrong")).await);
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(status.message(), "invalid bearer token");
    assert!(server.contains(&note(1, "server auth: wrong token, refused")), "{server:?}");
}

#[tokio::test]
async fn a_stream_the_client_cancels_has_its_end_noted_on_both_sides() {
    let demo = Demo::start().await.unwrap();
    let mut server_notes = demo.server_journal.0.subscribe();
    let mut client = client_with_token(demo.channel.clone(), &demo.client, TOKEN.into());
    let endless = GreetingsRequest { name: "ada".into(), count: 0, interval_ms: 5 };
    let mut stream = client.greetings(endless).await.unwrap().into_inner();
    for _ in 0..2 {
        stream.message().await.unwrap().expect("an endless stream ended");
    }
    drop(stream); // the client goes away: no trailers will ever come
    let cancelled = |side: &str| note(0, format!("{side} log: response end (cancelled)"));
    assert_eq!(demo.client.take().last(), Some(&cancelled("client")));
    // The server's end comes when the reset reaches it and its body is dropped.
    let noted = server_notes.wait_for(|notes| notes.contains(&cancelled("server")));
    let noted = tokio::time::timeout(microkit::PATIENCE, noted).await.is_ok();
    assert!(noted, "the server never noted the end: {:?}", demo.server_journal.take());
    demo.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_timeout_layer_bounds_the_response_head_not_the_stream_after_it() {
    let demo = Demo::start().await.unwrap();
    let mut client = client_with_token(demo.channel.clone(), &demo.client, TOKEN.into());
    // tonic keeps a per-call timeout with a timeout layer inside the channel, the same
    // kind as tower's `TimeoutLayer`: it watches the future that yields the head.
    let slow = GreetingsRequest { name: "ada".into(), count: 3, interval_ms: 1000 };
    let mut request = Request::new(slow);
    request.set_timeout(std::time::Duration::from_secs(1));
    let started = std::time::Instant::now();
    let replies: Vec<_> = client.greetings(request).await.unwrap().into_inner().collect().await;
    assert!(started.elapsed() >= std::time::Duration::from_secs(2), "not a slow stream");
    assert_eq!(replies.len(), 3, "{replies:?}");
    assert!(replies.iter().all(Result::is_ok), "the stream outlived its timeout: {replies:?}");
    demo.server.shutdown().await.unwrap();
}

#[test]
fn a_token_flag_that_is_not_printable_ascii_is_refused_naming_the_rule() {
    let error = Args::try_parse_from(["wrapper", "--token", "é"]).unwrap_err().to_string();
    assert!(error.contains("a metadata value must be printable ASCII"), "{error}");
}

#[test]
fn a_token_with_a_tab_or_a_trailing_space_is_refused_as_grpc_refuses_it() {
    // Both would pass tonic's parser, and a tab would reach the server's `to_str()`.
    for token in ["let\tme-in", "let-me-in ", ""] {
        let status = bearer(token).unwrap_err();
        assert!(status.message().contains("no space at its end"), "{token:?}: {status}");
    }
    assert!(bearer(TOKEN).is_ok());
}

#[tokio::test]
async fn the_client_wrapper_refuses_to_send_a_token_that_is_not_printable_ascii() {
    let traced = hello_with(Some("é")).await;
    let status = traced.result.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("a metadata value must be printable ASCII"), "{status}");
    assert!(traced.server.is_empty(), "nothing may be sent: {:?}", traced.server);
}

#[test]
fn the_server_wrapper_names_an_authorization_header_it_cannot_read() {
    let mut request = Request::new(());
    // tonic's own parser lets bytes above 127 through: what a careless client sends.
    let value = MetadataValue::try_from("Bearer é".as_bytes()).unwrap();
    request.metadata_mut().insert("authorization", value);
    let status = check_token(Journal::default()).call(request).unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("not printable ASCII"), "{status}");
}

#[test]
fn the_token_flag_is_parsed() {
    assert_eq!(Args::try_parse_from(["wrapper"]).unwrap().token, TOKEN);
    assert_eq!(Args::try_parse_from(["wrapper", "--token", "x"]).unwrap().token, "x");
}
