//! The service behind the gateway: `links`. It decides *that* a request is redirected and
//! where to, and says so in its answer, as go-micro's API handlers did by returning a
//! status and a `Location` header for `micro api` to send. It never talks to a browser.

use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use serde::{Deserialize, Serialize};

/// The answer that asks the gateway for a redirect.
#[derive(Debug, Serialize, Deserialize)]
pub struct RedirectAnswer {
    pub redirect: Redirect,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Redirect {
    pub status: u16,
    /// A path of this service (the gateway adds the service's prefix), or an absolute URL.
    pub location: String,
}

fn redirect(status: StatusCode, location: &str) -> Json<RedirectAnswer> {
    Json(RedirectAnswer {
        redirect: Redirect { status: status.as_u16(), location: location.into() },
    })
}

pub fn router() -> Router {
    Router::new()
        .route("/go/{name}", get(short_link))
        .route("/login", get(login))
        .route(
            "/forms/old",
            post(|| async { redirect(StatusCode::TEMPORARY_REDIRECT, "/forms/new") }),
        )
        .route(
            "/forms/legacy",
            post(|| async { redirect(StatusCode::PERMANENT_REDIRECT, "/forms/new") }),
        )
        .route("/forms/submit", post(|| async { redirect(StatusCode::SEE_OTHER, "/pages/thanks") }))
        .route("/forms/new", post(|body: String| async move { format!("form received: {body}") }))
        .route(
            "/pages/{page}",
            get(|Path(page): Path<String>| async move { format!("page {page}") }),
        )
}

/// Short links: each name is a redirect the service chose.
async fn short_link(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "intro" => redirect(StatusCode::FOUND, "/pages/intro").into_response(),
        "guide" => redirect(StatusCode::MOVED_PERMANENTLY, "/pages/guide-v2").into_response(),
        "upstream" => redirect(StatusCode::FOUND, "https://docs.example.org/start").into_response(),
        _ => (StatusCode::NOT_FOUND, format!("no short link {name:?}")).into_response(),
    }
}

#[derive(Deserialize)]
struct Login {
    next: Option<String>,
}

/// After a login, back to where the visitor came from: `next` comes from the request, so
/// anyone can write a link that sets it. This is where open redirects come from; the
/// service passes it on as is and relies on the gateway's allow-list.
async fn login(Query(login): Query<Login>) -> Json<RedirectAnswer> {
    redirect(StatusCode::FOUND, login.next.as_deref().unwrap_or("/pages/home"))
}

#[cfg(test)]
pub mod tests {
    use axum::body::Body;
    use http::{Method, header};
    use microkit_http::body_text;
    use tower::ServiceExt;

    use super::*;

    /// Drives `router` with one request (body `a=1`); answers status, `Location`, body.
    pub async fn call(
        router: &Router,
        method: Method,
        path: &str,
    ) -> (StatusCode, Option<String>, String) {
        let request =
            http::Request::builder().method(method).uri(path).body(Body::from("a=1")).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let location =
            response.headers().get(header::LOCATION).map(|l| l.to_str().unwrap().to_owned());
        (status, location, body_text(response.into_body(), 1 << 16).await)
    }

    #[tokio::test]
    async fn the_service_answers_redirects_as_json_and_pages_as_text() {
        let links = router();
        let (status, _, body) = call(&links, Method::GET, "/go/intro").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, r#"{"redirect":{"status":302,"location":"/pages/intro"}}"#)
        );
        assert_eq!(call(&links, Method::GET, "/go/nope").await.0, StatusCode::NOT_FOUND);
        let (_, _, body) = call(&links, Method::GET, "/login?next=%2F%2Fx").await;
        assert!(body.contains(r#""location":"//x""#), "the service passes next on as is: {body}");
        assert!(call(&links, Method::POST, "/forms/old").await.2.contains("307"));
        assert!(call(&links, Method::POST, "/forms/legacy").await.2.contains("308"));
        assert!(call(&links, Method::POST, "/forms/submit").await.2.contains("303"));
        assert_eq!(call(&links, Method::POST, "/forms/new").await.2, "form received: a=1");
        assert_eq!(call(&links, Method::GET, "/pages/x").await.2, "page x");
    }
}
