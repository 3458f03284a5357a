//! RED metrics (rate, errors, duration) per service and method, from one tower layer on
//! every server, through the `metrics` facade to Prometheus text on `/metrics`.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::routing::get;
use futures::future::BoxFuture;
use http::{Request, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::propagation::{failure, span_name};

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

/// The layer: counts every request of `service`, its failures, and times it.
#[derive(Clone)]
pub struct RedLayer(pub &'static str);

#[derive(Clone)]
pub struct Red<S> {
    inner: S,
    service: &'static str,
}

impl<S> tower::Layer<S> for RedLayer {
    type Service = Red<S>;
    fn layer(&self, inner: S) -> Red<S> {
        recorder(); // counting starts once the recorder is in place
        Red { inner, service: self.0 }
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
        let labels = [("service", self.service.to_owned()), ("method", span_name(&request))];
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
mod tests {
    use super::*;

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
        assert_eq!(
            parsed[&key("gateway", "GET /hello")],
            Counts { requests: 4, errors: 0, timed: 0 }
        );
        assert_eq!(parsed.len(), 2);
    }
}
