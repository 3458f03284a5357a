//! Where an example's results go.
//!
//! Results are plain lines on stdout, deterministic so the test suite can compare them with
//! `tests/golden/<topic>.txt`: no ports, timestamps, random ids or racing output. Everything
//! else (what a learner may want while exploring) is a log line on stderr through
//! `tracing`, filtered by `RUST_LOG`.
//!
//! An [`Out`] either prints each line at once (a real run) or keeps the lines (a test
//! runs the example in-process and compares what it kept with the golden file).

use std::fmt::Display;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// The stdout of an example: cheap to clone, so tasks can report through it too.
#[derive(Clone, Debug)]
pub struct Out {
    captured: Option<Arc<Mutex<Vec<String>>>>,
}

impl Out {
    /// Lines go straight to stdout (and are flushed, so a reader of a pipe sees each one).
    pub fn stdout() -> Self {
        Out { captured: None }
    }

    /// Lines are kept for [`Out::text`]; nothing is printed.
    pub fn capture() -> Self {
        Out { captured: Some(Arc::default()) }
    }

    /// Emits one result line.
    pub fn line(&self, line: impl Display) {
        let line = line.to_string();
        match &self.captured {
            Some(lines) => lines.lock().unwrap().push(line),
            None => {
                let mut stdout = std::io::stdout().lock();
                // A closed stdout (e.g. `| head -1`) is not an error worth a panic.
                let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
            }
        }
    }

    /// Everything captured so far, one line each, newline-terminated.
    pub fn text(&self) -> String {
        self.captured
            .as_ref()
            .map(|lines| lines.lock().unwrap().iter().map(|l| format!("{l}\n")).collect())
            .unwrap_or_default()
    }
}

/// Prints one formatted result line: `say!(out, "{} calls", n)`.
#[macro_export]
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {
        $out.line(::std::format_args!($($arg)*))
    };
}

/// Ends `main`: an error is printed on stderr with its causes, and the exit code is 1.
///
/// Used instead of returning `anyhow::Result` from `main`, whose `Debug` output adds a
/// backtrace when `RUST_BACKTRACE` is set: a learner should see one clear sentence.
pub fn report(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Sends logs to stderr, filtered by `RUST_LOG` (default: warnings and errors only).
/// Safe to call more than once.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_lines_come_back_in_order_from_clones() {
        let out = Out::capture();
        let clone = out.clone();
        say!(out, "one {}", 1);
        clone.line("two");
        assert_eq!(out.text(), "one 1\ntwo\n");
    }
}
