//! Where a stop request comes from: SIGTERM, ctrl-c or SIGHUP, turned into a queue.

use tokio::sync::mpsc;

/// The stop requests from outside (SIGTERM, ctrl-c, SIGHUP), as a queue of names.
///
/// A queue rather than the OS calls themselves, so a test can "send" a signal in-process.
pub struct Signals(pub mpsc::UnboundedReceiver<&'static str>);

impl Signals {
    /// Listens to the OS. From here on a signal no longer kills the process at once (the
    /// default action): it becomes a request that the program answers in its own order.
    pub fn from_os() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            // SIGHUP too: the terminal that started the process has closed.
            let kinds = [
                (SignalKind::terminate(), "SIGTERM"),
                (SignalKind::interrupt(), "ctrl-c"),
                (SignalKind::hangup(), "SIGHUP"),
            ];
            for (kind, name) in kinds {
                let mut arrivals = signal(kind)?;
                let tx = tx.clone();
                tokio::spawn(async move {
                    while arrivals.recv().await.is_some() && tx.send(name).is_ok() {}
                });
            }
        }
        // Elsewhere ctrl-c is the one stop request there is; microkit's wait knows how.
        #[cfg(not(unix))]
        tokio::spawn(async move {
            while let Ok(name) = microkit::signal::stop_requested().await
                && tx.send(name).is_ok()
            {}
        });
        Ok(Signals(rx))
    }

    /// The next signal; never returns once no sender is left.
    pub async fn next(&mut self) -> &'static str {
        match self.0.recv().await {
            Some(name) => name,
            None => std::future::pending().await,
        }
    }
}
