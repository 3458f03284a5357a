//! The stop request every long-running role honours, whichever usual signal asks: SIGTERM
//! (a process manager, `kill`), SIGINT (ctrl-c) or SIGHUP (the terminal closed); on Windows,
//! ctrl-c. The shutdown example teaches the same in full (a token tree, timers).

use std::future::Future;

/// Waits for the first stop request and says which signal it was (`SIGTERM`, `SIGINT`,
/// `SIGHUP`), for a role's log line.
///
/// The handlers are installed when this is *called*, not when the future is first polled:
/// a role calls it before it says it is ready, so a signal that follows that line is always
/// a stop request, never the default action (which kills the process on the spot).
pub fn stop_requested() -> impl Future<Output = std::io::Result<&'static str>> + Send + 'static {
    let armed = imp::Armed::install();
    async move { armed?.next().await }
}

/// What every role does once its stop request came (`signal`, from [`stop_requested`]): from
/// now on a second signal ends the process at once with exit code 1, for an operator whose
/// patience ran out, and the log says which signal asked and what the role does (`what`).
pub fn stopping(
    signal: std::io::Result<&'static str>,
    what: &str,
) -> std::io::Result<&'static str> {
    let signal = signal?;
    let armed = imp::Armed::install();
    tokio::spawn(async move {
        if let Ok(again) = async { armed?.next().await }.await {
            eprintln!("{again} again: exiting at once");
            std::process::exit(1);
        }
    });
    tracing::info!(signal, "stopping: {what}");
    Ok(signal)
}

#[cfg(unix)]
mod imp {
    use tokio::signal::unix::{Signal, SignalKind, signal};

    pub struct Armed {
        terminate: Signal,
        interrupt: Signal,
        hangup: Signal,
    }

    impl Armed {
        pub fn install() -> std::io::Result<Self> {
            Ok(Armed {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
                hangup: signal(SignalKind::hangup())?,
            })
        }

        pub async fn next(mut self) -> std::io::Result<&'static str> {
            Ok(tokio::select! {
                _ = self.terminate.recv() => "SIGTERM",
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.hangup.recv() => "SIGHUP",
            })
        }
    }
}

#[cfg(windows)]
mod imp {
    pub struct Armed(tokio::signal::windows::CtrlC);

    impl Armed {
        pub fn install() -> std::io::Result<Self> {
            tokio::signal::windows::ctrl_c().map(Armed)
        }

        pub async fn next(mut self) -> std::io::Result<&'static str> {
            self.0.recv().await;
            Ok("ctrl-c")
        }
    }
}
