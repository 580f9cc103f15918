//! One live distribution connection: the handshake and the handle callers
//! hold ([`NodeConnection`]); the task that owns the socket is in `runner`.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use erl_dist::LOWEST_DISTRIBUTION_PROTOCOL_VERSION;
use erl_dist::handshake::{ClientSideHandshake, HandshakeError};
use erl_dist::message::Message;
use erl_dist::node::{Creation, LocalNode, NodeName};
use erl_dist::term::{Atom, List, Pid, Reference, Term, Tuple};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::TokioAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;

use super::frame;
pub use super::runner::CloseReason;
use super::runner::Runner;
use super::term::{as_atom, as_int, as_list, as_tuple, atom, pretty};
use super::{DistConfig, DistError, epmd, tls};

/// Tick period until the peer's `net_ticktime` is known (and if it never is).
const FALLBACK_TICK: Duration = Duration::from_secs(1);

/// What a finished handshake leaves behind: who we are on this connection.
/// Hand it with the stream to [`NodeConnection::from_handshake`].
#[derive(Debug)]
pub struct Handshake {
    node: String,
    local_name: String,
    creation: u32,
    /// Bounds the first RPC, which asks for the peer's `net_ticktime`.
    setup_timeout: Duration,
    /// Whether the stream is TLS (for [`NodeConnection::is_tls`]).
    tls: bool,
}

impl Handshake {
    /// Marks the connection as running over TLS; for callers of the split
    /// [`handshake`] API that bring their own TLS stream.
    pub fn over_tls(mut self) -> Self {
        self.tls = true;
        self
    }
}

/// Runs the client side of the distribution handshake over `stream` and
/// gives the stream back. erl_dist frames handshake messages with 2-byte
/// lengths; wrap `stream` in an adapter if the transport frames them
/// differently (inet_tls: 4 bytes).
pub async fn handshake<S>(
    stream: S,
    node: &str,
    cfg: &DistConfig,
) -> Result<(S, Handshake), DistError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    split_node(node)?;
    let local_name: NodeName = cfg
        .local_node
        .parse()
        .map_err(|_| DistError::InvalidNodeName {
            node: cfg.local_node.clone(),
        })?;
    // Creation 0 means "any incarnation" in some places: avoid it.
    let creation = Creation::new(rand::random::<u32>().max(1));
    let local = LocalNode::new(local_name, creation);
    let failed = |e: HandshakeError| DistError::Handshake {
        node: node.to_owned(),
        reason: handshake_reason(&e, &cfg.local_node, cfg.tls.is_none()),
    };
    let mut hs = ClientSideHandshake::new(stream.compat(), local, &cfg.cookie);
    hs.execute_send_name(LOWEST_DISTRIBUTION_PROTOCOL_VERSION)
        .await
        .map_err(failed)?;
    // `false`: when the peer answers `alive` (it still has a connection from
    // our name) give up with a clear error; erl_dist 0.8 cannot send the
    // `true` answer anyway (the status is never flushed).
    let (stream, peer) = hs.execute_rest(false).await.map_err(failed)?;
    tracing::debug!(node, peer = %peer.name, flags = peer.flags.bits(), "handshake done");
    Ok((
        stream.into_inner(),
        Handshake {
            node: node.to_owned(),
            local_name: cfg.local_node.clone(),
            creation: creation.get(),
            setup_timeout: cfg.connect_timeout,
            tls: false,
        },
    ))
}

/// Turns erl_dist's terse handshake errors into what an operator can act on.
/// `plain`: we did not use TLS, so a TLS node (which answers with a TLS
/// alert, or just closes) may be the cause of a garbled or closed handshake.
fn handshake_reason(e: &HandshakeError, local: &str, plain: bool) -> String {
    let reason = handshake_cause(e, local);
    let garbled = !matches!(
        e,
        HandshakeError::CookieMismatch
            | HandshakeError::NotAllowed
            | HandshakeError::AlreadyActive
            | HandshakeError::OngoingHandshake
    );
    if plain && garbled {
        format!(
            "{reason}; or the node uses TLS distribution (-proto_dist inet_tls) \
             and deployex has no TLS certificates configured"
        )
    } else {
        reason
    }
}

fn handshake_cause(e: &HandshakeError, local: &str) -> String {
    use std::io::ErrorKind;
    match e {
        HandshakeError::Io(io)
            if matches!(
                io.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
            ) =>
        {
            "the peer closed the connection during the handshake (cookie rejected?)".to_owned()
        }
        HandshakeError::CookieMismatch => {
            "the peer's challenge answer does not match our cookie".to_owned()
        }
        HandshakeError::NotAllowed => {
            format!("the peer does not allow connections from {local} (not_allowed)")
        }
        HandshakeError::AlreadyActive => format!(
            "the peer still has a connection from {local} (status alive); \
             use another local node name or wait for the old connection to drop"
        ),
        HandshakeError::OngoingHandshake => {
            format!("the peer is already setting up a connection with {local} (status nok); retry")
        }
        other => other.to_string(),
    }
}

/// `name@host` → `(name, host)`.
fn split_node(node: &str) -> Result<(&str, &str), DistError> {
    match node.split_once('@') {
        Some((name, host)) if !name.is_empty() && !host.is_empty() => Ok((name, host)),
        _ => Err(DistError::InvalidNodeName {
            node: node.to_owned(),
        }),
    }
}

/// Identifies a pending RPC: the id words of its reference.
pub(super) type RefKey = Vec<u32>;

pub(super) enum Command {
    /// Write `frame`; if `pending` is set, route the reply to it.
    Send {
        frame: Vec<u8>,
        pending: Option<(RefKey, oneshot::Sender<Term>)>,
    },
    /// The caller gave up: drop its pending entry.
    Forget(RefKey),
    /// The peer's `net_ticktime`, once known.
    Ticktime(Duration),
}

/// One live connection to one node. Cheap to clone; all clones share the
/// connection, which closes when the last clone is dropped (or on
/// [`NodeConnection::close`]).
#[derive(Clone)]
pub struct NodeConnection {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    local_name: String,
    creation: u32,
    /// Source of fresh pids and references.
    next_id: AtomicU64,
    /// Makes our references differ between connections.
    ref_salt: u32,
    commands: mpsc::UnboundedSender<Command>,
    shutdown: CancellationToken,
    done: CancellationToken,
    close_reason: Arc<OnceLock<CloseReason>>,
    tls: bool,
    /// When the connection was made, and when (ms after that) an RPC last
    /// got an answer (`u64::MAX`: never): an answer is proof that the node
    /// runs, so a liveness check need not send one of its own.
    created: std::time::Instant,
    last_answer_ms: AtomicU64,
}

impl fmt::Debug for NodeConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeConnection")
            .field("node", &self.inner.node)
            .field("alive", &self.is_alive())
            .finish()
    }
}

impl NodeConnection {
    /// Connects to `node` (`name@host`): EPMD lookup on `cfg.epmd_host`,
    /// TCP to the node's port there, TLS if `cfg.tls` is set (the node's
    /// certificate must be valid for `host`), handshake. Bounded by
    /// `cfg.connect_timeout`.
    pub async fn connect(node: &str, cfg: &DistConfig) -> Result<Self, DistError> {
        let (name, host) = split_node(node)?;
        let attempt = async {
            let port = epmd::port_please(&cfg.epmd_host, cfg.epmd_port, node, name)
                .await?
                .ok_or_else(|| DistError::NodeNotRegistered {
                    node: node.to_owned(),
                })?;
            let connect_err = |source| DistError::Connect {
                node: node.to_owned(),
                source,
            };
            let stream = TcpStream::connect((cfg.epmd_host.as_str(), port))
                .await
                .map_err(connect_err)?;
            // Without it every RPC waits ~40 ms for Nagle + delayed ACK.
            stream.set_nodelay(true).map_err(connect_err)?;
            if let Some(settings) = &cfg.tls {
                let (stream, hs) = tls::handshake_tls(stream, node, host, cfg, settings).await?;
                return Self::from_handshake(stream, hs.over_tls()).await;
            }
            let (stream, hs) = handshake(stream, node, cfg).await?;
            Self::from_handshake(stream, hs).await
        };
        with_timeout(cfg.connect_timeout, node, "connect", attempt).await?
    }

    /// Like [`NodeConnection::connect`] over an already open transport
    /// (e.g. TLS). Set `TCP_NODELAY` on the underlying socket.
    pub async fn connect_over<S>(node: &str, cfg: &DistConfig, stream: S) -> Result<Self, DistError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let attempt = async {
            let (stream, hs) = handshake(stream, node, cfg).await?;
            Self::from_handshake(stream, hs).await
        };
        with_timeout(cfg.connect_timeout, node, "connect", attempt).await?
    }

    /// Starts the connection on a stream that went through [`handshake`]:
    /// spawns the runner and learns the peer's `net_ticktime`.
    pub async fn from_handshake<S>(stream: S, hs: Handshake) -> Result<Self, DistError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let done = CancellationToken::new();
        let close_reason = Arc::new(OnceLock::new());
        let runner = Runner {
            stream,
            node: hs.node.clone(),
            local_name: hs.local_name.clone(),
            commands: command_rx,
            shutdown: shutdown.clone(),
            pending: HashMap::new(),
            rx: Vec::with_capacity(16 * 1024),
            out: Vec::with_capacity(4 * 1024),
            tick: FALLBACK_TICK,
            silence: None,
            last_read: Instant::now(),
            last_write: Instant::now(),
        };
        {
            let done = done.clone();
            let close_reason = close_reason.clone();
            tokio::spawn(async move {
                let node = runner.node.clone();
                let reason = runner.run().await;
                let text = crate::error::error_chain(&reason);
                tracing::info!(%node, reason = %text, "distribution connection closed");
                let _ = close_reason.set(reason);
                done.cancel();
            });
        }
        let conn = NodeConnection {
            inner: Arc::new(Inner {
                tls: hs.tls,
                node: hs.node,
                local_name: hs.local_name,
                creation: hs.creation,
                next_id: AtomicU64::new(1),
                ref_salt: rand::random(),
                commands,
                shutdown,
                done,
                close_reason,
                created: std::time::Instant::now(),
                last_answer_ms: AtomicU64::new(u64::MAX),
            }),
        };
        conn.learn_ticktime(hs.setup_timeout).await?;
        Ok(conn)
    }

    /// Asks the peer for its `net_ticktime` so we tick often enough and
    /// notice its silence as fast as it would notice ours.
    async fn learn_ticktime(&self, timeout: Duration) -> Result<(), DistError> {
        let reply = self
            .rpc("net_kernel", "get_net_ticktime", vec![], timeout)
            .await;
        let secs = match &reply {
            Ok(t) => as_int(t).or_else(|| {
                // {ongoing_change_to, T}
                as_tuple(t).and_then(|e| e.get(1)).and_then(as_int)
            }),
            Err(DistError::BadRpc { .. } | DistError::Decode { .. }) => None,
            Err(_) => return reply.map(|_| ()),
        };
        match secs.and_then(|s| u64::try_from(s).ok()).filter(|&s| s > 0) {
            Some(secs) => {
                let _ = self
                    .inner
                    .commands
                    .send(Command::Ticktime(Duration::from_secs(secs)));
            }
            None => tracing::warn!(
                node = %self.inner.node,
                reply = ?reply.map(|t| pretty(&t)),
                "unknown net_ticktime: ticking every second, no silence detection"
            ),
        }
        Ok(())
    }

    /// The peer's node name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Whether the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.inner.tls
    }

    /// `false` once the connection is closed or closing.
    pub fn is_alive(&self) -> bool {
        !self.inner.done.is_cancelled() && !self.inner.shutdown.is_cancelled()
    }

    /// Resolves when the connection is gone: socket closed, tick timeout,
    /// write error or [`NodeConnection::close`].
    pub async fn closed(&self) {
        self.inner.done.cancelled().await;
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.inner.close_reason.get().cloned()
    }

    /// True when an RPC on this connection got an answer (even `badrpc`:
    /// `rex` ran) within the last `window`.
    pub fn answered_within(&self, window: Duration) -> bool {
        let last = self.inner.last_answer_ms.load(Ordering::Relaxed);
        last != u64::MAX
            && (self.inner.created.elapsed().as_millis() as u64).saturating_sub(last)
                <= window.as_millis() as u64
    }

    /// Closes the connection (for every clone). Pending RPCs fail with
    /// [`DistError::Closed`].
    pub fn close(&self) {
        self.inner.shutdown.cancel();
    }

    /// `module:function(args...)` on the node through its `rex` server, like
    /// `rpc:call/5`. A `{badrpc, Reason}` answer (exception, undefined
    /// function...) becomes [`DistError::BadRpc`].
    pub async fn rpc(
        &self,
        module: &str,
        function: &str,
        args: Vec<Term>,
        timeout: Duration,
    ) -> Result<Term, DistError> {
        let arity = args.len();
        let inner = &*self.inner;
        let n = inner.next_id.fetch_add(1, Ordering::Relaxed);
        // Old pid formats have 15 id bits and 13 serial bits: stay within.
        let pid = Pid::new(
            inner.local_name.as_str(),
            (n & 0x7fff) as u32,
            ((n >> 15) & 0x1fff) as u32,
            inner.creation,
        );
        let key: RefKey = vec![(n & 0x3ffff) as u32, (n >> 18) as u32, inner.ref_salt];
        let reference = Reference {
            node: Atom::from(inner.local_name.as_str()),
            id: key.clone(),
            creation: inner.creation,
        };
        let request = Tuple::from(vec![
            atom("call"),
            atom(module),
            atom(function),
            Term::List(List::from(args)),
            atom("user"),
        ]);
        let from = Tuple::from(vec![Term::Pid(pid.clone()), Term::from(reference)]);
        let gen_call = Tuple::from(vec![atom("$gen_call"), from.into(), request.into()]);
        let mut frame = Vec::new();
        frame::encode(
            Message::reg_send(pid, Atom::from("rex"), gen_call.into()),
            &mut frame,
        )
        .map_err(|source| DistError::Encode {
            node: inner.node.clone(),
            source,
        })?;

        let (reply_tx, reply_rx) = oneshot::channel();
        let closed = || DistError::Closed {
            node: inner.node.clone(),
        };
        inner
            .commands
            .send(Command::Send {
                frame,
                pending: Some((key.clone(), reply_tx)),
            })
            .map_err(|_| closed())?;
        let mut guard = ForgetOnDrop {
            commands: &inner.commands,
            key: Some(key),
        };
        let what = format!("rpc {module}:{function}/{arity}");
        let reply = with_timeout(timeout, &inner.node, &what, reply_rx)
            .await?
            .map_err(|_| closed())?;
        guard.key = None;
        let now_ms = inner.created.elapsed().as_millis() as u64;
        inner.last_answer_ms.store(now_ms, Ordering::Relaxed);
        match as_tuple(&reply) {
            Some([tag, reason]) if as_atom(tag) == Some("badrpc") => Err(DistError::BadRpc {
                node: inner.node.clone(),
                reason: describe_badrpc(reason),
            }),
            _ => Ok(reply),
        }
    }
}

/// Tells the runner to drop a pending RPC whose caller timed out or was
/// cancelled, so late (or never coming) replies don't pile up.
struct ForgetOnDrop<'a> {
    commands: &'a mpsc::UnboundedSender<Command>,
    key: Option<RefKey>,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let _ = self.commands.send(Command::Forget(key));
        }
    }
}

async fn with_timeout<F: Future>(
    timeout: Duration,
    node: &str,
    what: &str,
    fut: F,
) -> Result<F::Output, DistError> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| DistError::Timeout {
            node: node.to_owned(),
            what: what.to_owned(),
        })
}

/// `{badrpc, Reason}` → text. The common `undef` case gets a plain sentence.
fn describe_badrpc(reason: &Term) -> String {
    let undef = as_tuple(reason)
        .filter(|t| t.len() == 2 && as_atom(&t[0]) == Some("EXIT"))
        .and_then(|t| as_tuple(&t[1]))
        .filter(|t| t.len() == 2 && as_atom(&t[0]) == Some("undef"))
        .and_then(|t| as_list(&t[1]))
        .and_then(|frames| frames.into_iter().next());
    if let Some(frame) = undef
        && let Some([m, f, args, ..]) = as_tuple(&frame)
        && let (Some(m), Some(f)) = (as_atom(m), as_atom(f))
    {
        let arity = as_list(args)
            .map(|a| a.len() as i64)
            .or_else(|| as_int(args))
            .map_or_else(|| "?".to_owned(), |a| a.to_string());
        return format!("undefined function {m}:{f}/{arity}");
    }
    pretty(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::term::{charlist, list, tuple};

    #[test]
    fn undef_badrpc_reads_as_a_sentence() {
        let reason = tuple(vec![
            atom("EXIT"),
            tuple(vec![
                atom("undef"),
                list(vec![tuple(vec![
                    atom("nomod"),
                    atom("nofun"),
                    list(vec![atom("a"), atom("b")]),
                    list(vec![]),
                ])]),
            ]),
        ]);
        assert_eq!(describe_badrpc(&reason), "undefined function nomod:nofun/2");
        assert_eq!(describe_badrpc(&atom("nodedown")), "nodedown");
        let other = tuple(vec![atom("EXIT"), charlist("boom")]);
        assert_eq!(describe_badrpc(&other), r#"{'EXIT',"boom"}"#);
    }

    #[test]
    fn node_names_need_both_parts() {
        assert!(split_node("a@b").is_ok());
        for bad in ["ab", "@b", "a@", ""] {
            assert!(
                matches!(split_node(bad), Err(DistError::InvalidNodeName { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn handshake_eof_suggests_the_cookie() {
        let eof = HandshakeError::Io(std::io::ErrorKind::UnexpectedEof.into());
        assert!(handshake_reason(&eof, "me@h", false).contains("cookie rejected?"));
        assert!(handshake_reason(&eof, "me@h", true).contains("inet_tls"));
        let active = handshake_reason(&HandshakeError::AlreadyActive, "me@h", true);
        assert!(active.contains("me@h") && !active.contains("inet_tls"));
    }
}
