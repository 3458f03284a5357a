//! How long a link may leave a frame unfinished: the bound that tells a stranger from a node.
//!
//! A dialing node sends its first `Open` at once, and every node writes each frame whole, so
//! a link that has sent no complete frame within [`FRAME_TIMEOUT`] of linking up, or that
//! stops halfway through a frame for that long, is no tunnel node: it only holds a file of
//! the listener's. Its reads then fail with `TimedOut`, and the link ends. Between frames
//! there is no deadline: a link whose sessions are quiet stays open as long as they do.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The header timeout of every other server here (`microkit::server::Limits`): a node writes a
/// frame in one go, so even a slow network finishes one in far less.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// A reader that fails with `TimedOut` while the frame it is expected to deliver is overdue.
pub struct FrameDeadline<R> {
    inner: R,
    timeout: Duration,
    /// When the frame now awaited began: the link's start for its first frame, else the
    /// arrival of its first byte. `None` between frames, when nothing is due.
    since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
}

impl<R> FrameDeadline<R> {
    /// `first_frame_due`: the peer must send a complete frame within `timeout` from now
    /// (the listener's side: the dialer speaks first).
    pub fn new(inner: R, timeout: Duration, first_frame_due: bool) -> Self {
        let now = Instant::now();
        let timer = Box::pin(tokio::time::sleep_until(now + timeout));
        FrameDeadline { inner, timeout, since: first_frame_due.then_some(now), timer }
    }

    /// A whole frame was read and handled. The clock stops, or starts again from now if
    /// bytes of the next frame are already in: time spent handling the frame (waiting on a
    /// slow session) is ours, not the peer's.
    pub fn frame_done(&mut self, next_begun: bool) {
        self.since = next_begun.then(Instant::now);
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for FrameDeadline<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.since.is_none() {
                    this.since = Some(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                // Checked only when the peer has nothing more for us, so a frame that is
                // trickling in byte by byte is caught at its next pause.
                let Some(since) = this.since else { return Poll::Pending };
                let deadline = since + this.timeout;
                if this.timer.deadline() != deadline {
                    this.timer.as_mut().reset(deadline);
                }
                ready!(this.timer.as_mut().poll(cx));
                let message = format!("no complete frame within {:?}", this.timeout);
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, message)))
            }
            failed => failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Frame, FrameCodec, FrameError};
    use futures::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::{FramedRead, FramedWrite};

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn open() -> Frame {
        Frame::Open { session: 1, channel: "greeter".into() }
    }

    /// The link's reader as `read_frames` drives it: the next frame, then `frame_done`.
    async fn next(
        frames: &mut FramedRead<FrameDeadline<tokio::io::DuplexStream>, FrameCodec>,
    ) -> Option<Result<Frame, FrameError>> {
        let frame = frames.next().await;
        let begun = !frames.read_buffer().is_empty();
        frames.get_mut().frame_done(begun);
        frame
    }

    fn timed_out(frame: Option<Result<Frame, FrameError>>) -> bool {
        matches!(frame, Some(Err(FrameError::Io(e))) if e.kind() == io::ErrorKind::TimedOut)
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_says_nothing_or_half_a_header_is_timed_out_at_the_bound() {
        for sent in [&b""[..], b"P"] {
            let (mut peer, ours) = tokio::io::duplex(1024);
            peer.write_all(sent).await.unwrap();
            let mut frames = FramedRead::new(FrameDeadline::new(ours, TIMEOUT, true), FrameCodec);
            let started = Instant::now();
            assert!(timed_out(next(&mut frames).await), "{sent:?}");
            assert_eq!(started.elapsed(), TIMEOUT, "{sent:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_link_between_frames_has_no_deadline_but_half_a_frame_has() {
        let (peer, ours) = tokio::io::duplex(1024);
        let mut frames = FramedRead::new(FrameDeadline::new(ours, TIMEOUT, true), FrameCodec);
        let mut peer = FramedWrite::new(peer, FrameCodec);
        peer.send(open()).await.unwrap();
        assert_eq!(next(&mut frames).await.unwrap().unwrap(), open());

        // Quiet for ten times the bound: still waiting, not timed out.
        let quiet = tokio::time::timeout(10 * TIMEOUT, next(&mut frames)).await;
        assert!(quiet.is_err(), "an idle link was ended: {quiet:?}");

        // Then a frame begun and not finished: ended one bound after its first byte.
        peer.get_mut().write_all(&[4, 0, 0, 0, 1, 0, 0, 0, 5, b'h']).await.unwrap();
        let started = Instant::now();
        assert!(timed_out(next(&mut frames).await));
        assert_eq!(started.elapsed(), TIMEOUT);
    }
}
