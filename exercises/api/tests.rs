//! Unit tests: each piece of the edge alone, then the gateway in front of a real node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use api::backends::{self, CALCULATOR};
use api::edge::{Breaker, Claims, Keys, RateLimit, State, TokenError, Transition, Verdict};
use api::{Gateway, Settings, convert, edge, gateway};
use axum::body::Body;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::BodyExt;
use registry::{MemoryRegistry, Registered, Registry};

fn claims(scope: &str, exp: u64) -> Claims {
    Claims { sub: "ada".into(), scope: scope.into(), exp }
}

#[test]
fn a_signed_token_verifies_and_a_changed_or_foreign_one_does_not() {
    let keys = Keys::new(b"secret");
    let token = keys.sign(&claims("greeter.v1.Greeter", 2000));
    assert_eq!(keys.verify(&token, 1000), Ok(claims("greeter.v1.Greeter", 2000)));
    assert_eq!(keys.verify(&token, 2000), Err(TokenError::Expired));
    assert_eq!(Keys::new(b"other").verify(&token, 1000), Err(TokenError::BadSignature));
    // Claims rewritten to a wider scope, the signature kept: refused.
    let parts: Vec<&str> = token.split('.').collect();
    let wider = URL_SAFE_NO_PAD.encode(r#"{"sub":"ada","scope":"billing.v1.Billing","exp":2000}"#);
    let forged = format!("{}.{wider}.{}", parts[0], parts[2]);
    assert_eq!(keys.verify(&forged, 1000), Err(TokenError::BadSignature));
    assert!(matches!(keys.verify("nonsense", 1000), Err(TokenError::Malformed(_))));
}

#[test]
fn an_unsigned_alg_none_token_is_refused() {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(r#"{"sub":"ada","scope":"greeter.v1.Greeter","exp":9999}"#);
    let keys = Keys::new(b"secret");
    assert_eq!(keys.verify(&format!("{header}.{body}."), 1), Err(TokenError::BadSignature));
}

#[test]
fn a_scope_names_a_service_or_one_method_of_it() {
    let token = claims("greeter.v1.Greeter calc.v1.Calculator/Add", 1);
    assert!(token.allows("greeter.v1.Greeter", "SayHello"));
    assert!(token.allows("calc.v1.Calculator", "Add"));
    assert!(!token.allows("calc.v1.Calculator", "Count"));
    assert!(!token.allows("greeter.v1", "Greeter"));
    assert!(!claims("", 1).allows("greeter.v1.Greeter", "SayHello"));
}

#[test]
fn a_bucket_lets_a_burst_through_then_refuses_until_it_refills() {
    let limit = RateLimit::new(3, 2.0);
    let start = Instant::now();
    for _ in 0..3 {
        assert_eq!(limit.take("ada", start), Ok(()));
    }
    let wait = limit.take("ada", start).unwrap_err();
    assert_eq!(wait, Duration::from_millis(500));
    assert_eq!(limit.take("bo", start), Ok(()), "each client has a bucket of its own");
    assert_eq!(limit.take("ada", start + Duration::from_millis(500)), Ok(()));
    assert!(limit.take("ada", start + Duration::from_millis(500)).is_err());
}

#[test]
fn a_breaker_opens_after_failures_in_a_row_and_closes_after_a_good_trial() {
    let breaker = Breaker::new(2, Duration::from_millis(100));
    let t0 = Instant::now();
    let (first, _) = breaker.admit(t0);
    assert_eq!(first.unwrap().finish(Verdict::Failed), None);
    let (second, _) = breaker.admit(t0);
    let opened = second.unwrap().finish(Verdict::Failed);
    assert_eq!(opened, Some(Transition { from: State::Closed, to: State::Open }));
    let (refused, _) = breaker.admit(Instant::now());
    assert!(refused.is_err(), "open: refused at once");
    let later = Instant::now() + Duration::from_millis(100);
    let (trial, changed) = breaker.admit(later);
    assert_eq!(changed, Some(Transition { from: State::Open, to: State::HalfOpen }));
    let (second_trial, _) = breaker.admit(later);
    assert!(second_trial.is_err(), "half-open lets one trial through at a time");
    let closed = trial.unwrap().finish(Verdict::Healthy);
    assert_eq!(closed, Some(Transition { from: State::HalfOpen, to: State::Closed }));
}

#[test]
fn a_failed_trial_reopens_and_an_abandoned_one_frees_the_next() {
    let breaker = Breaker::new(1, Duration::ZERO);
    let (call, _) = breaker.admit(Instant::now());
    call.unwrap().finish(Verdict::Failed);
    let (trial, _) = breaker.admit(Instant::now());
    drop(trial.unwrap()); // the client went away mid-call
    assert_eq!(breaker.state(), State::HalfOpen);
    let (trial, _) = breaker.admit(Instant::now());
    let reopened =
        trial.expect("a new trial, since the last was abandoned").finish(Verdict::Failed);
    assert_eq!(reopened, Some(Transition { from: State::HalfOpen, to: State::Open }));
}

#[test]
fn a_success_in_between_resets_the_count_of_failures() {
    let breaker = Breaker::new(2, Duration::from_secs(60));
    for verdict in [Verdict::Failed, Verdict::Healthy, Verdict::Failed, Verdict::Unjudged] {
        breaker.admit(Instant::now()).0.unwrap().finish(verdict);
    }
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn depth_counts_nesting_outside_strings() {
    assert_eq!(edge::json_depth(b"1"), 0);
    assert_eq!(edge::json_depth(br#"{"a":[1,{"b":2}]}"#), 3);
    assert_eq!(edge::json_depth(br#"{"a":"[[[[\"[["}"#), 1);
    assert_eq!(edge::json_depth(&[b'['; 1000]), 1000);
}

#[test]
fn routes_are_protobuf_names_and_nothing_else() {
    assert_eq!(
        gateway::route("/greeter.v1.Greeter/SayHello").unwrap(),
        ("greeter.v1.Greeter", "SayHello")
    );
    for bad in ["/", "/greeter", "/a/b/c", "/a%2Fb/c", "/../x", "/a b/c", "/a/"] {
        assert!(gateway::route(bad).is_err(), "{bad} was accepted");
    }
}

#[test]
fn grpc_codes_map_to_the_standard_http_statuses() {
    use tonic::Code;
    let pairs = [
        (Code::InvalidArgument, 400),
        (Code::Unauthenticated, 401),
        (Code::PermissionDenied, 403),
        (Code::NotFound, 404),
        (Code::ResourceExhausted, 429),
        (Code::Unimplemented, 501),
        (Code::Unavailable, 503),
        (Code::DeadlineExceeded, 504),
        (Code::Cancelled, 499),
    ];
    for (code, http) in pairs {
        assert_eq!(convert::http_status(code).as_u16(), http, "{code:?}");
    }
}

/// A gateway with a Calculator node behind it, and a token for it.
async fn calculator_behind_a_gateway(settings: Settings) -> (Gateway, String, Registered) {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let node = backends::calculator("calc-1").await.unwrap();
    let ttl = Duration::from_secs(5);
    let node = Registered::new(&registry, node, CALCULATOR, "calc-1", ttl).await.unwrap();
    let token =
        Keys::new(b"k").sign(&Claims { sub: "t".into(), scope: CALCULATOR.into(), exp: u64::MAX });
    (Gateway::new(registry, b"k", settings), token, node)
}

async fn post(gateway: &Gateway, token: &str, path: &str, body: &str) -> (u16, String) {
    let request = http::Request::post(path)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = gateway.call(request).await;
    let status = response.status().as_u16();
    (
        status,
        String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec())
            .unwrap(),
    )
}

#[tokio::test]
async fn json_goes_in_as_protobuf_and_comes_back_as_json() {
    let (gateway, token, node) = calculator_behind_a_gateway(Settings::default()).await;
    let (status, body) =
        post(&gateway, &token, "/calc.v1.Calculator/Add", r#"{"terms":[2,"40"]}"#).await;
    assert_eq!((status, body.as_str()), (200, r#"{"sum":"42","node":"calc-1"}"#));
    let (status, body) =
        post(&gateway, &token, "/calc.v1.Calculator/Count", r#"{"up_to":2}"#).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "{\"n\":1,\"node\":\"calc-1\"}\n{\"n\":2,\"node\":\"calc-1\"}\n")
    );
    let (status, body) = post(&gateway, &token, "/calc.v1.Calculator/Add", r#"{"sum":1}"#).await;
    assert_eq!(status, 400, "{body}");
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_crashed_node_trips_the_breaker_and_later_calls_never_try_it() {
    let settings = Settings {
        breaker_threshold: 2,
        breaker_pause: Duration::from_secs(60),
        ..Settings::default()
    };
    let (gateway, token, node) = calculator_behind_a_gateway(settings).await;
    assert_eq!(post(&gateway, &token, "/calc.v1.Calculator/Add", "{}").await.0, 200);
    node.crash().await; // still listed until its TTL runs out
    for _ in 0..2 {
        let (status, body) = post(&gateway, &token, "/calc.v1.Calculator/Add", "{}").await;
        assert_eq!(status, 503, "{body}");
    }
    let (status, body) = post(&gateway, &token, "/calc.v1.Calculator/Add", "{}").await;
    assert_eq!(status, 503);
    assert!(body.contains("circuit breaker of calc.v1.Calculator is open"), "{body}");
    assert_eq!(gateway.refused.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_body_without_a_length_is_cut_at_the_bound_and_a_trickling_one_at_the_time() {
    let settings = Settings { call_within: Duration::from_millis(200), ..Settings::default() };
    let (gateway, token, node) = calculator_behind_a_gateway(settings).await;
    let request = |body: Body| {
        http::Request::post("/calc.v1.Calculator/Add")
            .header("authorization", format!("Bearer {token}"))
            .body(body)
            .unwrap()
    };
    // 65 chunks of 1 KiB, no Content-Length: refused at the 64 KiB-th byte.
    let chunks = futures::stream::iter(
        (0..65).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 1024]))),
    );
    let response = gateway.call(request(Body::from_stream(chunks))).await;
    assert_eq!(response.status(), 413);
    // A body that never ends: refused when the call's time is up.
    let endless = futures::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
    let response = gateway.call(request(Body::from_stream(endless))).await;
    assert_eq!(response.status(), 408);
    node.stop().await.unwrap();
}

/// A backend's reflection answers question by question, as reflection.proto says: a miss is
/// an `ErrorResponse` on a stream that stays open, and the question after it is answered
/// (tonic-reflection alone ends the whole stream at a miss). v1alpha, which grpcio's Python
/// client asks, lists the backend's service too.
#[tokio::test]
async fn a_backend_answers_a_reflection_miss_and_the_next_question() {
    use tonic_reflection::pb::{v1, v1alpha};
    let node = backends::calculator("calc-1").await.unwrap();

    let ask = |symbol: &str| v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::FileContainingSymbol(
            symbol.to_owned(),
        )),
    };
    let channel = tonic::transport::Channel::from_shared(node.url()).unwrap();
    let channel = channel.connect().await.unwrap();
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let questions = futures::stream::iter([ask("no.such.Service"), ask(CALCULATOR)]);
    let mut answers = client.server_reflection_info(questions).await.unwrap().into_inner();
    let miss = answers.message().await.unwrap().and_then(|a| a.message_response);
    assert!(
        matches!(miss, Some(v1::server_reflection_response::MessageResponse::ErrorResponse(_))),
        "{miss:?}"
    );
    let hit = answers.message().await.expect("the stream goes on after a miss");
    let hit = hit.and_then(|a| a.message_response);
    assert!(
        matches!(
            hit,
            Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "{hit:?}"
    );

    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let list = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut listed =
        alpha.server_reflection_info(futures::stream::iter([list])).await.unwrap().into_inner();
    let listed = listed.message().await.unwrap().and_then(|a| a.message_response);
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(listed)) =
        listed
    else {
        panic!("v1alpha listed nothing: {listed:?}");
    };
    let names: Vec<&str> = listed.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&CALCULATOR), "{names:?}");
    node.shutdown().await.unwrap();
}
