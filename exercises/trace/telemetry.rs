//! Where spans go: one tracer provider per service (as each would have in its own process),
//! a [`Collected`] in-memory exporter the story prints its tree from, and OTLP over gRPC to
//! a collector when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Also the tree itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use tokio::sync::watch;

use crate::propagation::sampler;

pub struct Telemetry {
    /// The spans this process finished, when it keeps them for a tree.
    collected: Option<Collected>,
    otlp: bool,
    ratio: f64,
    providers: Mutex<Vec<SdkTracerProvider>>,
}

impl Telemetry {
    pub fn new(keep_spans: bool, ratio: f64) -> Self {
        let otlp = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok_and(|url| !url.is_empty());
        let collected = keep_spans.then(Collected::default);
        Telemetry { collected, otlp, ratio, providers: Mutex::default() }
    }

    /// The tracer of `service`, from a provider of its own named after it.
    pub fn tracer(&self, service: &'static str) -> anyhow::Result<SdkTracer> {
        let resource = Resource::builder_empty().with_service_name(service).build();
        let mut builder =
            SdkTracerProvider::builder().with_resource(resource).with_sampler(sampler(self.ratio));
        if let Some(collected) = &self.collected {
            // Exported as each span ends: the story waits for the spans, never for a batch.
            builder = builder.with_simple_exporter(collected.clone());
        }
        if self.otlp {
            // The endpoint comes from the environment; spans leave in batches, off the
            // request path, on a thread of the SDK's own.
            let otlp = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
            builder = builder.with_batch_exporter(otlp);
        }
        let provider = builder.build();
        let tracer = provider.tracer("micro-trace");
        self.providers.lock().unwrap().push(provider);
        Ok(tracer)
    }

    pub fn collected(&self) -> Option<&Collected> {
        self.collected.as_ref()
    }

    /// Flushes what is still batched for OTLP and stops every provider.
    pub async fn shutdown(&self) {
        let providers = std::mem::take(&mut *self.providers.lock().unwrap());
        // Shutting down blocks until the batch is sent: off the async worker threads.
        let _ = tokio::task::spawn_blocking(move || {
            for provider in providers {
                if let Err(error) = provider.shutdown() {
                    tracing::warn!(%error, "a tracer provider did not shut down cleanly");
                }
            }
        })
        .await;
    }
}

/// An in-memory span exporter: every finished span, with the service that made it.
#[derive(Clone, Debug, Default)]
pub struct Collected {
    service: String,
    spans: Arc<Mutex<Vec<Finished>>>,
    count: Arc<watch::Sender<usize>>,
}

#[derive(Clone, Debug)]
pub struct Finished {
    pub service: String,
    pub span: SpanData,
}

impl SpanExporter for Collected {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut spans = self.spans.lock().unwrap();
        spans
            .extend(batch.into_iter().map(|span| Finished { service: self.service.clone(), span }));
        self.count.send_replace(spans.len());
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        let name = resource.get(&opentelemetry::Key::from_static_str("service.name"));
        self.service = name.map(|v| v.to_string()).unwrap_or_default();
    }
}

impl Collected {
    /// Waits for `count` finished spans (the last hop ends after the reply is back), takes them.
    pub async fn take(&self, count: usize, limit: Duration) -> anyhow::Result<Vec<Finished>> {
        let mut seen = self.count.subscribe();
        // (The `Ref` the wait returns is dropped at once: it holds the value's lock.)
        let waited =
            tokio::time::timeout(limit, async { seen.wait_for(|n| *n >= count).await.is_ok() })
                .await;
        let mut spans = std::mem::take(&mut *self.spans.lock().unwrap());
        self.count.send_replace(0);
        match waited {
            Ok(true) if spans.len() == count => {}
            _ => anyhow::bail!("expected {count} spans within {limit:?}, have {}", spans.len()),
        }
        spans.sort_by_key(|f| f.span.start_time);
        Ok(spans)
    }
}

/// A span and the spans it caused, as the tree prints them.
#[derive(Debug, PartialEq, Eq)]
pub struct Tree {
    pub service: String,
    pub kind: &'static str,
    pub name: String,
    /// Whether its parent came from outside (a caller's `traceparent`), not from a span here.
    pub remote_parent: bool,
    pub trace_id: TraceId,
    pub children: Vec<Tree>,
}

/// The trees of `spans` (sorted by start): a span whose parent is not among them is a root.
pub fn trees(spans: &[Finished]) -> Vec<Tree> {
    let known = |id: SpanId| spans.iter().any(|f| f.span.span_context.span_id() == id);
    let roots = spans.iter().filter(|f| !known(f.span.parent_span_id));
    roots.map(|root| grow(root, spans)).collect()
}

fn grow(finished: &Finished, spans: &[Finished]) -> Tree {
    let span = &finished.span;
    let id = span.span_context.span_id();
    let children = spans.iter().filter(|f| f.span.parent_span_id == id);
    Tree {
        service: finished.service.clone(),
        kind: kind(&span.span_kind),
        name: span.name.to_string(),
        remote_parent: span.parent_span_is_remote && span.parent_span_id != SpanId::INVALID,
        trace_id: span.span_context.trace_id(),
        children: children.map(|child| grow(child, spans)).collect(),
    }
}

fn kind(kind: &SpanKind) -> &'static str {
    match kind {
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    }
}

impl Tree {
    /// `service: kind name`, one line per span, drawn under its parent.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![self.label()];
        self.draw_children("", &mut lines);
        lines
    }

    fn label(&self) -> String {
        format!("{}: {} {}", self.service, self.kind, self.name)
    }

    fn draw_children(&self, indent: &str, lines: &mut Vec<String>) {
        for (i, child) in self.children.iter().enumerate() {
            let last = i + 1 == self.children.len();
            lines.push(format!("{indent}{}{}", if last { "└─ " } else { "├─ " }, child.label()));
            child.draw_children(&format!("{indent}{}", if last { "   " } else { "│  " }), lines);
        }
    }

    pub fn len(&self) -> usize {
        1 + self.children.iter().map(Tree::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer};
    use opentelemetry::{Context, KeyValue};

    use super::*;

    /// Spans made the way the layers make them: a parent's context handed to its child.
    #[tokio::test]
    async fn spans_become_a_tree_by_their_parents_and_a_missing_parent_makes_a_root() {
        let telemetry = Telemetry::new(true, 1.0);
        let (gateway, greeter) =
            (telemetry.tracer("gateway").unwrap(), telemetry.tracer("greeter").unwrap());
        let span = |tracer: &SdkTracer, name: &'static str, kind, parent: &Context| {
            parent.with_span(
                tracer.span_builder(name).with_kind(kind).start_with_context(tracer, parent),
            )
        };
        let root = span(&gateway, "GET /hello", SpanKind::Server, &Context::new());
        let call = span(&gateway, "call", SpanKind::Client, &root);
        let served = span(&greeter, "call", SpanKind::Server, &call);
        let orphan = span(&greeter, "call", SpanKind::Server, &Context::new()); // no context came
        for cx in [&served, &orphan, &call, &root] {
            cx.span().set_attribute(KeyValue::new("k", 1));
            cx.span().end();
        }
        let spans = telemetry.collected().unwrap().take(4, Duration::from_secs(1)).await.unwrap();
        let trees = trees(&spans);
        assert_eq!(trees.len(), 2, "the orphan is a root of its own");
        assert_ne!(trees[0].trace_id, trees[1].trace_id);
        assert_eq!(
            trees[0].lines(),
            ["gateway: server GET /hello", "└─ gateway: client call", "   └─ greeter: server call",]
        );
        assert_eq!(trees[1].lines(), ["greeter: server call"]);
        assert_eq!(trees[0].len(), 3);
    }

    #[test]
    fn head_sampling_follows_the_callers_decision() {
        let provider = SdkTracerProvider::builder().with_sampler(sampler(0.0)).build();
        let tracer = provider.tracer("test");
        let new_trace = tracer.start("new");
        assert!(!new_trace.span_context().is_sampled(), "ratio 0 keeps no new trace");
        let sampled_caller = opentelemetry::trace::SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            opentelemetry::trace::TraceFlags::SAMPLED,
            true,
            Default::default(),
        );
        let parent = Context::new().with_remote_span_context(sampled_caller);
        let continued = tracer.start_with_context("continued", &parent);
        assert!(continued.span_context().is_sampled(), "a sampled caller's trace is kept");
    }
}
