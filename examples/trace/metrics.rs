//! RED metrics (rate, errors, duration) per service and method, from one tower layer on
//! every server, through the `metrics` facade to Prometheus text on `/metrics`.
//!
//! Every label value is a series the process keeps for ever, so a label comes only from a
//! set the server fixes: the route that matched and a standard HTTP method, or a gRPC
//! method the server implements. Whatever else a caller sends is counted as `other`.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::extract::MatchedPath;
use axum::routing::get;
use futures::future::BoxFuture;
use http::{Method, Request, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::propagation::failure;

/// Latency buckets in seconds: a histogram keeps counts per bucket, not every duration.
const BUCKETS: [f64; 8] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0];

/// This process's recorder, installed once: the facade has one global recorder.
pub fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new().set_buckets(&BUCKETS).expect("buckets are set");
        builder.install_recorder().expect("the only recorder of this process")
    })
}

/// `/metrics`, in Prometheus's text format, for a scraper (or the story) to read.
pub fn route() -> Router {
    Router::new().route("/metrics", get(|| async { recorder().render() }))
}

/// The label of whatever is outside the closed set: one series for all of it.
pub const OTHER: &str = "other";

/// The methods HTTP defines (RFC 9110, and PATCH). HTTP lets a client send any token as
/// a method, and hyper passes it on: each made-up one would start a dozen new series.
const STANDARD_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
    Method::OPTIONS,
    Method::TRACE,
    Method::PATCH,
];

/// The layer: counts every request of `service`, its failures, and times it.
#[derive(Clone, Copy)]
pub struct RedLayer {
    service: &'static str,
    methods: Methods,
}

/// Where a request's `method` label may come from.
#[derive(Clone, Copy)]
enum Methods {
    /// An axum router: a standard method and the route that matched (`GET /hello`).
    Http,
    /// A gRPC server: the full names of the methods it implements.
    Grpc(&'static [&'static str]),
}

impl RedLayer {
    /// For an axum router. Put it on with `Router::layer`, so that it runs after routing
    /// and sees the route that matched (a request no route matched is `other`).
    pub fn http(service: &'static str) -> Self {
        RedLayer { service, methods: Methods::Http }
    }

    /// For a gRPC server whose methods are `methods` (`greeter.v1.Greeter/SayHello`).
    pub fn grpc(service: &'static str, methods: &'static [&'static str]) -> Self {
        RedLayer { service, methods: Methods::Grpc(methods) }
    }

    /// The `method` label of `request`: a value from the closed set, or [`OTHER`].
    pub fn label<B>(&self, request: &Request<B>) -> String {
        match self.methods {
            Methods::Grpc(methods) => {
                let path = request.uri().path().trim_start_matches('/');
                methods.iter().find(|&&m| m == path).unwrap_or(&OTHER).to_string()
            }
            Methods::Http => {
                let standard = STANDARD_METHODS.contains(request.method());
                let method = if standard { request.method().as_str() } else { OTHER };
                let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
                format!("{method} {}", route.unwrap_or(OTHER))
            }
        }
    }
}

#[derive(Clone)]
pub struct Red<S> {
    inner: S,
    layer: RedLayer,
}

impl<S> tower::Layer<S> for RedLayer {
    type Service = Red<S>;
    fn layer(&self, inner: S) -> Red<S> {
        recorder(); // counting starts once the recorder is in place
        Red { inner, layer: *self }
    }
}

impl<S, B, R> tower::Service<Request<B>> for Red<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let labels =
            [("service", self.layer.service.to_owned()), ("method", self.layer.label(&request))];
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            let failed = result.as_ref().map_or(true, |response| failure(response).is_some());
            metrics::counter!("requests_total", &labels).increment(1);
            if failed {
                metrics::counter!("request_errors_total", &labels).increment(1);
            }
            metrics::histogram!("request_duration_seconds", &labels)
                .record(started.elapsed().as_secs_f64());
            result
        })
    }
}

/// What a scrape says per (service, method): requests, errors, and how many durations the
/// histogram holds (its `_count`: one per request, whatever each took).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    pub timed: u64,
}

/// Reads Prometheus text: `name{service="..",method=".."} value` lines; the rest is skipped.
pub fn parse(scrape: &str) -> BTreeMap<(String, String), Counts> {
    let mut found: BTreeMap<(String, String), Counts> = BTreeMap::new();
    for line in scrape.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else { continue };
        let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
        let label = |key: &str| {
            labels.split(',').find_map(|pair| {
                pair.strip_prefix(key)?.strip_prefix("=\"")?.strip_suffix('"').map(str::to_owned)
            })
        };
        let (Some(service), Some(method), Ok(value)) =
            (label("service"), label("method"), value.trim().parse::<u64>())
        else {
            continue;
        };
        let entry = found.entry((service, method)).or_default();
        match name {
            "requests_total" => entry.requests = value,
            "request_errors_total" => entry.errors = value,
            "request_duration_seconds_count" => entry.timed = value,
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests;
