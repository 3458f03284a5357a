use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use registry::Registry;
use tokio::sync::mpsc;

use crate::signals::Signals;
use crate::story::{Report, run_until_stopped};
use crate::token_tree::{Drain, Serving, Stopped};
use crate::{Args, Settings};

fn parse(flags: &[&str]) -> (Settings, bool) {
    Args::parse_from(["shutdown"].iter().chain(flags)).settings()
}

fn fake_signals() -> (mpsc::UnboundedSender<&'static str>, Signals) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, Signals(rx))
}

#[tokio::test]
async fn the_demo_serves_one_call_stops_on_its_timer_and_counts_the_call() {
    let (_tx, signals) = fake_signals();
    let (settings, serve_mode) = parse(&["--backend", "memory"]);
    let report = run_until_stopped(&settings, serve_mode, signals).await.unwrap();
    let expected = Report {
        listed: true,
        answer: Some("hello ada (answered by shutdown-1)".into()),
        cause: "timer (100ms)".into(),
        stopped: Stopped { listed: false, drain: Drain::Finished, served: 1 },
    };
    assert_eq!(report, expected);
}

#[tokio::test]
async fn a_fake_sigterm_stops_the_serving_mode_the_same_way() {
    let (tx, signals) = fake_signals();
    tx.send("SIGTERM").unwrap(); // queued: it arrives as soon as the server is ready
    let (settings, serve_mode) = parse(&["serve", "--backend", "memory"]);
    let report = run_until_stopped(&settings, serve_mode, signals).await.unwrap();
    assert_eq!((report.answer, report.cause.as_str()), (None, "SIGTERM"));
    assert_eq!(report.stopped, Stopped { listed: false, drain: Drain::Finished, served: 0 });
}

#[tokio::test]
async fn serve_with_a_timer_stops_itself() {
    let (_tx, signals) = fake_signals();
    let (settings, serve_mode) = parse(&["serve", "--stop-after-ms", "50", "--backend", "memory"]);
    let report = run_until_stopped(&settings, serve_mode, signals).await.unwrap();
    assert_eq!(report.cause, "timer (50ms)");
    assert_eq!(report.stopped.drain, Drain::Finished);
}

#[tokio::test]
async fn a_health_watch_sees_serving_then_not_serving_then_the_end_as_the_node_stops() {
    use futures::StreamExt;
    use microkit::health::WireStatus;
    let registry: Arc<dyn Registry> = Arc::new(registry::MemoryRegistry::new());
    let serving = Serving::start(registry, "shutdown-1").await.unwrap();
    let addr = serving.server.addr();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap();
    let statuses = microkit::health::watch(channel.connect().await.unwrap(), "").await;
    let mut statuses = Box::pin(statuses.unwrap());
    assert_eq!(statuses.next().await.unwrap().unwrap(), WireStatus::Serving);
    let (_tx, signals) = fake_signals();
    let stopped = serving.stop(signals, Duration::from_secs(5)).await.unwrap();
    assert_eq!(stopped.drain, Drain::Finished, "the Watch stream did not hold the drain");
    let rest: Vec<_> = statuses.map(|s| s.unwrap()).collect().await;
    assert_eq!(rest, [WireStatus::NotServing], "NOT_SERVING, then the end of the stream");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed");
}

#[test]
fn bad_flags_are_refused() {
    for args in [
        &["shutdown", "--drain-ms", "soon"][..],
        &["shutdown", "--drain-ms", "5", "serve"], // the demo's flags, then a role
        &["shutdown", "serve", "--backend", "redis"],
    ] {
        assert!(Args::try_parse_from(args).is_err(), "{args:?} was accepted");
    }
}
