//! The battery's tools: HTTP/2 written frame by frame (a stranger ignores what the server
//! asks, such as its stream limit, so no client library that obeys it will do), plain
//! probes that say whether a server still serves, and what `/proc` says about a process.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// What every HTTP/2 client sends first (RFC 9113, section 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types and flags used here (RFC 9113, section 6).
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;
/// RST_STREAM's code for "not processed, try again": a stream over the limit.
pub const REFUSED_STREAM: u32 = 0x7;

/// Bytes that are no protocol's start: not an HTTP method, not the HTTP/2 preface, not a
/// TLS record type, not a tunnel frame kind.
pub fn garbage() -> Vec<u8> {
    [0xff_u8, 0x00, 0x13, 0x37].repeat(64)
}

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut bytes = Vec::with_capacity(9 + payload.len());
    bytes.extend_from_slice(&len.to_be_bytes()[1..]);
    bytes.push(kind);
    bytes.push(flags);
    bytes.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541, section 5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of literal fields without indexing or Huffman coding: the plainest HPACK
/// there is, which every decoder must accept.
pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        hpack_int(&mut block, 0x00, 4, 0);
        hpack_int(&mut block, 0x00, 7, name.len());
        block.extend_from_slice(name.as_bytes());
        hpack_int(&mut block, 0x00, 7, value.len());
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// The request headers of a gRPC call to `path`.
pub fn grpc_request(path: &str) -> Vec<u8> {
    header_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "battery"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ])
}

/// `message` framed as gRPC frames it: uncompressed, its length, then the bytes.
pub fn grpc_message(message: &[u8]) -> Vec<u8> {
    let mut framed = vec![0];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// One frame as read: type, flags, stream id, payload.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// Reads one frame; `None` when the server closed the connection (or reset it).
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Option<Frame> {
    let mut head = [0u8; 9];
    reader.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    reader.read_exact(&mut payload).await.ok()?;
    Some(Frame { kind: head[3], flags: head[4], stream, payload })
}

/// An HTTP/2 connection as a client that answers the server's SETTINGS and PINGs (so the
/// server has no reason to close it) and does nothing else it is not told to.
pub struct H2 {
    pub stream: TcpStream,
    next_id: u32,
}

impl H2 {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<H2> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        stream.write_all(&hello).await?;
        Ok(H2 { stream, next_id: 1 })
    }

    /// Opens a stream to `path` with its headers only: the call stays open, waiting for a
    /// body that never comes. Returns its id.
    pub fn open_call(&mut self, path: &str, out: &mut Vec<u8>) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        out.extend(frame(HEADERS, END_HEADERS, id, &grpc_request(path)));
        id
    }

    /// Sends a PING and reads frames until its ACK: by then the server has read and acted
    /// on everything sent before it. Each frame read on the way goes to `seen`.
    pub async fn sync(&mut self, mut seen: impl FnMut(&Frame)) -> bool {
        let opaque = *b"battery!";
        if self.stream.write_all(&frame(PING, 0, 0, &opaque)).await.is_err() {
            return false;
        }
        loop {
            let Some(frame) = self.next().await else { return false };
            if frame.kind == PING && frame.flags & ACK != 0 && frame.payload == opaque {
                return true;
            }
            seen(&frame);
        }
    }

    /// Closes the way a client that is done closes: no more from this side, then waits
    /// (within `limit`) until the server has closed too, so it has let go of every stream.
    pub async fn close(mut self, limit: Duration) {
        let _ = self.stream.write_all(&frame(GOAWAY, 0, 0, &[0; 8])).await;
        let _ = self.stream.shutdown().await;
        let drained = async { while self.next().await.is_some() {} };
        let _ = tokio::time::timeout(limit, drained).await;
    }

    /// The next frame that is not connection housekeeping, answering SETTINGS and PINGs.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            let frame = read_frame(&mut self.stream).await?;
            match frame.kind {
                SETTINGS if frame.flags & ACK == 0 => {
                    self.stream.write_all(&self::frame(SETTINGS, ACK, 0, &[])).await.ok()?;
                }
                PING if frame.flags & ACK == 0 => {
                    let pong = self::frame(PING, ACK, 0, &frame.payload);
                    self.stream.write_all(&pong).await.ok()?;
                }
                SETTINGS => {}
                _ => return Some(frame),
            }
        }
    }
}

/// One gRPC call to `path` with `message` (encoded protobuf), over `io` (a fresh
/// connection): true when a reply message came back within `limit`.
pub async fn grpc_call<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    path: &str,
    message: &[u8],
    limit: Duration,
) -> bool {
    let call = async {
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        out.extend(frame(HEADERS, END_HEADERS, 1, &grpc_request(path)));
        out.extend(frame(DATA, END_STREAM, 1, &grpc_message(message)));
        io.write_all(&out).await.ok()?;
        loop {
            let frame = read_frame(&mut io).await?;
            match frame.kind {
                SETTINGS if frame.flags & ACK == 0 => {
                    io.write_all(&self::frame(SETTINGS, ACK, 0, &[])).await.ok()?;
                }
                // A message in reply: the call was served.
                DATA if frame.stream == 1 && !frame.payload.is_empty() => return Some(()),
                HEADERS | RST_STREAM if frame.stream == 1 && frame.flags & END_STREAM != 0 => {
                    return None;
                }
                RST_STREAM if frame.stream == 1 => return None,
                GOAWAY => return None,
                _ => {}
            }
        }
    };
    tokio::time::timeout(limit, call).await.ok().flatten().is_some()
}

/// A GET of `path` over HTTP/1.1 on a fresh connection: the status line, if one came
/// within `limit`.
pub async fn http_get(addr: SocketAddr, path: &str, limit: Duration) -> Option<String> {
    let get = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: battery\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 1024];
        while !answer.windows(2).any(|w| w == b"\r\n") {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&answer).into_owned();
        text.lines().next().filter(|l| l.starts_with("HTTP/1.1 ")).map(str::to_owned)
    };
    tokio::time::timeout(limit, get).await.ok().flatten()
}

/// Reads (and drops) whatever the server sends until it closes the connection: when it
/// did, measured from `since`; `None` if it was still open at `deadline`.
pub async fn closed_by(
    stream: &mut TcpStream,
    since: Instant,
    deadline: Instant,
) -> Option<Duration> {
    let mut sink = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout_at(deadline.into(), read_all).await.ok().map(|()| since.elapsed())
}

/// The resident memory of a process, in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// How many threads a process runs (`Threads` in `/proc/<pid>/status`).
pub fn threads(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let count = status.lines().find_map(|line| line.strip_prefix("Threads:"));
    count.and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

/// The CPU time a process has used so far (user and system, from `/proc/<pid>/stat`).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: the fields counted here follow its last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |n: usize| fields.get(n).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // Fields 14 and 15 of the file (utime, stime); the state, field 3, is the first here.
    let used = ticks(14 - 3) + ticks(15 - 3);
    Duration::from_secs_f64(used as f64 / clock_ticks() as f64)
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat`'s times.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = std::process::Command::new("getconf").arg("CLK_TCK").output();
        out.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(100)
    })
}

/// How many files a process has open.
pub fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|dir| dir.count()).unwrap_or(0)
}
