//! The shared server defaults, as processes: what only a real file-descriptor limit shows.
//! The stream example's `server` role stands for every gRPC server here (it takes its
//! connections from `microkit::server::Incoming`, as `RunningServer` and the HTTP servers do).
#![cfg(target_os = "linux")]

mod common;

use std::time::{Duration, Instant};

use common::{example, terminate};
use futures::StreamExt;
use microkit::PATIENCE;
use microkit::health::WireStatus;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::ChildStderr;

/// The server's file limit: a few dozen over what it opens at start.
const FILE_LIMIT: &str = "64";
/// How long the CPU of a server at its file limit is measured.
const WINDOW: Duration = Duration::from_secs(2);

/// Seconds that the threads of process `pid` have spent running or ready to run (waiting for
/// a core), from the scheduler's statistics. A loop that spins is one or the other all the
/// time, however loaded the machine; CPU time alone would shrink with the load.
fn runnable_seconds(pid: u32) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the server runs");
    let mut nanos = 0u64;
    for task in tasks {
        let stat = std::fs::read_to_string(task.unwrap().path().join("schedstat"));
        // "<on a core> <waiting for one> <slices>", in nanoseconds; a thread may just end.
        let Ok(stat) = stat else { continue };
        let fields: Vec<u64> = stat.split_whitespace().map(|f| f.parse().unwrap()).collect();
        nanos += fields[0] + fields[1];
    }
    nanos as f64 / 1e9
}

/// The next stderr line that contains `wanted`, with the number of lines read on the way.
async fn stderr_until(stderr: &mut Lines<BufReader<ChildStderr>>, wanted: &str) -> String {
    let found = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains(wanted) {
                return line;
            }
        }
        panic!("stderr ended before a line with {wanted:?}");
    });
    found.await.unwrap_or_else(|_| panic!("no line with {wanted:?} on stderr"))
}

#[tokio::test]
async fn at_its_file_limit_a_server_pauses_logs_little_and_serves_again() {
    let mut command = example("stream");
    let binary = command.as_std().get_program().to_owned();
    let mut limited = tokio::process::Command::new("prlimit");
    limited.arg(format!("--nofile={FILE_LIMIT}:{FILE_LIMIT}")).arg(binary);
    limited.args(["server", "--addr", "127.0.0.1:0"]).env("RUST_LOG", "warn");
    limited.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    command = limited;
    command.kill_on_drop(true);
    let mut server = command.spawn().expect("prlimit runs the server");
    let pid = server.id().unwrap(); // prlimit execs the server: one process, one pid
    let mut stderr = BufReader::new(server.stderr.take().unwrap()).lines();
    let ready = stderr_until(&mut stderr, "serving the streaming Greeter on ").await;
    let addr = ready.split(" on ").nth(1).unwrap().split(';').next().unwrap().to_owned();

    // More connections than the server has files: it accepts until the limit, and the rest
    // wait in the listen queue while every accept fails.
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    stderr_until(&mut stderr, "accept failed").await;

    let (runnable, started) = (runnable_seconds(pid), Instant::now());
    let mut lines = 0;
    let _ = tokio::time::timeout(WINDOW, async {
        while let Ok(Some(_)) = stderr.next_line().await {
            lines += 1;
        }
    })
    .await;
    let busy = (runnable_seconds(pid) - runnable) / started.elapsed().as_secs_f64();
    // Measured at 64 files, under a load average of 14 on 2 cores: 1.59 (two threads
    // runnable most of the time) with tonic's own listener, 0.02 with the pause.
    assert!(
        busy < 0.5,
        "the server was runnable {:.0}% of the time at its file limit",
        busy * 100.0
    );
    assert_eq!(lines, 0, "no line within {WINDOW:?} after the first warning");

    // Files free again: the server takes the waiting connections and serves a new one.
    drop(held);
    let call = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?;
        let mut statuses = Box::pin(microkit::health::watch(channel.connect().await?, "").await?);
        anyhow::Ok(statuses.next().await.transpose()?)
    };
    let status = tokio::time::timeout(PATIENCE, call).await.expect("served again in time");
    assert_eq!(status.unwrap(), Some(WireStatus::Serving));
    terminate(&server);
    tokio::time::timeout(PATIENCE, server.wait()).await.expect("it exits on SIGTERM").unwrap();
}
