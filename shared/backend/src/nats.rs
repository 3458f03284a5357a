//! Starting `nats-server` on this machine, never a shared or system one: the private server
//! of the backend rule ([`PrivateServer`]) and, through [`spawn`], the servers the tests
//! start, stop and restart (`microkit-testing`'s `NatsServer` and cluster).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
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

/// The `nats-server` the backend started for this run: one node on a free loopback port,
/// JetStream in a temporary folder. Dropping it stops the server.
pub struct PrivateServer {
    // Fields drop in order: the child first (its supervisor then kills the server), the
    // folder after.
    _child: Child,
    port: u16,
    _dir: TempDir,
}

impl PrivateServer {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("nats-").tempdir()?;
        let (child, port) = spawn(dir.path(), "solo", None, &[]).await?;
        Ok(PrivateServer { _child: child, port, _dir: dir })
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// Starts `nats-server` named `name` on `127.0.0.1:port` with JetStream storing in `dir`
/// (its log goes to `dir/nats-server.log`, its process id to `dir/nats-server.pid`) and
/// `extra_args` (a cluster's routes, say); returns once it accepts connections, with its port.
///
/// `port: None` takes a free one, and another if a process takes it before the server binds.
/// The server cannot outlive this process (see `supervised`): dropping the child, or
/// closing its stdin, kills it.
pub async fn spawn(
    dir: &Path,
    name: &str,
    port: Option<u16>,
    extra_args: &[String],
) -> anyhow::Result<(Child, u16)> {
    if let Some(port) = port {
        return spawn_on(dir, name, port, extra_args).await;
    }
    let mut attempts = 3;
    loop {
        let port = free_port()?;
        match spawn_on(dir, name, port, extra_args).await {
            Err(error) if attempts > 1 && format!("{error:#}").contains("in use") => {
                attempts -= 1;
                tracing::debug!(%error, "nats-server port taken, trying another");
            }
            result => return result,
        }
    }
}

async fn spawn_on(
    dir: &Path,
    name: &str,
    port: u16,
    extra_args: &[String],
) -> anyhow::Result<(Child, u16)> {
    let binary =
        server_binary().with_context(|| format!("nats-server not found: {INSTALL_HINT}"))?;
    // A fresh log for each start, so that "ready" in it speaks of this one.
    let log = dir.join("nats-server.log");
    let _ = std::fs::remove_file(&log);
    let mut command = supervised(&binary);
    command
        .args(["--addr", "127.0.0.1", "--port", &port.to_string()])
        .args(["--server_name", name, "--jetstream", "--store_dir"])
        .arg(dir.join("jetstream"))
        .arg("--log")
        .arg(&log)
        .arg("--pid")
        .arg(dir.join("nats-server.pid"))
        .args(extra_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = command.spawn().with_context(|| format!("starting {}", binary.display()))?;

    // Ready when its log says so and it accepts TCP connections; give up (with its log)
    // if it exits first. (A connection alone could reach another server that took the
    // port first: ours then exits with "address already in use".)
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    while !read_log().contains("Server is ready")
        || TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err()
    {
        if let Some(status) = child.try_wait()? {
            bail!("nats-server exited with {status} before it listened:\n{}", tail(&read_log()));
        }
        if Instant::now() > deadline {
            bail!("nats-server did not listen on {addr} within 10 s:\n{}", tail(&read_log()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((child, port))
}

/// The last ten lines of a log (they say why a start failed).
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
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
/// [`spawn`] then tries another.
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
    async fn a_private_server_answers_and_is_gone_once_dropped() {
        let server = PrivateServer::start().await.unwrap();
        let client = async_nats::connect(server.url()).await.unwrap();
        client.flush().await.unwrap();
        let url = server.url();
        drop(server);
        let gone = tokio::time::timeout(Duration::from_secs(5), async {
            while async_nats::connect(url.as_str()).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        gone.await.expect("the server stopped with its owner");
    }
}
