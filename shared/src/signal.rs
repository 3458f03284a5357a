//! Waiting for the request to stop that every long-running role must honour.
//!
//! Every role stops the same way, whichever of the usual signals asks: SIGTERM (a process
//! manager, `kill`), SIGINT (ctrl-c) or SIGHUP (the terminal closed). The first one starts a
//! graceful stop; [`exit_on_next`] makes a second one end the process at once with exit code
//! 1, for an operator whose patience ran out. The shutdown example teaches the same in full
//! (a token tree, timers); the other roles only need these two calls.
//!
//! On platforms without Unix signals, ctrl-c is the one stop request there is.

/// Waits for the first stop request and says which signal it was (`SIGTERM`, `SIGINT`,
/// `SIGHUP`), for a role's log line.
pub async fn stop_requested() -> std::io::Result<&'static str> {
    imp::next().await
}

/// After the first stop request: a second one exits the process at once with code 1.
///
/// Call it right after [`stop_requested`] returned, before the drain starts.
pub fn exit_on_next() {
    tokio::spawn(async {
        if let Ok(signal) = imp::next().await {
            eprintln!("{signal} again: exiting at once");
            std::process::exit(1);
        }
    });
}

#[cfg(unix)]
mod imp {
    use tokio::signal::unix::{SignalKind, signal};

    pub async fn next() -> std::io::Result<&'static str> {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut hangup = signal(SignalKind::hangup())?;
        Ok(tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
            _ = hangup.recv() => "SIGHUP",
        })
    }
}

#[cfg(not(unix))]
mod imp {
    pub async fn next() -> std::io::Result<&'static str> {
        tokio::signal::ctrl_c().await.map(|()| "ctrl-c")
    }
}
