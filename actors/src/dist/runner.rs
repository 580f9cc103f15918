//! The task that owns one connection's socket: reads and decodes frames,
//! routes `rex` replies to the waiting RPCs, writes queued frames in one
//! write per loop turn, and ticks. See the module invariants in `dist`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use erl_dist::message::Message;
use erl_dist::term::{Term, Tuple};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::connection::{Command, RefKey};
use super::frame::{self, Frame};

/// The task that owns the socket.
pub(super) struct Runner<S> {
    pub(super) stream: S,
    pub(super) node: String,
    pub(super) local_name: String,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    pub(super) shutdown: CancellationToken,
    pub(super) pending: HashMap<RefKey, oneshot::Sender<Term>>,
    /// Received bytes not yet decoded.
    pub(super) rx: Vec<u8>,
    /// Frames to write at the end of this loop turn, in one write.
    pub(super) out: Vec<u8>,
    pub(super) tick: Duration,
    /// Peer silence after which the peer counts as gone (its net_ticktime).
    pub(super) silence: Option<Duration>,
    pub(super) last_read: Instant,
    pub(super) last_write: Instant,
}

/// Why a connection ended (the runner's answer, kept by the
/// `NodeConnection`). `Clone`: every holder of the handle can read it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CloseReason {
    /// [`super::NodeConnection::close`], or deployex shutting down.
    #[error("closed locally")]
    Local,
    /// The peer closed the socket (EOF).
    #[error("the peer closed the connection")]
    PeerClosed,
    /// Reading the socket failed.
    #[error("read failed")]
    Read(#[source] Arc<std::io::Error>),
    /// The peer announced a frame over [`frame::MAX_FRAME`].
    #[error(
        "the peer announced a {len}-byte frame (limit {} bytes)",
        frame::MAX_FRAME
    )]
    FrameTooLarge { len: usize },
    /// Every `NodeConnection` handle was dropped.
    #[error("every handle was dropped")]
    HandlesDropped,
    /// No data from the peer for its net_ticktime.
    #[error("no data from the peer for {0:?} (tick timeout)")]
    TickTimeout(Duration),
    /// Writing the socket failed.
    #[error("write failed")]
    Write(#[source] Arc<std::io::Error>),
    /// The peer stopped reading: a write did not finish in time.
    #[error("write stalled for {0:?}")]
    WriteStalled(Duration),
}

enum Event {
    Shutdown,
    Read(std::io::Result<usize>),
    Command(Option<Command>),
    Tick,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Runner<S> {
    /// Runs until the connection ends; returns why.
    pub(super) async fn run(mut self) -> CloseReason {
        let mut ticker = ticker(self.tick);
        loop {
            if self.rx.capacity() - self.rx.len() < 4096 {
                self.rx.reserve(16 * 1024);
            }
            // Every branch is cancel-safe: read_buf only appends what it read.
            let event = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => Event::Shutdown,
                read = self.stream.read_buf(&mut self.rx) => Event::Read(read),
                command = self.commands.recv() => Event::Command(command),
                _ = ticker.tick() => Event::Tick,
            };
            match event {
                Event::Shutdown => return CloseReason::Local,
                Event::Read(Ok(0)) => return CloseReason::PeerClosed,
                Event::Read(Err(e)) => return CloseReason::Read(Arc::new(e)),
                Event::Read(Ok(_)) => {
                    self.last_read = Instant::now();
                    while let Some(frame) = frame::decode(&mut self.rx) {
                        if let Frame::TooLarge(len) = frame {
                            return CloseReason::FrameTooLarge { len };
                        }
                        self.on_frame(frame);
                    }
                }
                Event::Command(None) => return CloseReason::HandlesDropped,
                Event::Command(Some(command)) => {
                    let mut next = Some(command);
                    // Drain what is queued so a burst of RPCs goes out in one write.
                    while let Some(command) = next {
                        if let Some(tick) = self.on_command(command) {
                            ticker = self::ticker(tick);
                        }
                        next = self.commands.try_recv().ok();
                    }
                }
                Event::Tick => {
                    if let Some(silence) = self.silence
                        && self.last_read.elapsed() >= silence
                    {
                        return CloseReason::TickTimeout(silence);
                    }
                    if self.last_write.elapsed() >= self.tick / 2 {
                        self.out.extend_from_slice(&frame::TICK);
                    }
                }
            }
            if !self.out.is_empty()
                && let Err(reason) = self.flush().await
            {
                return reason;
            }
        }
    }

    async fn flush(&mut self) -> Result<(), CloseReason> {
        // A peer that stops reading is as dead as a silent one.
        let limit = self.silence.unwrap_or(Duration::from_secs(60));
        let write = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(limit, write).await {
            Ok(Ok(())) => {
                self.out.clear();
                self.last_write = Instant::now();
                Ok(())
            }
            Ok(Err(e)) => Err(CloseReason::Write(Arc::new(e))),
            Err(_) => Err(CloseReason::WriteStalled(limit)),
        }
    }

    /// Returns the new tick period when it changes.
    fn on_command(&mut self, command: Command) -> Option<Duration> {
        match command {
            Command::Send { frame, pending } => {
                if let Some((key, reply)) = pending {
                    self.pending.insert(key, reply);
                }
                self.out.extend_from_slice(&frame);
                None
            }
            Command::Forget(key) => {
                self.pending.remove(&key);
                None
            }
            Command::Ticktime(ticktime) => {
                // Erlang ticks at a quarter of net_ticktime and gives up on a
                // peer after a whole net_ticktime of silence: do the same.
                self.tick = (ticktime / 4).max(Duration::from_millis(100));
                self.silence = Some(ticktime);
                tracing::debug!(node = %self.node, ?ticktime, "peer net_ticktime");
                Some(self.tick)
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) {
        match frame {
            // Answer at once: it costs nothing and keeps the peer sure of us.
            Frame::Tick => self.out.extend_from_slice(&frame::TICK),
            Frame::Message(message) => match message {
                Message::Send(m) => self.on_reply(m.message),
                Message::SendSender(m) => self.on_reply(m.message),
                Message::SendTt(m) => self.on_reply(m.message),
                Message::SendSenderTt(m) => self.on_reply(m.message),
                Message::AliasSend(m) => self.on_reply(m.message),
                Message::AliasSendTt(m) => self.on_reply(m.message),
                // We never link or monitor, so exits and the like are noise.
                other => tracing::trace!(node = %self.node, ?other, "ignored message"),
            },
            Frame::Skipped(why) => tracing::debug!(node = %self.node, %why, "skipped a frame"),
            // Handled by the read loop, which closes the connection.
            Frame::TooLarge(_) => {}
        }
    }

    /// `{Ref, Result}` from rex → the RPC waiting on `Ref`.
    fn on_reply(&mut self, message: Term) {
        let Term::Tuple(Tuple { mut elements }) = message else {
            return;
        };
        if elements.len() != 2 {
            return;
        }
        let result = elements.pop();
        let Some(Term::Reference(reference)) = elements.pop() else {
            return;
        };
        if reference.node.name != self.local_name {
            return;
        }
        if let (Some(reply), Some(result)) = (self.pending.remove(&reference.id), result) {
            // The caller may have gone meanwhile: nothing to do then.
            let _ = reply.send(result);
        }
    }
}

/// Ticks on the shared grid (`crate::time`): every connection with the
/// same period checks its peer in the same wake-up (`Skip`: a late tick
/// does not shift the later ones off the grid).
fn ticker(period: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(crate::time::next_on_grid(period), period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ticker
}
