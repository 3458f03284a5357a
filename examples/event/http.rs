//! The HTTP side: a request becomes a CloudEvent, or a 400 that says why not.
//!
//! Two endpoints, the two ways events enter a system:
//! - `POST /user/login` takes the application's own JSON (`{"user": ..., "method": ...}`)
//!   and wraps it in a CloudEvent: the service decides id, source, type and time.
//! - `POST /events` takes a CloudEvent another system already made (JSON "structured
//!   mode"), checked against the spec's required attributes.
//!
//! Either way nothing is published unless the request was good.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use microkit::http::ApiError;
use microkit::proto::events::UserLoggedIn;

use crate::bus::EventBus;

/// The CloudEvents `type` of a login: reverse-DNS, as the spec suggests.
pub const LOGIN_TYPE: &str = "com.example.user.logged_in";
/// The CloudEvents `source`: which producer, in which context, made it.
pub const LOGIN_SOURCE: &str = "/user/login";

/// The routes, built by a function so the example and its tests can call them without a
/// socket (`tower::ServiceExt::oneshot`), and `serve` can put them on one.
pub fn router(bus: Arc<EventBus>) -> Router {
    Router::new().route("/user/login", post(login)).route("/events", post(ingest)).with_state(bus)
}

/// An accepted event: 202 and the event's id.
type Accepted = (StatusCode, String);

/// `POST /user/login`: the application's JSON in, a CloudEvent out.
async fn login(State(bus): State<Arc<EventBus>>, body: Bytes) -> Result<Accepted, ApiError> {
    // The body is parsed here rather than by axum's `Json` extractor, so that the 400's
    // text is ours and names the problem.
    let login: UserLoggedIn = serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_request(format!("malformed JSON: {error}")))?;
    if login.user.is_empty() {
        return Err(ApiError::bad_request("missing field `user`"));
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
async fn ingest(State(bus): State<Arc<EventBus>>, body: Bytes) -> Result<Accepted, ApiError> {
    // The SDK's deserializer enforces the spec: specversion, id, source and type must be
    // there (and be well-formed); anything else is refused here, at the edge.
    let event: Event = serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_request(format!("not a CloudEvent: {error}")))?;
    if event.ty() != LOGIN_TYPE {
        return Err(ApiError::bad_request(format!("type {:?} is not handled here", event.ty())));
    }
    accept(&bus, event).await
}

async fn accept(bus: &EventBus, event: Event) -> Result<Accepted, ApiError> {
    bus.publish(&event).await.map_err(|error| {
        tracing::error!(error = format!("{error:#}"), "publishing an event failed");
        ApiError::unavailable(format!("could not publish: {error:#}"))
    })?;
    // 202: taken for delivery. Whoever consumes it does so later, elsewhere.
    Ok((StatusCode::ACCEPTED, event.id().to_owned()))
}
