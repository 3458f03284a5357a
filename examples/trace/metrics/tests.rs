//! Tests of `metrics.rs`.

use super::*;
use axum::body::Body;
use tower::{Layer, ServiceExt};

/// The `method` labels of `service`'s `requests_total` series, and their count.
fn series_of(service: &str) -> BTreeMap<String, u64> {
    let scrape = recorder().render();
    let found = parse(&scrape).into_iter().filter(|((s, _), _)| s == service);
    found.map(|((_, method), counts)| (method, counts.requests)).collect()
}

#[tokio::test]
async fn made_up_http_methods_and_paths_add_no_series() {
    let router = Router::new()
        .route("/hello", get(|| async { "hi" }))
        .layer(RedLayer::http("red-http-test"));
    let mut requests = Vec::new();
    for n in 0..300 {
        let (method, path) = match n % 3 {
            0 => (format!("MADE{n}"), format!("/made/{n}")),
            1 => ("GET".to_owned(), format!("/made/{n}")),
            _ => (format!("MADE{n}"), "/hello".to_owned()),
        };
        requests.push((method, path));
    }
    requests.push(("GET".to_owned(), "/hello".to_owned()));
    for (method, path) in requests {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let request = Request::builder().method(method).uri(path).body(Body::empty());
        router.clone().oneshot(request.unwrap()).await.unwrap();
    }
    let series = series_of("red-http-test");
    let expected =
        [("GET /hello", 1), ("GET other", 100), ("other /hello", 100), ("other other", 100)];
    let expected: BTreeMap<String, u64> =
        expected.into_iter().map(|(m, n)| (m.to_owned(), n)).collect();
    assert_eq!(series, expected, "four series, whatever the callers made up");
}

#[tokio::test]
async fn grpc_methods_the_server_does_not_implement_are_one_series() {
    const METHODS: &[&str] = &["greeter.v1.Greeter/SayHello"];
    // A server that answers every path as tonic answers an unknown method.
    let unimplemented = tower::service_fn(|_: Request<Body>| async {
        let response = Response::builder().header("grpc-status", "12").body(Body::empty());
        Ok::<_, std::convert::Infallible>(response.unwrap())
    });
    let red = RedLayer::grpc("red-grpc-test", METHODS).layer(unimplemented);
    let paths = (0..200).map(|n| format!("/made.up.Service{n}/Method{n}"));
    for path in paths.chain(["/greeter.v1.Greeter/SayHello".to_owned()]) {
        let request = Request::post(path).header("content-type", "application/grpc");
        red.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    }
    let series = series_of("red-grpc-test");
    let expected = [("greeter.v1.Greeter/SayHello".to_owned(), 1), ("other".to_owned(), 200)];
    assert_eq!(series, BTreeMap::from(expected));
}

#[test]
fn a_scrape_is_read_per_service_and_method() {
    let scrape = "# TYPE requests_total counter\n\
        requests_total{service=\"greeter\",method=\"greeter.v1.Greeter/SayHello\"} 3\n\
        request_errors_total{service=\"greeter\",method=\"greeter.v1.Greeter/SayHello\"} 1\n\
        request_duration_seconds_bucket{service=\"greeter\",method=\"greeter.v1.Greeter/SayHello\",le=\"0.001\"} 2\n\
        request_duration_seconds_count{service=\"greeter\",method=\"greeter.v1.Greeter/SayHello\"} 3\n\
        requests_total{service=\"gateway\",method=\"GET /hello\"} 4\n";
    let parsed = parse(scrape);
    let key = |s: &str, m: &str| (s.to_owned(), m.to_owned());
    assert_eq!(
        parsed[&key("greeter", "greeter.v1.Greeter/SayHello")],
        Counts { requests: 3, errors: 1, timed: 3 }
    );
    assert_eq!(parsed[&key("gateway", "GET /hello")], Counts { requests: 4, errors: 0, timed: 0 });
    assert_eq!(parsed.len(), 2);
}
