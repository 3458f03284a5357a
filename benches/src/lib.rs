//! How the benchmarks measure: every pattern beside the raw library doing the same work, in
//! the same process, **interleaved**. On a shared 2-core machine absolute figures drift by
//! up to 1.5x between runs, so only a ratio taken side by side means anything: each round
//! runs a batch of raw work and a batch of pattern work (alternating which goes first), and
//! the figures are medians over all of them. Each row also shows the spread of the ratio over
//! the rounds (the lowest and the highest per-round ratio), and is "short" only when the whole
//! spread misses its target: a median that misses while some rounds meet it is "unclear".

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

/// Raw and pattern figures (medians over every sample) and the spread of the per-round
/// ratio (pattern / raw): what one round alone would have said, at its lowest and highest.
#[derive(Clone, Copy, Debug)]
pub struct Pair<T> {
    pub raw: T,
    pub pattern: T,
    pub low: f64,
    pub high: f64,
}

/// The lowest and highest of the per-round ratios.
fn spread(ratios: impl IntoIterator<Item = f64>) -> (f64, f64) {
    ratios
        .into_iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), r| (low.min(r), high.max(r)))
}

/// Median latency of one call, raw vs pattern, sampled call by call in alternating batches.
pub async fn latency_pair(
    effort: Effort,
    mut raw: impl AsyncFnMut(),
    mut pattern: impl AsyncFnMut(),
) -> Pair<Duration> {
    // A warm-up round, not measured: connections, allocations, branch predictors.
    for _ in 0..effort.calls_per_round / 4 {
        raw().await;
        pattern().await;
    }
    let mut raw_samples = Vec::with_capacity(effort.rounds * effort.calls_per_round);
    let mut pattern_samples = Vec::with_capacity(effort.rounds * effort.calls_per_round);
    let mut ratios = Vec::with_capacity(effort.rounds);
    for round in 0..effort.rounds {
        let (raw_start, pattern_start) = (raw_samples.len(), pattern_samples.len());
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
        let round_raw = median(raw_samples[raw_start..].to_vec());
        let round_pattern = median(pattern_samples[pattern_start..].to_vec());
        ratios.push(round_pattern.as_secs_f64() / round_raw.as_secs_f64());
    }
    let (low, high) = spread(ratios);
    Pair { raw: median(raw_samples), pattern: median(pattern_samples), low, high }
}

/// Median throughput in items per second, raw vs pattern, over alternating rounds. Each
/// closure does one round of work and returns how many items it moved.
pub async fn throughput_pair(
    effort: Effort,
    mut raw: impl AsyncFnMut() -> u64,
    mut pattern: impl AsyncFnMut() -> u64,
) -> Pair<f64> {
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
    let (low, high) = spread(pattern_rates.iter().zip(&raw_rates).map(|(p, r)| p / r));
    Pair { raw: median(raw_rates), pattern: median(pattern_rates), low, high }
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
    /// The lowest and highest per-round ratio, where the rows's figures come from rounds.
    pub spread: Option<(f64, f64)>,
    pub target: Target,
}

impl Row {
    /// A row with figures formatted by the caller.
    pub fn new(pattern: &str, raw: String, measured: String, ratio: f64, target: Target) -> Row {
        Row { pattern: pattern.to_owned(), raw, measured, ratio, spread: None, target }
    }

    /// The same row, with the spread of a [`Pair`] measured in rounds.
    pub fn with_spread<T>(mut self, pair: &Pair<T>) -> Row {
        self.spread = Some((pair.low, pair.high));
        self
    }

    pub fn latency(pattern: &str, pair: Pair<Duration>, target: Target) -> Row {
        let (raw, measured) = (pair.raw.as_secs_f64(), pair.pattern.as_secs_f64());
        let row = Row::new(
            pattern,
            format!("{:.1} us", raw * 1e6),
            format!("{:.1} us", measured * 1e6),
            measured / raw,
            target,
        );
        row.with_spread(&pair)
    }

    pub fn throughput(pattern: &str, pair: Pair<f64>, target: Target) -> Row {
        let row = Row::new(
            pattern,
            format!("{:.2} M/s", pair.raw / 1e6),
            format!("{:.2} M/s", pair.pattern / 1e6),
            pair.pattern / pair.raw,
            target,
        );
        row.with_spread(&pair)
    }

    /// "pass" when the median meets the target, "short" when even the best round misses
    /// it, "unclear" in between (the median misses, some rounds meet it).
    fn verdict(&self) -> (&'static str, String) {
        let (low, high) = self.spread.unwrap_or((self.ratio, self.ratio));
        let judge =
            |meets: &dyn Fn(f64) -> bool| match (meets(self.ratio), meets(low) || meets(high)) {
                (true, _) => "pass",
                (false, true) => "unclear",
                (false, false) => "short",
            };
        match self.target {
            Target::AtMost(limit) => (judge(&|r| r <= limit), format!("<= {limit:.2}")),
            Target::AtLeast(floor) => (judge(&|r| r >= floor), format!(">= {floor:.2}")),
            Target::Report => ("report", "-".to_owned()),
            Target::Lost(count) => ("lost", format!("{count} lost")),
        }
    }
}

/// Prints the table: pattern, raw figure, pattern figure, ratio (median), its spread over
/// rounds, target, verdict.
pub fn print_table(rows: &[Row]) {
    println!(
        "| {:<56} | {:>12} | {:>12} | {:>6} | {:>13} | {:>7} | {:<7} |",
        "pattern", "raw", "pattern", "ratio", "spread", "target", "result"
    );
    println!("|{:-<58}|{:->14}|{:->14}|{:->8}|{:->15}|{:->9}|{:-<9}|", "", "", "", "", "", "", "");
    for row in rows {
        let (verdict, target) = row.verdict();
        let spread = match row.spread {
            Some((low, high)) => format!("{low:.3}-{high:.3}"),
            None => "-".to_owned(),
        };
        println!(
            "| {:<56} | {:>12} | {:>12} | {:>6.3} | {:>13} | {:>7} | {:<7} |",
            row.pattern, row.raw, row.measured, row.ratio, spread, target, verdict
        );
    }
}

/// [`latency_pair`] for the pair most rows measure: one `SayHello` on a plain channel, one
/// through the pattern's client, each checked to succeed.
pub async fn say_hello_pair<P>(
    effort: Effort,
    raw: &mut GreeterClient<tonic::transport::Channel>,
    pattern: &mut GreeterClient<P>,
) -> Pair<Duration>
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ratio: f64, spread: (f64, f64), target: Target) -> &'static str {
        let mut row = Row::new("r", String::new(), String::new(), ratio, target);
        row.spread = Some(spread);
        row.verdict().0
    }

    #[test]
    fn a_row_is_short_only_when_its_whole_spread_misses() {
        assert_eq!(row(1.01, (0.98, 1.08), Target::AtMost(1.02)), "pass");
        assert_eq!(row(1.04, (0.99, 1.08), Target::AtMost(1.02)), "unclear");
        assert_eq!(row(1.06, (1.03, 1.08), Target::AtMost(1.02)), "short");
        assert_eq!(row(0.90, (0.85, 0.96), Target::AtLeast(0.95)), "unclear");
        assert_eq!(row(0.90, (0.85, 0.94), Target::AtLeast(0.95)), "short");
    }

    #[test]
    fn the_spread_is_the_lowest_and_highest_round() {
        assert_eq!(spread([1.1, 0.9, 1.3]), (0.9, 1.3));
    }
}
