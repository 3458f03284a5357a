//! Tests of `gateway.rs`.

use microkit::server::RunningServer;
use std::time::Duration;

use super::*;
use axum::Json;
use axum::routing::get;
use http::Method;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use registry::{MemoryRegistry, Node};
use tower::ServiceExt;

use crate::service::tests::call;

/// A gateway in front of `service` registered as `name`, to drive with `oneshot`.
async fn gateway_for(name: &str, service: Router) -> (Router, RunningServer) {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let server = microkit_http::start(service).await.unwrap();
    let node = Node::new(name, "n-1", server.addr());
    registry.register(&node, Duration::from_secs(60)).await.unwrap();
    let allow = Arc::new(AllowList::new(&["docs.example.org"]));
    (router(Gateway { registry, allow, forwarder: Forwarder::default() }), server)
}

#[tokio::test]
async fn the_gateway_turns_answers_into_redirects_with_the_status_kept() {
    let (gateway, _links) = gateway_for("links", crate::service::router()).await;
    let cases = [
        (Method::GET, "/links/go/intro", StatusCode::FOUND, "/links/pages/intro"),
        (Method::GET, "/links/go/guide", StatusCode::MOVED_PERMANENTLY, "/links/pages/guide-v2"),
        (Method::GET, "/links/go/upstream", StatusCode::FOUND, "https://docs.example.org/start"),
        (Method::POST, "/links/forms/old", StatusCode::TEMPORARY_REDIRECT, "/links/forms/new"),
        (Method::POST, "/links/forms/legacy", StatusCode::PERMANENT_REDIRECT, "/links/forms/new"),
        (Method::POST, "/links/forms/submit", StatusCode::SEE_OTHER, "/links/pages/thanks"),
    ];
    for (method, path, status, location) in cases {
        let answer = call(&gateway, method, path).await;
        assert_eq!((answer.0, answer.1.as_deref()), (status, Some(location)), "{path}");
    }
    // Answers that are not redirects pass through unchanged.
    assert_eq!(call(&gateway, Method::GET, "/links/pages/intro").await.2, "page intro");
    assert_eq!(call(&gateway, Method::GET, "/links/go/nope").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_open_redirect_attempt_is_refused_with_400_and_no_location() {
    let (gateway, _links) = gateway_for("links", crate::service::router()).await;
    for target in &crate::story::LOGIN_TARGETS[crate::tests::FAIR..] {
        let path = format!("/links/login?next={}", utf8_percent_encode(target, NON_ALPHANUMERIC));
        let (status, location, body) = call(&gateway, Method::GET, &path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{target:?}");
        assert_eq!(location, None, "{target:?}");
        assert!(body.starts_with("refused redirect: "), "{body}");
    }
}

#[tokio::test]
async fn unknown_services_and_bad_redirect_answers_are_the_gateways_errors() {
    let odd = Router::new()
        .route(
            "/bad-status",
            get(|| async {
                Json(serde_json::json!({"redirect": {"status": 200, "location": "/x"}}))
            }),
        )
        .route("/plain-json", get(|| async { Json(serde_json::json!({"message": "hi"})) }));
    let (gateway, _odd) = gateway_for("odd", odd).await;
    let (status, _, body) = call(&gateway, Method::GET, "/odd/bad-status").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_GATEWAY, "odd asked for a redirect with status 200")
    );
    assert_eq!(call(&gateway, Method::GET, "/odd/plain-json").await.2, r#"{"message":"hi"}"#);
    let (status, _, body) = call(&gateway, Method::GET, "/missing/x").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no node for service \"missing\"")
    );
}
#[tokio::test]
async fn a_json_answer_over_the_limit_passes_through_whole() {
    // An ordinary JSON document, four times the size a redirect answer may have.
    let big = serde_json::json!({ "items": vec!["x".repeat(100); 4 * ANSWER_LIMIT / 100] });
    let big = big.to_string();
    let sent = big.clone();
    let node = Router::new().route(
        "/big",
        get(move || async move { ([(header::CONTENT_TYPE, "application/json")], sent) }),
    );
    let (gateway, _node) = gateway_for("docs", node).await;
    let request = Request::get("/docs/big").body(Body::empty()).unwrap();
    let response = gateway.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = &response.headers()[header::CONTENT_TYPE];
    assert_eq!(content_type, "application/json");
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    assert!(body == big.as_bytes(), "{} bytes came back of {}", body.len(), big.len());
}

#[tokio::test]
async fn the_node_gets_the_path_as_the_client_sent_it() {
    let echo = Router::new().fallback(|uri: http::Uri| async move { uri.to_string() });
    let (gateway, _echo) = gateway_for("echo", echo).await;
    for (path, seen) in [
        ("/echo/a%20b", "/a%20b"),
        ("/echo/a%3Fb?x=%26", "/a%3Fb?x=%26"),
        ("/echo/a%23b/c", "/a%23b/c"),
        ("/echo/a%2Fb", "/a%2Fb"),
    ] {
        assert_eq!(call(&gateway, Method::GET, path).await, (StatusCode::OK, None, seen.into()));
    }
}

#[tokio::test]
async fn a_location_is_ascii_with_every_other_character_percent_encoded() {
    let (gateway, _links) = gateway_for("links", crate::service::router()).await;
    for (next, location) in [
        ("/é", "/links/%C3%A9"),
        ("/日本", "/links/%E6%97%A5%E6%9C%AC"),
        ("/a b?q=\"x\"#top", "/links/a%20b?q=%22x%22#top"),
        ("/already%20encoded", "/links/already%20encoded"),
        (
            "https://docs.example.org/日本?q=é",
            "https://docs.example.org/%E6%97%A5%E6%9C%AC?q=%C3%A9",
        ),
    ] {
        let path = format!("/links/login?next={}", utf8_percent_encode(next, NON_ALPHANUMERIC));
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = gateway.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::FOUND, "{next}");
        let sent = response.headers()[header::LOCATION].as_bytes();
        assert_eq!(String::from_utf8_lossy(sent), location, "{next}");
    }
}

#[tokio::test]
async fn a_redirect_that_climbs_out_of_the_services_prefix_is_refused() {
    let (gateway, _links) = gateway_for("links", crate::service::router()).await;
    for next in ["/../../etc", "/pages/../../etc", "/%2E%2E/etc"] {
        let path = format!("/links/login?next={}", utf8_percent_encode(next, NON_ALPHANUMERIC));
        let (status, location, body) = call(&gateway, Method::GET, &path).await;
        assert_eq!((status, location), (StatusCode::BAD_REQUEST, None), "{next}");
        assert!(body.contains("`..` in the path"), "{next}: {body}");
    }
}
