//! The gateway: `micro api` with its redirect handling made explicit. It passes
//! `/<service>/...` to a node of that service, and when the answer asks for a redirect it
//! checks the target against the allow-list and sends the browser a real HTTP redirect.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http::{HeaderValue, Request, StatusCode, header};
use microkit::http::Forwarder;
use microkit::registry::Registry;

use crate::policy::AllowList;
use crate::service::RedirectAnswer;

/// A redirect answer is small; a bigger JSON body is passed through unread.
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
    Path((service, rest)): Path<(String, String)>,
    request: Request<Body>,
) -> Response {
    let nodes = match gateway.registry.nodes(&service).await {
        Ok(nodes) => nodes,
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("registry: {e}")).into_response(),
    };
    let Some(node) = nodes.first() else {
        let message = format!("no node for service {service:?}");
        return (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
    };
    let mut path = format!("/{rest}");
    if let Some(query) = request.uri().query() {
        path = format!("{path}?{query}");
    }
    let response = match gateway.forwarder.forward(&node.address, &path, request).await {
        Ok(response) => response,
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("{service}: {e}")).into_response(),
    };
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, ANSWER_LIMIT).await else {
        return (StatusCode::BAD_GATEWAY, format!("{service}: unreadable answer")).into_response();
    };
    match serde_json::from_slice::<RedirectAnswer>(&bytes) {
        Ok(answer) => to_http_redirect(&gateway.allow, &service, answer),
        // Any other JSON is an ordinary answer: passed on unchanged.
        Err(_) => Response::from_parts(parts, Body::from(bytes)),
    }
}

/// The service asked for a redirect: check it, then answer the browser with it.
fn to_http_redirect(allow: &AllowList, service: &str, answer: RedirectAnswer) -> Response {
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
            let message = format!("{service} asked for a redirect with status {}", redirect.status);
            return (StatusCode::BAD_GATEWAY, message).into_response();
        }
    };
    if let Err(refusal) = allow.check(&redirect.location) {
        tracing::info!(%service, location = %redirect.location.escape_debug(), %refusal, "redirect refused");
        return (StatusCode::BAD_REQUEST, format!("refused redirect: {refusal}")).into_response();
    }
    // A path of the service lives under the service's prefix at the gateway.
    let location = match redirect.location.starts_with('/') {
        true => format!("/{service}{}", redirect.location),
        false => redirect.location,
    };
    let Ok(location) = HeaderValue::try_from(location) else {
        return (StatusCode::BAD_REQUEST, "refused redirect: not a valid header value")
            .into_response();
    };
    (status, [(header::LOCATION, location)]).into_response()
}
