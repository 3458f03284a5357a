//! Waiting for the request to stop that a server role must honour.
//!
//! The shutdown example teaches signals in full (a second signal, timers, a token tree);
//! the other roles only need to wait for the first one.

/// Returns when the user presses ctrl-c (SIGINT) or a process manager sends SIGTERM.
pub async fn stop_requested() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}
