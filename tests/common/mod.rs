//! What the process-level tests share: finding the built example binaries and running
//! them with a deadline, so a hung example fails its test instead of stalling CI.

#![allow(dead_code)] // each test file uses its own share of these

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::process::Command;

pub mod golden;

/// Headless Chromium over the DevTools protocol, for pages checked in a real browser.
pub mod browser;

/// Attacks from outside, for the battery (`tests/hostile.rs`): raw HTTP/2 frames, probes,
/// a process's memory and CPU.
#[cfg(target_os = "linux")]
pub mod hostile;

/// Every long-running role, one table for the signal tests and the battery.
pub mod roles;

/// Test hosts as network namespaces, for the partition tests (Linux, root).
#[cfg(target_os = "linux")]
pub mod hosts;

/// The workspace root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What the tests know of each topic, declared once: its name (as in `examples/` and
/// `Cargo.toml`) and whether it takes `--backend` (uses the broker or the registry, so it runs
/// on both backends with the same stdout).
pub struct Topic {
    pub name: &'static str,
    pub takes_backend: bool,
}

const fn topic(name: &'static str, takes_backend: bool) -> Topic {
    Topic { name, takes_backend }
}

/// Every topic, sorted by name. `every_topic_is_declared` in `tests/examples.rs` fails when
/// this and `examples/` disagree.
pub const TOPICS: &[Topic] = &[
    topic("api", true),
    topic("broker", true),
    topic("event", true),
    topic("health", true),
    topic("metadata", false),
    topic("mocking", false),
    topic("proxy", true),
    topic("pubsub", true),
    topic("redirect", true),
    topic("registry", true),
    topic("retry", true),
    topic("round-robin", true),
    topic("secure", false),
    topic("sharding", true),
    topic("shutdown", true),
    topic("sidecar", true),
    topic("stream", false),
    topic("trace", true),
    topic("transport", true),
    topic("tunnel", false),
    topic("waitgroup", false),
    topic("web", true),
    topic("wrapper", false),
];

/// Every topic's name, sorted.
pub fn topics() -> Vec<String> {
    TOPICS.iter().map(|t| t.name.to_owned()).collect()
}

/// Whether `topic` takes `--backend`.
pub fn takes_backend(topic: &str) -> bool {
    TOPICS.iter().any(|t| t.name == topic && t.takes_backend)
}

/// What is in `examples/`: a file `<topic>.rs` or a folder with `main.rs`, sorted.
pub fn example_dirs() -> Vec<String> {
    let mut topics: Vec<String> = std::fs::read_dir(root().join("examples"))
        .expect("examples/ exists")
        .map(|entry| entry.unwrap().path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?.to_owned();
            if path.is_dir() && path.join("main.rs").is_file() {
                Some(name)
            } else {
                name.strip_suffix(".rs").map(str::to_owned)
            }
        })
        .collect();
    topics.sort();
    topics
}

/// The built binary of an example. `cargo test` builds examples marked `test = true` only
/// as tests, so the binaries are built here once per test process (a no-op when
/// `scripts/test.sh` has already run `cargo build --examples`).
pub fn example_binary(topic: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cargo = cargo();
        cargo.args(["build", "--quiet", "--examples"]);
        let status = cargo.status().expect("running cargo build --examples");
        assert!(status.success(), "cargo build --examples failed");
    });
    // This test binary lives in target/<profile>/deps/; the examples in target/<profile>/examples/.
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    deps.parent().unwrap().join("examples").join(topic)
}

/// Cargo, run from the workspace root by a test: the same cargo and target directory as the
/// test's own build.
pub fn cargo() -> std::process::Command {
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo.current_dir(root());
    // Cargo gives a test the variables of its package; some build scripts track them,
    // so a nested build that inherits them would rebuild half the dependency tree.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || ["CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "CARGO_CRATE_NAME"]
                .contains(&name.as_ref())
            || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"].contains(&name.as_ref())
        {
            cargo.env_remove(name.as_ref());
        }
    }
    cargo
}

/// A command for an example with a clean environment: no backend choice, NATS URL or log
/// level leaks in from the developer's shell.
pub fn example(topic: &str) -> Command {
    let mut command = Command::new(example_binary(topic));
    command
        .env_remove("NATS_URL")
        .env_remove("MICRO_BACKEND")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs to completion, failing the test if it takes longer than `limit`.
pub async fn run_within(mut command: Command, limit: Duration) -> Output {
    let child = command.spawn().expect("spawning an example");
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(output) => output.expect("waiting for an example"),
        Err(_) => panic!("{command:?} did not finish within {limit:?}"),
    }
}

/// The Python of the virtual environment that `scripts/test.sh` makes in `target/py`, with
/// the interop clients of `scripts/requirements.txt` (nats-py, ...) installed. A test that
/// needs it fails, never skips, when it is missing.
pub fn python() -> PathBuf {
    let python = root().join("target").join("py").join("bin").join("python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/test.sh, which creates the virtual environment target/py \
         and installs scripts/requirements.txt into it",
        python.display()
    );
    python
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The processes below `pid` (children, their children...), read from `/proc`.
#[cfg(target_os = "linux")]
pub fn descendants(pid: u32) -> Vec<(u32, String)> {
    let mut table = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        // The command name may hold spaces and parentheses: the parent pid follows its last ')'.
        let Some(parent) = stat.rsplit_once(')').and_then(|(_, rest)| {
            rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok())
        }) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        table.push((child, parent, cmdline));
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (child, _, cmdline) in table.iter().filter(|(_, p, _)| *p == parent) {
            found.push((*child, cmdline.clone()));
            frontier.push(*child);
        }
    }
    found
}

/// Whether a process with this pid still exists (and is not a zombie).
#[cfg(target_os = "linux")]
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// A running program and its stdout, read line by line, each read capped so a hang fails the
/// test instead of stalling it.
pub struct Process {
    pub child: tokio::process::Child,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Process {
    /// The longest wait for one line.
    pub const PATIENCE: Duration = Duration::from_secs(30);

    pub fn spawn(mut command: Command) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = command.spawn().expect("spawning a process");
        let stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        Process { child, stdout }
    }

    /// The next line of its stdout.
    pub async fn line(&mut self) -> String {
        match tokio::time::timeout(Self::PATIENCE, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(_) => panic!("the process ended its output"),
            Err(_) => panic!("no output line within {:?}", Self::PATIENCE),
        }
    }

    /// Reads lines until one equals `wanted`, returning the lines before it.
    pub async fn until(&mut self, wanted: &str) -> Vec<String> {
        let mut before = Vec::new();
        loop {
            let line = self.line().await;
            if line == wanted {
                return before;
            }
            before.push(line);
        }
    }

    /// SIGTERM (to this process only), then its last line and how it ended.
    pub async fn stop(mut self) -> (String, std::process::ExitStatus) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success(), "kill -TERM {pid}");
        let last = self.line().await;
        let waited = tokio::time::timeout(Self::PATIENCE, self.child.wait()).await;
        (last, waited.expect("it exits after SIGTERM").unwrap())
    }
}

/// The next line a child printed, within [`Process::PATIENCE`]; for tests that hold a
/// child's stdout themselves.
pub async fn next_line(
    stdout: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    tokio::time::timeout(Process::PATIENCE, stdout.next_line())
        .await
        .expect("no line in time")
        .unwrap()
        .expect("stdout closed early")
}

/// Sends SIGTERM to this child, and only to it: a stop request, as a process manager sends.
pub fn terminate(child: &tokio::process::Child) {
    let pid = child.id().expect("the process is still running").to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success(), "kill -TERM {pid} failed");
}

/// The `server` role of `topic` (round-robin, sharding), one process per name, over the NATS
/// at `nats_url` with `extra` flags; each has printed its ready line when this returns.
pub async fn greeter_servers(
    topic: &str,
    nats_url: &str,
    names: &[&str],
    extra: &[&str],
) -> Vec<Process> {
    let mut servers = Vec::new();
    for name in names {
        let mut command = example(topic);
        command.env("NATS_URL", nats_url).args(["server", "--name", name]).args(extra);
        let mut server = Process::spawn(command);
        let ready = server.line().await;
        assert!(ready.starts_with(&format!("{name} serving greeter on ")), "{ready}");
        servers.push(server);
    }
    servers
}
