//! The HTTP side: a request becomes a CloudEvent, or a 400 that says why not.
//!
//! Two endpoints, the two ways events enter a system:
//! - `POST /user/login` takes the application's own JSON (`{"user": ..., "method": ...}`)
//!   and wraps it in a CloudEvent: the service decides id, source, type and time.
//! - `POST /events` takes a CloudEvent another system already made (JSON "structured
//!   mode"), checked against the spec's required attributes.
//!
//! Either way nothing is published unless the request was good, and the status says what
//! became of the event: 202 stored, 400 or 413 refused (do not send it again as it is),
//! 503 not stored (send it again later), 504 not confirmed (send it again with the same
//! id: the stream de-duplicates it).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::post;
use cloudevents::event::SpecVersion;
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use microkit::proto::events::UserLoggedIn;
use microkit_http::ApiError;

use crate::bus::{EventBus, MAX_EVENT_BYTES, PublishError};

/// The CloudEvents `type` of a login: reverse-DNS, as the spec suggests.
pub const LOGIN_TYPE: &str = "com.example.user.logged_in";
/// The CloudEvents `source`: which producer, in which context, made it.
pub const LOGIN_SOURCE: &str = "/user/login";

/// The routes, built by a function so the example and its tests can call them without a
/// socket (`tower::ServiceExt::oneshot`), and `serve` can put them on one.
pub fn router(bus: Arc<EventBus>) -> Router {
    Router::new()
        .route("/user/login", post(login))
        .route("/events", post(ingest))
        // No body is read past the bound: a bigger one is refused before it is buffered.
        .layer(DefaultBodyLimit::max(MAX_EVENT_BYTES))
        .with_state(bus)
}

/// The body, or the refusal: 413 naming the bound, rather than axum's own wording.
fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        status => ApiError::new(status, rejection.body_text()),
    })
}

fn too_large() -> ApiError {
    let reason = format!("the event is over the {MAX_EVENT_BYTES}-byte bound");
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, reason)
}

/// An accepted event: 202 and the event's id.
type Accepted = (StatusCode, String);

/// `POST /user/login`: the application's JSON in, a CloudEvent out.
async fn login(
    State(bus): State<Arc<EventBus>>,
    request: Result<Bytes, BytesRejection>,
) -> Result<Accepted, ApiError> {
    // The body is parsed here rather than by axum's `Json` extractor, so that the 400's
    // text is ours and names the problem.
    let login: UserLoggedIn = serde_json::from_slice(&body(request)?).map_err(|error| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {error}"))
    })?;
    if login.user.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "missing field `user`"));
    }
    let event = login_event(&login).map_err(|error| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("no event made: {error:#}"))
    })?;
    accept(&bus, event).await
}

/// Wraps a login in a CloudEvent with the spec 1.0 attributes.
pub fn login_event(login: &UserLoggedIn) -> anyhow::Result<Event> {
    Ok(EventBuilderV10::new()
        // Unique per source: consumers use (source, id) to spot a redelivered duplicate.
        .id(uuid::Uuid::new_v4().to_string())
        .source(LOGIN_SOURCE)
        .ty(LOGIN_TYPE)
        // When it happened, not when it is handled: a consumer that was down sees the
        // original time.
        .time(chrono::Utc::now())
        .data("application/json", serde_json::to_value(login)?)
        .build()?)
}

/// `POST /events`: a CloudEvent made elsewhere, checked before it goes any further.
async fn ingest(
    State(bus): State<Arc<EventBus>>,
    request: Result<Bytes, BytesRejection>,
) -> Result<Accepted, ApiError> {
    // The SDK's deserializer checks that specversion, id, source and type are there and
    // well-formed; `check` adds what it lets through. Anything else is refused here, at
    // the edge.
    let event: Event = serde_json::from_slice(&body(request)?).map_err(|error| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("not a CloudEvent: {error}"))
    })?;
    check(&event).map_err(|reason| ApiError::new(StatusCode::BAD_REQUEST, reason))?;
    if event.ty() != LOGIN_TYPE {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("type {:?} is not handled here", event.ty()),
        ));
    }
    accept(&bus, event).await
}

/// What CloudEvents 1.0 asks of an event that the SDK's parser does not check: this
/// endpoint speaks 1.0 only (the SDK also reads 0.3), `id` and `source` are non-empty, so
/// is `subject` when it is there (the spec: "if present, MUST be a non-empty string"), and
/// extension names are lower-case ASCII letters and digits.
pub fn check(event: &Event) -> Result<(), String> {
    if event.specversion() != SpecVersion::V10 {
        return Err(format!("specversion {} is not 1.0", event.specversion()));
    }
    if event.id().is_empty() {
        return Err("id must not be empty".to_owned());
    }
    if event.source().is_empty() {
        return Err("source must not be empty".to_owned());
    }
    if event.subject().is_some_and(str::is_empty) {
        return Err("subject must not be empty when present".to_owned());
    }
    for (name, _) in event.iter_extensions() {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
            return Err(format!("extension name {name:?} is not lower-case letters and digits"));
        }
    }
    Ok(())
}

async fn accept(bus: &EventBus, event: Event) -> Result<Accepted, ApiError> {
    bus.publish(&event).await.map_err(|error| not_accepted(&event, error))?;
    // 202: stored for delivery. Whoever consumes it does so later, elsewhere.
    Ok((StatusCode::ACCEPTED, event.id().to_owned()))
}

/// The answer to an event the bus did not take, or did not surely take. A 504 is not a
/// "no": the event went out and may be stored, so its reason names the event (a login's
/// id was made here, and the client has no other way to learn it) and says that sending
/// the same event again is safe.
pub fn not_accepted(event: &Event, error: PublishError) -> ApiError {
    let status = match &error {
        PublishError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        PublishError::Unconfirmed(_) => StatusCode::GATEWAY_TIMEOUT,
        PublishError::Unreachable | PublishError::NotStored(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let reason = format!("{:#}", anyhow::Error::from(error));
    let reason = match status {
        StatusCode::GATEWAY_TIMEOUT => {
            format!("event {} from {}: {reason}", event.id(), event.source())
        }
        _ => reason,
    };
    tracing::warn!(reason, "an event was not accepted");
    ApiError::new(status, reason)
}
