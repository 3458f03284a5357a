//! # trace: one request followed across HTTP, gRPC and the broker, with its metrics
//!
//! A request crosses a gateway (HTTP), a greeter and a directory (gRPC) and a subscriber
//! (the broker). Each service records a span of its part; the W3C `traceparent` header in
//! HTTP headers, gRPC metadata and message headers joins the spans into one trace. The
//! lesson is `propagation.rs`: three layers inject and extract it, so no handler does.
//! The story prints the trace as a tree, breaks one hop to show an orphaned trace, and
//! prints the RED metrics it scrapes from `/metrics`.
//!
//! go-micro's OpenTelemetry wrappers propagate only where a wrapper is installed, and its
//! examples never show a missing one, which is why "my traces don't show up" is asked so often.
//!
//! ```text
//! cargo run --example trace                       # the story, in one process
//! # spans to a collector too (Jaeger: docker run -p 16686:16686 -p 4317:4317 jaegertracing/jaeger):
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 cargo run --example trace
//! # or one process per service, over a shared NATS (nats-server -js):
//! export NATS_URL=nats://127.0.0.1:4222
//! cargo run --example trace -- directory          # one terminal each
//! cargo run --example trace -- greeter
//! cargo run --example trace -- audit
//! cargo run --example trace -- gateway --port 8080 # then curl 'localhost:8080/hello?name=ada'
//! ```
//!
//! Prints `tests/golden/trace.txt`; explained in `notes/trace.md`.

mod metrics;
mod propagation;
mod services;
mod telemetry;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use clap::{Parser, Subcommand};
use metrics::Counts;
use microkit::PATIENCE;
use microkit::backend::BackendArgs;
use microkit::http::Forwarder;
use microkit::registry::Registry;
use telemetry::{Telemetry, Tree, trees};

/// Every span one traced request makes: two per gRPC or HTTP hop, two for the broker.
const SPANS_PER_REQUEST: usize = 7;

/// One process, the whole story.
async fn story(
    registry: &std::sync::Arc<dyn Registry>,
    backend: &microkit::backend::Backend,
    telemetry: &Telemetry,
    ttl: Duration,
) -> anyhow::Result<()> {
    let spans = telemetry.collected().expect("the story keeps its spans");
    let directory = services::directory(registry, &telemetry.tracer("directory")?, ttl).await?;
    let greeter =
        services::greeter(registry, backend.broker().await?, &telemetry.tracer("greeter")?, ttl)
            .await?;
    let audit = services::audit(backend.broker().await?, &telemetry.tracer("audit")?).await?;
    let gateway_tracer = telemetry.tracer("gateway")?;
    let gateway = services::gateway(registry, &gateway_tracer, true, 0).await?;
    let unpropagated = services::gateway(registry, &gateway_tracer, false, 0).await?;

    let http = Forwarder::new();
    println!("GET /hello?name=ada: {}", get(&http, gateway.addr(), "/hello?name=ada", None).await?);
    let traced = spans.take(SPANS_PER_REQUEST, PATIENCE).await?;
    print_traces("every hop propagates the context", &trees(&traced));

    println!();
    println!(
        "GET /hello?name=bob through a gateway whose gRPC client has no trace layer: {}",
        get(&http, unpropagated.addr(), "/hello?name=bob", None).await?
    );
    let broken = spans.take(SPANS_PER_REQUEST - 1, PATIENCE).await?;
    print_traces("the greeter saw no traceparent and started a trace of its own", &trees(&broken));

    println!();
    println!("GET /hello?name=: {}", get(&http, gateway.addr(), "/hello?name=", None).await?);
    spans.take(3, PATIENCE).await?; // the gateway's two spans and the greeter's refusal
    let scraped = metrics::parse(&get(&http, gateway.addr(), "/metrics", None).await?);
    println!("scraped from /metrics: requests, errors and timed requests per service and method");
    for ((service, method), red) in &scraped {
        let Counts { requests, errors, timed } = red;
        println!("  {service:<9} {method:<27} {requests:>2} {errors:>2} {timed:>2}");
    }

    unpropagated.shutdown().await?;
    gateway.shutdown().await?;
    println!("audit handled {} greetings", audit.stop().await);
    greeter.stop().await?;
    directory.stop().await?;
    Ok(())
}

fn print_traces(what: &str, trees: &[Tree]) {
    let ids: std::collections::HashSet<_> = trees.iter().map(|t| t.trace_id).collect();
    let spans: usize = trees.iter().map(Tree::len).sum();
    let traces =
        if ids.len() == 1 { "1 trace".to_owned() } else { format!("{} traces", ids.len()) };
    println!("{what}: {traces}, {spans} spans");
    for tree in trees {
        for line in tree.lines() {
            println!("  {line}");
        }
    }
}

/// `GET path` on `addr`, with a `traceparent` of the caller's if given: the body, or the status.
pub async fn get(
    http: &Forwarder,
    addr: SocketAddr,
    path: &str,
    traceparent: Option<&str>,
) -> anyhow::Result<String> {
    let mut request = http::Request::get(format!("http://{addr}{path}"));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = http.send(request.body(Body::empty())?).await?;
    let status = response.status();
    let body = microkit::http::body_text(response.into_body(), 1 << 20).await;
    Ok(if status.is_success() { body } else { format!("{status}: {body}") })
}

// ---- The command line and the roles ------------------------------------------------------

#[derive(Parser, Debug)]
#[command(about = "One request traced across HTTP, gRPC and the broker, and its metrics")]
struct Args {
    #[command(flatten)]
    backend: BackendArgs,
    /// The share of new traces to keep (head sampling; a trace continued from a caller
    /// follows the caller's decision).
    #[arg(long, default_value_t = 1.0, global = true)]
    sample_ratio: f64,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand, Debug, Clone, Copy)]
enum Role {
    /// The HTTP edge, with /metrics (needs NATS_URL).
    Gateway {
        /// The port to listen on, on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// The gRPC service the gateway calls (needs NATS_URL).
    Greeter,
    /// The gRPC service the greeter calls (needs NATS_URL).
    Directory,
    /// The subscriber of `greeted` (needs NATS_URL).
    Audit,
}

const TTL: Duration = Duration::from_secs(3);

/// One service in this process until a stop request; its spans go over OTLP when configured.
async fn role(
    role: Role,
    backend: &microkit::backend::Backend,
    telemetry: &Telemetry,
) -> anyhow::Result<()> {
    let registry = backend.registry();
    let stop = microkit::signal::stop_requested();
    let metrics = match role {
        // The gateway serves /metrics itself; audit serves no requests, so has none to count.
        Role::Gateway { .. } | Role::Audit => None,
        // The gRPC services have no HTTP port of their own: /metrics gets one, over HTTP/1.1
        // alone, what a scraper speaks. Over HTTP/2 a client that reads no reply leaves
        // each stream past the connection's 64 KiB window waiting in hyper; when it then
        // hangs up, h2 0.4.20's debug build panics on those streams (notes/trace.md).
        _ => Some(microkit::http::HttpServer::start_http1(metrics::route()).await?),
    };
    // Said in the role's ready line, which comes once the role is in place.
    let scrape = metrics.as_ref().map(|m| format!(", metrics on http://{}/metrics", m.addr()));
    let scrape = scrape.unwrap_or_default();
    let tally = match role {
        Role::Gateway { port } => {
            let tracer = telemetry.tracer("gateway")?;
            let server = services::gateway(&registry, &tracer, true, port).await?;
            println!("gateway listening on http://{}", server.addr());
            wait(stop).await?;
            server.shutdown().await?;
            "gateway stopped".to_owned()
        }
        Role::Greeter => {
            let node = services::greeter(
                &registry,
                backend.broker().await?,
                &telemetry.tracer("greeter")?,
                TTL,
            )
            .await?;
            println!("greeter serving on {}{scrape}", node.addr());
            wait(stop).await?;
            node.stop().await?;
            "greeter stopped".to_owned()
        }
        Role::Directory => {
            let node = services::directory(&registry, &telemetry.tracer("directory")?, TTL).await?;
            println!("directory serving on {}{scrape}", node.addr());
            wait(stop).await?;
            node.stop().await?;
            "directory stopped".to_owned()
        }
        Role::Audit => {
            let handler =
                services::audit(backend.broker().await?, &telemetry.tracer("audit")?).await?;
            println!("audit subscribed to {}", services::TOPIC);
            wait(stop).await?;
            format!("audit handled {} greetings", handler.stop().await)
        }
    };
    if let Some(metrics) = metrics {
        metrics.shutdown().await?;
    }
    telemetry.shutdown().await; // the last spans leave before the process does
    println!("{tally}");
    Ok(())
}

async fn wait(
    stop: impl std::future::Future<Output = std::io::Result<&'static str>>,
) -> anyhow::Result<()> {
    microkit::signal::stopping(stop, "stopping").await?;
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.sample_ratio) {
        anyhow::bail!("--sample-ratio {}: a share between 0 and 1 is needed", args.sample_ratio);
    }
    let backend = args.backend.connect().await?;
    match args.role {
        None if args.sample_ratio < 1.0 => {
            anyhow::bail!(
                "--sample-ratio is for the roles: the story keeps every trace to print it"
            )
        }
        None => {
            let telemetry = Telemetry::new(true, args.sample_ratio);
            let result = story(&backend.registry(), &backend, &telemetry, TTL).await;
            telemetry.shutdown().await;
            result
        }
        Some(role) => {
            backend.require_shared_nats("the gateway, greeter, directory and audit roles")?;
            self::role(role, &backend, &Telemetry::new(false, args.sample_ratio)).await
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
