//! Test hosts: Linux network namespaces joined by one bridge, so a test can run services on
//! separate machines and cut a machine off while its processes keep running.
//!
//! The layout, for a run with prefix `mkpart-<pid>`: a hub namespace holds the bridge and
//! one veth end per host; each host namespace holds the other end as `eth0`, with the
//! address `10.99.0.<n>/24` on it and loopback up. The subnet exists only inside these
//! namespaces: no default route, nothing routed or bridged to a real interface, so traffic
//! goes only between the run's own hosts. Nothing is created in the root namespace.
//!
//! A cut takes the host's port on the bridge down: the host keeps its address and its
//! processes, and its packets simply stop arriving, as when a cable or a switch fails.
//! Everything (processes first, then namespaces) is removed on drop; a run killed before
//! its drop leaves namespaces that the next run (and `scripts/test.sh`) removes.

use std::future::Future;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// What every namespace of these tests is named after; a run adds its pid.
pub const PREFIX: &str = "mkpart-";

/// Fails the test, saying why, unless this process can create namespaces.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the partition tests need root: they create network namespaces (ip netns) as test \
         hosts. Run them as root (CI does, through scripts/test.sh)"
    );
    assert!(
        std::process::Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success()),
        "the partition tests need iproute2's `ip` (Debian: apt-get install iproute2; \
         scripts/test.sh installs it)"
    );
}

/// Runs `ip` with `args`, failing the test with its stderr if it fails.
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every namespace whose name starts with [`PREFIX`].
pub fn namespaces() -> Vec<String> {
    let out = std::process::Command::new("ip").args(["netns", "list"]).output();
    let listing = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(PREFIX))
        .map(str::to_owned)
        .collect()
}

/// Removes what killed runs left: namespaces of a prefix whose process is gone.
pub fn remove_stale() {
    for name in namespaces() {
        let pid = name[PREFIX.len()..].split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_none_or(|pid| !super::alive(pid)) {
            let _ = std::process::Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// One test host.
pub struct Host {
    /// Its namespace.
    pub ns: String,
    pub ip: Ipv4Addr,
    /// Its veth end on the bridge, in the hub: down means cut.
    port: String,
}

/// N hosts on one bridge, removed with everything in them on drop.
pub struct Hosts {
    hub: String,
    hosts: Vec<Host>,
    /// The pid of every process started in a host, killed on drop if still there.
    pids: Mutex<Vec<u32>>,
    started: Instant,
}

impl Hosts {
    /// Hosts 1..=n (`hosts.host(1)` is the first), each at 10.99.0.<n>.
    pub fn new(n: usize) -> Hosts {
        require_root();
        remove_stale();
        // The pid marks a run (a dead pid: a stale leftover), the count a test within it.
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let count = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("{PREFIX}{}-{count}", std::process::id());
        let hub = format!("{prefix}-hub");
        // Created first and dropped on a failed setup too: `Drop` removes what exists.
        let mut hosts =
            Hosts { hub, hosts: Vec::new(), pids: Mutex::default(), started: Instant::now() };
        ip(&["netns", "add", &hosts.hub]);
        ip(&["-n", &hosts.hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hosts.hub, "link", "set", "br0", "up"]);
        for i in 1..=n {
            let ns = format!("{prefix}-h{i}");
            let ip_addr = Ipv4Addr::new(10, 99, 0, i as u8);
            let port = format!("h{i}");
            ip(&["netns", "add", &ns]);
            hosts.hosts.push(Host { ns: ns.clone(), ip: ip_addr, port: port.clone() });
            // Both ends are made in the namespaces: none ever appears in the root one.
            ip(&[
                "-n", &hosts.hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&["-n", &hosts.hub, "link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{ip_addr}/24"), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        hosts
    }

    /// Host `i`, counting from 1.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i - 1]
    }

    /// Sets a network setting (under /proc/sys/) of host `i` only.
    pub fn sysctl(&self, i: usize, key: &str, value: &str) {
        let write = format!("echo {value} > /proc/sys/{key}");
        ip(&["netns", "exec", &self.host(i).ns, "sh", "-c", &write]);
    }

    /// Seconds since the hosts were made: the timeline's clock.
    pub fn clock(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Cuts host `i` off: its processes run on and see only silence from the others.
    pub fn cut(&self, i: usize) {
        ip(&["-n", &self.hub, "link", "set", &self.host(i).port, "down"]);
        self.note(&format!("---- host {i} cut off ----"));
    }

    /// Joins host `i` again.
    pub fn heal(&self, i: usize) {
        ip(&["-n", &self.hub, "link", "set", &self.host(i).port, "up"]);
        self.note(&format!("---- host {i} joined again ----"));
    }

    /// A line of the timeline, on stderr (shown live with `--nocapture`).
    pub fn note(&self, line: &str) {
        eprintln!("{:7.2}s  {line}", self.clock());
    }

    /// Starts `program` in host `i`, its output read line by line into a [`Proc`]. It runs
    /// with a parent-death signal, so it dies with this process even if the test is killed.
    pub fn spawn(
        &self,
        i: usize,
        label: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                &self.host(i).ns,
                "setpriv",
                "--pdeathsig",
                "KILL",
                "--",
                program,
            ])
            .args(args)
            .env_remove("NATS_URL")
            .env_remove("MICRO_BACKEND")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child =
            command.spawn().unwrap_or_else(|e| panic!("starting {program} in host {i}: {e}"));
        let pid = child.id().expect("a running child has a pid");
        self.pids.lock().unwrap().push(pid);
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let mut proc = Proc {
            label: format!("h{i} {label}"),
            pid,
            lines: Arc::default(),
            seen: Arc::new(watch::channel(0).0),
            started: self.started,
            child,
            readers: Vec::new(),
        };
        proc.readers = vec![proc.read(out, Stream::Out), proc.read(err, Stream::Err)];
        proc
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Processes first: a namespace with a process in it outlives its deletion.
        for pid in self.pids.lock().unwrap().drain(..) {
            if super::alive(pid) {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(pid as i32).unwrap(),
                    rustix::process::Signal::KILL,
                );
            }
        }
        for host in &self.hosts {
            let _ = std::process::Command::new("ip").args(["netns", "del", &host.ns]).status();
        }
        // Deleting the hub removes the bridge and the veth ends still in it.
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.hub]).status();
    }
}

/// Which of a process's outputs a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

/// A process in a host: its lines as they come, timestamped on the hosts' clock.
pub struct Proc {
    pub label: String,
    pub pid: u32,
    lines: Arc<Mutex<Vec<(f64, Stream, String)>>>,
    seen: Arc<watch::Sender<usize>>,
    started: Instant,
    child: Child,
    /// The tasks reading its output: they end when it has exited and they have read all.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Proc {
    fn read(
        &self,
        pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
        stream: Stream,
    ) -> tokio::task::JoinHandle<()> {
        let (lines, seen, started) = (self.lines.clone(), self.seen.clone(), self.started);
        let label = self.label.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let at = started.elapsed().as_secs_f64();
                let line = plain_text(&line);
                // stdout, and the warnings of the examples' logs (a failed heartbeat): what
                // a reader of the timeline wants to see as it happens.
                if stream == Stream::Out || line.contains(" WARN ") || line.contains(" ERROR ") {
                    eprintln!("{at:7.2}s  [{label}] {line}");
                }
                let mut all = lines.lock().unwrap();
                all.push((at, stream, line));
                seen.send_replace(all.len());
            }
        })
    }

    /// Every stdout line so far.
    pub fn out(&self) -> Vec<String> {
        self.lines_of(Stream::Out).into_iter().map(|(_, l)| l).collect()
    }

    /// Every line of `stream` so far, with its time.
    pub fn lines_of(&self, stream: Stream) -> Vec<(f64, String)> {
        let all = self.lines.lock().unwrap();
        all.iter().filter(|(_, s, _)| *s == stream).map(|(t, _, l)| (*t, l.clone())).collect()
    }

    /// How many lines (of both streams) so far: a mark to wait from.
    pub fn mark(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Waits, at most `limit`, for a line after `mark` that `matches`; returns it with its
    /// time. Fails the test with everything the process said if none comes.
    pub async fn wait_for(
        &self,
        mark: usize,
        limit: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> (f64, String) {
        let mut seen = self.seen.subscribe();
        let found = tokio::time::timeout(limit, async {
            let mut from = mark;
            loop {
                {
                    let all = self.lines.lock().unwrap();
                    if let Some((t, _, l)) =
                        all[from.min(all.len())..].iter().find(|(_, _, l)| matches(l))
                    {
                        return (*t, l.clone());
                    }
                    from = all.len();
                }
                if seen.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!("{}: no such line within {limit:?}; it said:\n{}", self.label, self.dump())
        })
    }

    /// Everything it said, for a failure message.
    pub fn dump(&self) -> String {
        let all = self.lines.lock().unwrap();
        all.iter().map(|(t, s, l)| format!("{t:7.2}s {s:?} {l}\n")).collect()
    }

    /// Asks it to stop (SIGTERM) and waits, at most `limit`, for it to exit; its exit status.
    pub async fn stop(&mut self, limit: Duration) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.pid as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let status = tokio::time::timeout(limit, self.child.wait()).await;
        let status =
            status.unwrap_or_else(|_| panic!("{} did not stop within {limit:?}", self.label));
        // Its last lines (the tally) may still be in the pipes: read them to the end.
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(limit, reader).await;
        }
        status.expect("waiting for a process")
    }
}

/// Runs `work` on a thread of its own inside host `i`, with its own runtime: every socket it
/// opens belongs to that host's network. For what a test does on a host itself (setting up
/// JetStream, posting events, a plain subscriber), where no example role fits.
pub fn within<F, Fut, T>(host: &Host, work: F) -> impl Future<Output = T> + Send + 'static
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let path = format!("/run/netns/{}", host.ns);
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // Only this thread moves (and the threads it starts later): the test stays outside.
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&ns),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap_or_else(|e| panic!("entering {path}: {e}"));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _ = done.send(runtime.block_on(work()));
    });
    async move { result.await.expect("the work inside a host panicked") }
}

/// `line` without terminal colour codes (tracing colours its logs even into a pipe).
pub fn plain_text(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An escape sequence: ESC [ parameters, ending with a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}
