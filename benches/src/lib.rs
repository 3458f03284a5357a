//! How the benchmarks measure: every pattern beside the raw library doing the same work, in
//! the same process, **interleaved**. On a shared 2-core machine absolute figures drift by
//! up to 1.5x between runs, so only a ratio taken side by side means anything: each round
//! runs a batch of raw work and a batch of pattern work (alternating which goes first), and
//! the figures are medians over all of them.

use std::time::{Duration, Instant};

use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;

/// How much work each measurement does: `--quick` for CI-sized runs.
#[derive(Clone, Copy, Debug)]
pub struct Effort {
    pub rounds: usize,
    pub calls_per_round: usize,
    pub messages_per_round: u32,
}

impl Effort {
    pub fn from_args() -> Self {
        if std::env::args().any(|a| a == "--quick") {
            Effort { rounds: 10, calls_per_round: 200, messages_per_round: 20_000 }
        } else {
            Effort { rounds: 30, calls_per_round: 1_000, messages_per_round: 100_000 }
        }
    }
}

/// Median latency of one call, raw vs pattern, sampled call by call in alternating batches.
pub async fn latency_pair(
    effort: Effort,
    mut raw: impl AsyncFnMut(),
    mut pattern: impl AsyncFnMut(),
) -> (Duration, Duration) {
    // A warm-up round, not measured: connections, allocations, branch predictors.
    for _ in 0..effort.calls_per_round / 4 {
        raw().await;
        pattern().await;
    }
    let mut raw_samples = Vec::with_capacity(effort.rounds * effort.calls_per_round);
    let mut pattern_samples = Vec::with_capacity(effort.rounds * effort.calls_per_round);
    for round in 0..effort.rounds {
        for raw_turn in [round % 2 == 0, round % 2 == 1] {
            for _ in 0..effort.calls_per_round {
                let start = Instant::now();
                if raw_turn {
                    raw().await;
                    raw_samples.push(start.elapsed());
                } else {
                    pattern().await;
                    pattern_samples.push(start.elapsed());
                }
            }
        }
    }
    (median(raw_samples), median(pattern_samples))
}

/// Median throughput in items per second, raw vs pattern, over alternating rounds. Each
/// closure does one round of work and returns how many items it moved.
pub async fn throughput_pair(
    effort: Effort,
    mut raw: impl AsyncFnMut() -> u64,
    mut pattern: impl AsyncFnMut() -> u64,
) -> (f64, f64) {
    raw().await;
    pattern().await;
    let (mut raw_rates, mut pattern_rates) = (Vec::new(), Vec::new());
    for round in 0..effort.rounds {
        for raw_turn in [round % 2 == 0, round % 2 == 1] {
            let start = Instant::now();
            let items = if raw_turn { raw().await } else { pattern().await };
            let rate = items as f64 / start.elapsed().as_secs_f64();
            if raw_turn { raw_rates.push(rate) } else { pattern_rates.push(rate) }
        }
    }
    (median(raw_rates), median(pattern_rates))
}

fn median<T: PartialOrd + Copy>(mut samples: Vec<T>) -> T {
    samples.sort_by(|a, b| a.partial_cmp(b).expect("no NaN in samples"));
    samples[samples.len() / 2]
}

/// What a ratio (pattern / raw) must reach.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// A cost: the ratio must not exceed this.
    AtMost(f64),
    /// A speed: the ratio must reach this.
    AtLeast(f64),
    /// Reported, not judged.
    Report,
    /// Messages were lost: whatever the speed, the pattern failed.
    Lost(u64),
}

/// One line of the table.
pub struct Row {
    pub pattern: String,
    pub raw: String,
    pub measured: String,
    pub ratio: f64,
    pub target: Target,
}

impl Row {
    /// A row with figures formatted by the caller.
    pub fn new(pattern: &str, raw: String, measured: String, ratio: f64, target: Target) -> Row {
        Row { pattern: pattern.to_owned(), raw, measured, ratio, target }
    }

    pub fn latency(pattern: &str, (raw, measured): (Duration, Duration), target: Target) -> Row {
        Row {
            pattern: pattern.to_owned(),
            raw: format!("{:.1} us", raw.as_secs_f64() * 1e6),
            measured: format!("{:.1} us", measured.as_secs_f64() * 1e6),
            ratio: measured.as_secs_f64() / raw.as_secs_f64(),
            target,
        }
    }

    pub fn throughput(pattern: &str, (raw, measured): (f64, f64), target: Target) -> Row {
        Row {
            pattern: pattern.to_owned(),
            raw: format!("{:.2} M/s", raw / 1e6),
            measured: format!("{:.2} M/s", measured / 1e6),
            ratio: measured / raw,
            target,
        }
    }

    fn verdict(&self) -> (&'static str, String) {
        match self.target {
            Target::AtMost(limit) => {
                (if self.ratio <= limit { "pass" } else { "short" }, format!("<= {limit:.2}"))
            }
            Target::AtLeast(floor) => {
                (if self.ratio >= floor { "pass" } else { "short" }, format!(">= {floor:.2}"))
            }
            Target::Report => ("report", "-".to_owned()),
            Target::Lost(count) => ("lost", format!("{count} lost")),
        }
    }
}

/// Prints the table: pattern, raw figure, pattern figure, ratio, target, verdict.
pub fn print_table(rows: &[Row]) {
    println!(
        "| {:<56} | {:>12} | {:>12} | {:>6} | {:>7} | {:<6} |",
        "pattern", "raw", "pattern", "ratio", "target", "result"
    );
    println!("|{:-<58}|{:->14}|{:->14}|{:->8}|{:->9}|{:-<8}|", "", "", "", "", "", "");
    for row in rows {
        let (verdict, target) = row.verdict();
        println!(
            "| {:<56} | {:>12} | {:>12} | {:>6.3} | {:>7} | {:<6} |",
            row.pattern, row.raw, row.measured, row.ratio, target, verdict
        );
    }
}

/// [`latency_pair`] for the pair most rows measure: one `SayHello` on a plain channel, one
/// through the pattern's client, each checked to succeed.
pub async fn say_hello_pair<P>(
    effort: Effort,
    raw: &mut GreeterClient<tonic::transport::Channel>,
    pattern: &mut GreeterClient<P>,
) -> (Duration, Duration)
where
    P: tonic::client::GrpcService<
            tonic::body::Body,
            Error: Into<tonic::codegen::StdError>,
            ResponseBody: http_body::Body<
                Data = bytes::Bytes,
                Error: Into<tonic::codegen::StdError> + Send,
            > + Send
                              + 'static,
        >,
{
    let hello = || HelloRequest { name: "bench".into() };
    latency_pair(
        effort,
        async || {
            raw.say_hello(hello()).await.expect("a raw call");
        },
        async || {
            pattern.say_hello(hello()).await.expect("a call through the pattern");
        },
    )
    .await
}
