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
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("registry: {e}")))?;
    let node = nodes.first().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("no node for service {service:?}"))
    })?;
    let path = path_for_node(request.uri());
    let response = gateway
        .forwarder
        .forward(&node.address, &path, request)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("{service}: {e:#}")))?;
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
        let chunk =
            chunk.map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("{service}: {e}")))?;
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
            return Err(ApiError::new(StatusCode::BAD_GATEWAY, reason));
        }
    };
    allow.check(&redirect.location).map_err(|refusal| {
        tracing::info!(%service, location = %redirect.location.escape_debug(), %refusal, "redirect refused");
        ApiError::new(StatusCode::BAD_REQUEST, format!("refused redirect: {refusal}"))
    })?;
    // A path of the service lives under the service's prefix at the gateway.
    let location = match redirect.location.starts_with('/') {
        true => format!("/{service}{}", redirect.location),
        false => redirect.location,
    };
    // Encoding adds escapes and moves no `/`, `?` or `#`: the URL keeps the structure the
    // allow-list checked, and an escape already there (`%20`) stays as it is.
    let location = utf8_percent_encode(&location, NOT_IN_A_URI).to_string();
    let location = HeaderValue::try_from(location).map_err(|_| {
        ApiError::new(StatusCode::BAD_REQUEST, "refused redirect: not a valid header value")
    })?;
    Ok((status, [(header::LOCATION, location)]).into_response())
}

#[cfg(test)]
mod tests;
