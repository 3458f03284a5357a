use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};

use crate::Args;
use crate::metadata::{ascii, key_rules};
use crate::story::{greetings, say_hello, start, text};
use clap::Parser;

#[tokio::test]
async fn per_call_and_intercepted_metadata_reach_the_server() {
    let (server, seen, mut client) = start().await.unwrap();
    let hello = say_hello(&mut client, &seen, "ada").await.unwrap();
    assert_eq!(
        hello.seen,
        ["trace-bin = de ad be ef (binary)", "x-request-id = req-1", "x-user-name = ada"]
    );
    let response = hello.result.unwrap();
    assert_eq!(response.get_ref().message, "hello ada");
    assert_eq!(text(response.metadata(), "x-served-by"), Some("greeter-1"));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_interceptor_numbers_every_call() {
    let (server, seen, mut client) = start().await.unwrap();
    for n in 1..=3 {
        let hello = say_hello(&mut client, &seen, "ada").await.unwrap();
        assert!(hello.seen.contains(&format!("x-request-id = req-{n}")), "{:?}", hello.seen);
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_refusal_carries_its_metadata_in_the_trailers() {
    let (server, seen, mut client) = start().await.unwrap();
    let status = say_hello(&mut client, &seen, "nobody").await.unwrap().result.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "nobody may not be greeted");
    assert_eq!(text(status.metadata(), "x-denied-by"), Some("policy-7"));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stream_sends_its_trailers_after_the_last_reply() {
    let (server, _, mut client) = start().await.unwrap();
    let (replies, trailers) = greetings(&mut client, "bo", 3).await.unwrap();
    let seqs: Vec<u32> = replies.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(replies[0].message, "hello bo");
    assert_eq!(text(&trailers, "x-replies-sent"), Some("3"));
    server.shutdown().await.unwrap();
}

#[test]
fn keys_are_lower_cased_and_bad_values_and_binary_keys_refused() {
    let rules = key_rules();
    assert_eq!(rules.sent_as, "x-user-name");
    assert!(rules.multi_line_value.is_some());
    assert!(rules.binary_key_without_bin.is_some());
}

#[test]
fn only_printable_ascii_makes_a_text_value() {
    assert!(ascii("john").is_ok());
    assert!(ascii("john smith").is_ok(), "a space inside is printable ASCII");
    for refused in ["zoë", "two\nlines"] {
        assert_eq!(ascii(refused).unwrap_err().code(), Code::InvalidArgument, "{refused:?}");
    }
}

#[test]
fn a_tab_or_a_space_at_either_end_is_refused_as_grpc_refuses_it() {
    // HTTP/2 and tonic's parser both take these; gRPC's ASCII-Value does not.
    assert!("a\tb".parse::<MetadataValue<Ascii>>().is_ok());
    let refusal = |text| ascii(text).map(drop).map_err(|status| status.message().to_owned());
    assert_eq!(
        refusal("a\tb"),
        Err(r#"not printable ASCII (gRPC allows space to '~'): "a\tb""#.into())
    );
    for edge in [" ada", "ada ", " "] {
        let why = refusal(edge).unwrap_err();
        assert!(why.starts_with("a space at either end"), "{edge:?}: {why}");
    }
    let error = Args::try_parse_from(["metadata", "--user", "a\tb"]).unwrap_err().to_string();
    assert!(error.contains("not printable ASCII"), "{error}");
    assert!(Args::try_parse_from(["metadata", "--user", "ada "]).is_err());
}

#[test]
fn the_user_flag_is_parsed_and_a_non_ascii_user_refused_before_anything_is_sent() {
    assert_eq!(Args::try_parse_from(["metadata", "--user", "ada"]).unwrap().user, "ada");
    let error = Args::try_parse_from(["metadata", "--user", "zoë"]).unwrap_err().to_string();
    assert!(error.contains("not printable ASCII"), "{error}");
}

#[test]
fn an_unknown_flag_is_refused() {
    assert!(Args::try_parse_from(["metadata", "--colour"]).is_err());
}
