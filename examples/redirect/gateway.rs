//! The gateway: `micro api` with its redirect handling made explicit. It passes
//! `/<service>/...` to a node of that service, and when the answer asks for a redirect it
//! checks the target against the allow-list and sends the browser a real HTTP redirect.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::BytesMut;
use futures::StreamExt;
use http::{HeaderValue, Request, StatusCode, header};
use microkit_http::{ApiError, Forwarder};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use registry::Registry;

use crate::service::RedirectAnswer;
use redirect::AllowList;

/// A redirect answer is small: a JSON body bigger than this is not one, and is passed
/// through unchanged, without the gateway holding more than this much of it.
const ANSWER_LIMIT: usize = 16 * 1024;

#[derive(Clone)]
pub struct Gateway {
    pub registry: Arc<dyn Registry>,
    pub allow: Arc<AllowList>,
    pub forwarder: Forwarder,
}

pub fn router(gateway: Gateway) -> Router {
    Router::new().route("/{service}/{*rest}", any(handle)).with_state(gateway)
}

async fn handle(
    State(gateway): State<Gateway>,
    Path((service, _)): Path<(String, String)>,
    request: Request<Body>,
) -> Result<Response, ApiError> {
    let nodes = gateway
        .registry
        .nodes(&service)
        .await
        .map_err(|e| ApiError::bad_gateway(format!("registry: {e}")))?;
    let node = nodes
        .first()
        .ok_or_else(|| ApiError::unavailable(format!("no node for service {service:?}")))?;
    let path = path_for_node(request.uri());
    let response =
        gateway.forwarder.forward(&node.address, &path, request).await.map_err(|e| {
            ApiError::bad_gateway(format!("{service}: {}", microkit::error_chain(&e)))
        })?;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !is_json {
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let mut chunks = body.into_data_stream();
    let mut head = BytesMut::new();
    while head.len() <= ANSWER_LIMIT {
        let Some(chunk) = chunks.next().await else {
            // The whole answer is in hand: a redirect, or any other JSON passed on as it is.
            return match serde_json::from_slice::<RedirectAnswer>(&head) {
                Ok(answer) => to_http_redirect(&gateway.allow, &service, answer),
                Err(_) => Ok(Response::from_parts(parts, Body::from(head.freeze()))),
            };
        };
        let chunk = chunk.map_err(|e| ApiError::bad_gateway(format!("{service}: {e}")))?;
        head.extend_from_slice(&chunk);
    }
    // Too big for a redirect answer: pass it on, what was read first, then the rest.
    let head = futures::stream::once(async move { Ok(head.freeze()) });
    Ok(Response::from_parts(parts, Body::from_stream(head.chain(chunks))))
}

/// The path and query to ask the node for: the request's, as the client sent them (still
/// percent-encoded), with `/<service>` cut off the front.
pub fn path_for_node(uri: &http::Uri) -> String {
    let path = uri.path();
    let rest = path[1..].find('/').map_or("/", |slash| &path[slash + 1..]);
    match uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_owned(),
    }
}

/// The bytes a URI may not hold as they are (RFC 3986 allows only its unreserved and
/// reserved characters and `%`): controls, space, double quote, angle brackets, backslash,
/// caret, backtick, braces, the bar, and every byte of a non-ASCII character. A header of
/// raw UTF-8 is read differently by each client; its percent-encoded form is read the same.
const NOT_IN_A_URI: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// The service asked for a redirect: check it, then answer the browser with it.
fn to_http_redirect(
    allow: &AllowList,
    service: &str,
    answer: RedirectAnswer,
) -> Result<Response, ApiError> {
    let redirect = answer.redirect;
    let status = match StatusCode::from_u16(redirect.status) {
        Ok(
            status @ (StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT),
        ) => status,
        // The service's mistake, not the client's: a bad gateway answer.
        _ => {
            let reason = format!("{service} asked for a redirect with status {}", redirect.status);
            return Err(ApiError::bad_gateway(reason));
        }
    };
    allow.check(&redirect.location).map_err(|refusal| {
        tracing::info!(%service, location = %redirect.location.escape_debug(), %refusal, "redirect refused");
        ApiError::bad_request(format!("refused redirect: {refusal}"))
    })?;
    // A path of the service lives under the service's prefix at the gateway.
    let location = match redirect.location.starts_with('/') {
        true => format!("/{service}{}", redirect.location),
        false => redirect.location,
    };
    // Encoding adds escapes and moves no `/`, `?` or `#`: the URL keeps the structure the
    // allow-list checked, and an escape already there (`%20`) stays as it is.
    let location = utf8_percent_encode(&location, NOT_IN_A_URI).to_string();
    let location = HeaderValue::try_from(location)
        .map_err(|_| ApiError::bad_request("refused redirect: not a valid header value"))?;
    Ok((status, [(header::LOCATION, location)]).into_response())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use axum::Json;
    use axum::routing::get;
    use http::Method;
    use microkit_http::HttpServer;
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    use registry::{MemoryRegistry, Node};
    use tower::ServiceExt;

    use crate::service::tests::call;

    /// A gateway in front of `service` registered as `name`, to drive with `oneshot`.
    async fn gateway_for(name: &str, service: Router) -> (Router, HttpServer) {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let server = HttpServer::start(service).await.unwrap();
        let node = Node::new(name, "n-1", server.addr());
        registry.register(&node, Duration::from_secs(60)).await.unwrap();
        let allow = Arc::new(AllowList::new(&["docs.example.org"]));
        (router(Gateway { registry, allow, forwarder: Forwarder::new() }), server)
    }

    #[tokio::test]
    async fn the_gateway_turns_answers_into_redirects_with_the_status_kept() {
        let (gateway, _links) = gateway_for("links", crate::service::router()).await;
        let cases = [
            (Method::GET, "/links/go/intro", StatusCode::FOUND, "/links/pages/intro"),
            (
                Method::GET,
                "/links/go/guide",
                StatusCode::MOVED_PERMANENTLY,
                "/links/pages/guide-v2",
            ),
            (
                Method::GET,
                "/links/go/upstream",
                StatusCode::FOUND,
                "https://docs.example.org/start",
            ),
            (Method::POST, "/links/forms/old", StatusCode::TEMPORARY_REDIRECT, "/links/forms/new"),
            (
                Method::POST,
                "/links/forms/legacy",
                StatusCode::PERMANENT_REDIRECT,
                "/links/forms/new",
            ),
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
        for target in &crate::story::LOGIN_TARGETS[crate::story::FAIR..] {
            let path =
                format!("/links/login?next={}", utf8_percent_encode(target, NON_ALPHANUMERIC));
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
            assert_eq!(
                call(&gateway, Method::GET, path).await,
                (StatusCode::OK, None, seen.into())
            );
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
}
