//! One link between two nodes, carrying many sessions: the multiplexer.
//!
//! A [`Tunnel`] owns one TCP connection. Two tasks drive it: a reader that decodes frames
//! and hands each to its session, and a writer that encodes what every session sends.
//! A [`Session`] (in `session.rs`) is a byte stream (`AsyncRead + AsyncWrite`) like a TCP
//! connection, so anything that runs over TCP (here: HTTP/2, so gRPC) runs over it unchanged.
//!
//! Which side numbers a session: the dialer uses odd ids, the listener even ones (as HTTP/2
//! does), so both may open sessions at once without agreeing first.
//!
//! Every session costs memory on both nodes (here, a whole HTTP/2 connection in the gRPC
//! server), and the other node decides how many it asks for, so a link carries at most
//! [`MAX_SESSIONS`]: an `Open` past the bound gets a `Refuse` that names it.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::deadline::{FRAME_TIMEOUT, FrameDeadline};
use crate::frame::{Frame, FrameCodec, FrameError};
pub use crate::session::Session;

/// Sessions arriving for one channel this node serves.
pub type Arrivals = mpsc::Sender<Session>;

/// The most sessions one link carries at once, counting those the other node opened and
/// those still waiting for their service to take them. Enough for many clients; a peer
/// that asks for more (a flood of `Open` frames) is refused instead of costing memory.
pub const MAX_SESSIONS: usize = 256;

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("the tunnel link is down")]
    LinkDown,
    #[error("{0}")]
    Full(String),
    #[error("refused by the other node: {0}")]
    Refused(String),
}

impl From<TunnelError> for io::Error {
    fn from(error: TunnelError) -> Self {
        io::Error::new(io::ErrorKind::ConnectionRefused, error)
    }
}

/// What the link knows of one open session.
struct Slot {
    /// Bytes from the other node, in order, for the local [`Session`] to read.
    inbound: mpsc::Sender<Bytes>,
    /// Set before `inbound` is dropped when the other node closed the session on purpose,
    /// so the reader can tell a clean end from a lost link.
    peer_closed: Arc<AtomicBool>,
    /// Present while we wait for the other node to accept a session we opened.
    answer: Option<oneshot::Sender<Result<(), String>>>,
}

pub struct Shared {
    name: String,
    outgoing: mpsc::Sender<Frame>,
    slots: Mutex<HashMap<u32, Slot>>,
    next_id: AtomicU32,
    /// The channels this node serves, by name.
    services: HashMap<String, Arrivals>,
    /// Cancelled when the link is gone, for whatever reason.
    down: CancellationToken,
    /// Why the link ended, once it has.
    end_reason: Mutex<Option<String>>,
    opened: AtomicUsize,
    /// Sessions not yet dropped by whoever holds them: what the link's sessions still cost.
    live: watch::Sender<usize>,
}

/// A handle on one link; cheap to clone.
#[derive(Clone)]
pub struct Tunnel {
    shared: Arc<Shared>,
}

/// Which end of the link this node is: it decides the parity of the session ids it picks.
#[derive(Clone, Copy, Debug)]
pub enum Side {
    Dialer,
    Listener,
}

/// How many frames may wait for the writer, and how many payloads for a slow session.
const QUEUE: usize = 64;

impl Tunnel {
    /// Runs the link over `stream`. `name` is this node's name (for messages); `services`
    /// are the channels this node serves.
    pub fn start(
        name: &str,
        stream: TcpStream,
        side: Side,
        services: HashMap<String, Arrivals>,
    ) -> Tunnel {
        let (outgoing, to_write) = mpsc::channel(QUEUE);
        let first_id = match side {
            Side::Dialer => 1,
            Side::Listener => 2,
        };
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            outgoing,
            slots: Mutex::default(),
            next_id: AtomicU32::new(first_id),
            services,
            down: CancellationToken::new(),
            end_reason: Mutex::default(),
            opened: AtomicUsize::new(0),
            live: watch::Sender::new(0),
        });
        let (read, write) = stream.into_split();
        tokio::spawn(write_frames(
            FramedWrite::new(write, FrameCodec),
            to_write,
            shared.down.clone(),
        ));
        // The listener's peer must speak first; on either side, a frame once begun must end.
        let first_frame_due = matches!(side, Side::Listener);
        let read = FrameDeadline::new(read, FRAME_TIMEOUT, first_frame_due);
        tokio::spawn(read_frames(FramedRead::new(read, FrameCodec), Arc::clone(&shared)));
        Tunnel { shared }
    }

    /// Opens a session to the service behind `channel` on the other node, and waits until
    /// that node accepts or refuses it.
    pub async fn open(&self, channel: &str) -> Result<Session, TunnelError> {
        let id = self.shared.next_id.fetch_add(2, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        let session = self.shared.add_session(id, Some(answer)).map_err(TunnelError::Full)?;
        self.shared.send(Frame::Open { session: id, channel: channel.to_owned() }).await?;
        // If the link dies first, nobody will answer: stop waiting then.
        let answer = tokio::select! {
            answer = answered => answer,
            _ = self.shared.down.cancelled() => return Err(TunnelError::LinkDown),
        };
        match answer {
            Ok(Ok(())) => {
                self.shared.opened.fetch_add(1, Ordering::Relaxed);
                Ok(session)
            }
            Ok(Err(reason)) => Err(TunnelError::Refused(reason)),
            Err(_) => Err(TunnelError::LinkDown), // the link died before the answer came
        }
    }

    /// Cuts the link, as a network failure would: every open session fails.
    pub fn cut(&self) {
        self.shared.down.cancel();
    }

    pub fn is_up(&self) -> bool {
        !self.shared.down.is_cancelled()
    }

    /// Why the link ended: `None` while it is up.
    pub fn end_reason(&self) -> Option<String> {
        self.shared.end_reason.lock().unwrap().clone()
    }

    /// Sessions this side opened and the other accepted, over this link's life.
    pub fn sessions_opened(&self) -> usize {
        self.shared.opened.load(Ordering::Relaxed)
    }

    /// How many of this link's sessions are still held somewhere; it falls to 0 once a
    /// link has ended and every session on it has been let go.
    pub fn sessions_live(&self) -> watch::Receiver<usize> {
        self.shared.live.subscribe()
    }
}

impl Shared {
    /// A new session `id`, unless that id is taken or the link is full: then the reason.
    fn add_session(
        self: &Arc<Self>,
        id: u32,
        answer: Option<oneshot::Sender<Result<(), String>>>,
    ) -> Result<Session, String> {
        let mut slots = self.slots.lock().unwrap();
        // An id already in use would hijack that session's bytes.
        if slots.contains_key(&id) {
            return Err(format!("session {id} is already open"));
        }
        if slots.len() >= MAX_SESSIONS {
            let name = &self.name;
            return Err(format!(
                "{name} has {MAX_SESSIONS} sessions open on this link, the most it takes"
            ));
        }
        let (inbound, incoming) = mpsc::channel(QUEUE);
        let peer_closed = Arc::new(AtomicBool::new(false));
        let slot = Slot { inbound, peer_closed: Arc::clone(&peer_closed), answer };
        slots.insert(id, slot);
        self.live.send_modify(|live| *live += 1);
        Ok(Session::new(id, Arc::clone(self), incoming, peer_closed, self.outgoing.clone()))
    }

    /// A session was dropped: it is gone from the link, and if it had not sent `Close`, the
    /// other node is told (best effort: if the queue is full or the link is gone, the other
    /// node learns of the end when the link closes).
    pub fn forget(&self, session: u32, closed: bool) {
        self.slots.lock().unwrap().remove(&session);
        self.live.send_modify(|live| *live -= 1);
        if !closed {
            let _ = self.outgoing.try_send(Frame::Close { session });
        }
    }

    /// Wakes the opener waiting for `session` with the other node's answer.
    fn answer(&self, session: u32, answer: Result<(), String>) {
        let mut slots = self.slots.lock().unwrap();
        let waiting = slots.get_mut(&session).and_then(|slot| slot.answer.take());
        if answer.is_err() {
            slots.remove(&session);
        }
        match waiting {
            Some(opener) => {
                let _ = opener.send(answer);
            }
            None => tracing::debug!(session, "an answer nobody asked for, ignored"),
        }
    }

    async fn send(&self, frame: Frame) -> Result<(), TunnelError> {
        self.outgoing.send(frame).await.map_err(|_| TunnelError::LinkDown)
    }

    /// Handles one frame from the other node.
    async fn receive(self: &Arc<Self>, frame: Frame) -> Result<(), TunnelError> {
        match frame {
            Frame::Open { session, channel } => {
                let Some(arrivals) = self.services.get(&channel) else {
                    let reason = format!("{} has no channel named {channel:?}", self.name);
                    return self.send(Frame::Refuse { session, reason }).await;
                };
                let accepted = match self.add_session(session, None) {
                    Ok(accepted) => accepted,
                    Err(reason) => return self.send(Frame::Refuse { session, reason }).await,
                };
                self.send(Frame::Accept { session }).await?;
                if arrivals.send(accepted).await.is_err() {
                    tracing::warn!(%channel, "the service behind the channel has stopped");
                }
            }
            Frame::Accept { session } => self.answer(session, Ok(())),
            Frame::Refuse { session, reason } => self.answer(session, Err(reason)),
            Frame::Data { session, bytes } => {
                // Clone the sender and let go of the lock before waiting on a slow reader.
                let inbound = self.slots.lock().unwrap().get(&session).map(|s| s.inbound.clone());
                match inbound {
                    // Waiting here holds up every session on the link (head-of-line
                    // blocking): real multiplexers give each session a flow-control window.
                    Some(inbound) => {
                        let _ = inbound.send(bytes).await;
                    }
                    None => tracing::debug!(session, "data for a closed session, dropped"),
                }
            }
            Frame::Close { session } => {
                if let Some(slot) = self.slots.lock().unwrap().remove(&session) {
                    slot.peer_closed.store(true, Ordering::Release);
                }
            }
        }
        Ok(())
    }
}

async fn read_frames(
    mut frames: FramedRead<FrameDeadline<tokio::net::tcp::OwnedReadHalf>, FrameCodec>,
    link: Arc<Shared>,
) {
    let reason = loop {
        let frame = tokio::select! {
            // Checked first: once the link is cut, no frame that arrives after it may count.
            // (A `Close` the other node sent because of the cut would otherwise turn a lost
            // session into a clean end of stream.)
            biased;
            _ = link.down.cancelled() => break "cut".to_owned(),
            frame = frames.next() => frame,
        };
        match frame {
            Some(Ok(frame)) => {
                if link.receive(frame).await.is_err() {
                    break "the writer stopped".to_owned();
                }
                let begun = !frames.read_buffer().is_empty();
                frames.get_mut().frame_done(begun);
            }
            Some(Err(FrameError::Io(error))) if error.kind() == io::ErrorKind::TimedOut => {
                tracing::warn!(node = %link.name, %error, "a link that is no tunnel node; closing it");
                break error.to_string();
            }
            Some(Err(error)) => {
                tracing::warn!(node = %link.name, %error, "bad frame on the link; closing it");
                break error.to_string();
            }
            None => break "the other node hung up".to_owned(),
        }
    };
    link.end_reason.lock().unwrap().get_or_insert(reason);
    link.down.cancel();
    // Dropping every slot ends every session: readers see the link is lost (their
    // `peer_closed` is false) and openers still waiting get `LinkDown`.
    link.slots.lock().unwrap().clear();
}

async fn write_frames(
    mut sink: FramedWrite<tokio::net::tcp::OwnedWriteHalf, FrameCodec>,
    mut frames: mpsc::Receiver<Frame>,
    down: CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            _ = down.cancelled() => break,
            frame = frames.recv() => frame,
        };
        let Some(frame) = frame else { break };
        if let Err(error) = sink.send(frame).await {
            tracing::debug!(%error, "writing to the link failed");
            break;
        }
    }
    down.cancel();
    // Dropping the sink closes our half of the TCP connection; the other node notices.
}
