//! A private `nats-server`, for demos and tests: never a shared or system one.
//!
//! [`NatsServer`] starts Debian's `nats-server` on a free loopback port with JetStream
//! storing into a temporary folder; it can be stopped and restarted on the same port with
//! the same store (what a real outage looks like to clients), and it is killed on drop.
//! The tests' `microkit-testing` crate starts three of them routed together.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// Where Debian puts the binary, which a non-root PATH often lacks.
const FALLBACK_DIRS: [&str; 2] = ["/usr/sbin", "/usr/local/sbin"];

/// How to install it, for error messages.
pub(crate) const INSTALL_HINT: &str =
    "install NATS (Debian/Ubuntu: `apt-get install nats-server`) or set NATS_URL";

/// The `nats-server` binary, from PATH or Debian's folder.
fn server_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(FALLBACK_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

/// One `nats-server` process owned by this program.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    /// Extra arguments (cluster settings); empty for a single node.
    extra_args: Vec<String>,
    name: String,
    /// JetStream's store and the server's log; deleted on drop.
    dir: TempDir,
}

impl NatsServer {
    /// Starts a single node with JetStream on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        // A free port can be taken by another process between our check and the server's
        // bind (tests start many servers at once); the server then exits, and we try again.
        let mut attempts = 3;
        loop {
            match Self::start_node("solo", free_port()?, Vec::new()).await {
                Err(error) if attempts > 1 && format!("{error:#}").contains("in use") => {
                    attempts -= 1;
                    tracing::debug!(%error, "nats-server port taken, trying another");
                }
                result => return result,
            }
        }
    }

    /// Starts a node named `name` on `port` with `extra_args` (a cluster's routes, say).
    pub async fn start_node(
        name: &str,
        port: u16,
        extra_args: Vec<String>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("nats-").tempdir()?;
        let mut server = NatsServer { child: None, port, extra_args, name: name.to_owned(), dir };
        server.spawn().await?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's own log (it says why a start failed).
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// The server's process id, so a test can pause it (`kill -STOP`) and see what clients
    /// do with a server that is up but stalled. `None` when it is not running. (The child
    /// this struct holds is the supervisor, not the server: the server writes its own id.)
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref()?;
        let written = std::fs::read_to_string(self.dir.path().join("nats-server.pid")).ok()?;
        written.trim().parse().ok()
    }

    /// Kills the server (clients see the connection drop); the store is kept.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // Closing the supervisor's stdin is the kill order (see `supervised`); it exits
            // once the server is gone, so the port is free when this returns.
            drop(child.stdin.take());
            match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(status) => {
                    status.context("stopping nats-server")?;
                }
                Err(_) => child.kill().await.context("stopping nats-server")?,
            }
        }
        Ok(())
    }

    /// Starts it again on the same port with the same JetStream store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let binary =
            server_binary().with_context(|| format!("nats-server not found: {INSTALL_HINT}"))?;
        let store = self.dir.path().join("jetstream");
        let mut command = supervised(&binary);
        command
            .args(["--addr", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--server_name", &self.name, "--jetstream", "--store_dir"])
            .arg(&store)
            .arg("--log")
            .arg(self.log_path())
            .arg("--pid")
            .arg(self.dir.path().join("nats-server.pid"))
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child =
            command.spawn().with_context(|| format!("starting {}", binary.display()))?;

        // Ready when its log says so and it accepts TCP connections; give up (with its log)
        // if it exits first. (A connection alone could reach another server that took the
        // port first: ours then exits with "address already in use".)
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while !self.log_says_ready()
            || TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err()
        {
            if let Some(status) = child.try_wait()? {
                bail!("nats-server exited with {status} before it listened:\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("nats-server did not listen on {addr} within 10 s:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    /// Whether this run of the server has logged that it is ready (the log is appended to
    /// across restarts, so count the runs: each start logs "Starting nats-server" once).
    fn log_says_ready(&self) -> bool {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        log.matches("Starting nats-server").count() == log.matches("Server is ready").count()
            && log.contains("Server is ready")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for NatsServer {
    /// Dropping the child closes the supervisor's stdin, and the supervisor kills the server.
    fn drop(&mut self) {
        drop(self.child.take());
    }
}

/// A command that runs `binary` so that it cannot outlive this process, however it ends.
///
/// A child is not killed when its parent dies: a test killed by a timeout, an example ended by
/// SIGKILL or by a second ctrl-c would leave its private nats-server running for ever. The
/// kernel does close every file a dead process held, though, so the server runs under a small
/// `sh` supervisor whose stdin is a pipe from us: when that pipe closes (we dropped it, or
/// we died), the supervisor's `read` ends and it kills the server. No signal handling and no
/// `unsafe` in this process are needed. Without a Unix shell the server is started directly.
fn supervised(binary: &std::path::Path) -> Command {
    #[cfg(unix)]
    {
        const SUPERVISOR: &str = r#"exec 3<&0
"$0" "$@" </dev/null &
server=$!
( read -r _ <&3; kill -9 "$server" 2>/dev/null ) &
wait "$server""#;
        let mut command = Command::new("sh");
        command.arg("-c").arg(SUPERVISOR).arg(binary).stdin(Stdio::piped());
        command
    }
    #[cfg(not(unix))]
    {
        let mut command = Command::new(binary);
        command.stdin(Stdio::null());
        command
    }
}

/// A port the OS says is free now. Another process could take it before the server binds;
/// `NatsServer::start` then tries another.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// True when a server could be started here.
pub(crate) fn available() -> bool {
    server_binary().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_stops_and_restarts_on_the_same_port() {
        let mut server = NatsServer::start().await.expect(INSTALL_HINT);
        let client = async_nats::connect(server.url()).await.unwrap();
        client.flush().await.unwrap();
        let url = server.url();

        server.stop().await.unwrap();
        assert!(async_nats::connect(server.url()).await.is_err(), "stopped means unreachable");

        server.restart().await.unwrap();
        assert_eq!(server.url(), url);
        let again = async_nats::connect(server.url()).await.unwrap();
        again.flush().await.unwrap();
    }
}
