//! Erlang distribution client: deployex talks to the BEAM nodes it runs as a
//! **hidden node** (it never joins the release's mesh), over `erl_dist`.
//!
//! What it owns: EPMD lookups ([`epmd`]), the distribution handshake, and one
//! [`NodeConnection`] per peer node whose single runner task owns the socket.
//!
//! Invariants:
//! - Only the runner task reads or writes the socket; callers talk to it
//!   through a channel. Each outgoing frame is encoded into one buffer and
//!   written with one `write_all` (with `TCP_NODELAY`): erl_dist's own sender
//!   does three small writes per frame, which costs ~44 ms per RPC through
//!   Nagle + delayed ACK.
//! - Every RPC uses a fresh pid and a fresh reference; replies are matched by
//!   reference, so any number of RPCs may be in flight on one connection.
//!   A reply that comes after its caller gave up is dropped.
//! - A connection is dead as soon as the socket closes, a write stalls, or
//!   nothing arrives from the peer for its `net_ticktime` (asked for right
//!   after the handshake). We send our own ticks at a quarter of it.
//! - One connection per (local node name, peer): the peer refuses a second
//!   one with the same local name while the first is up.
//!
//! Transport: [`NodeConnection::connect`] does EPMD + TCP, plus mutual TLS
//! when [`DistConfig::tls`] is set (see [`tls`]). Any other byte
//! stream can be plugged in with [`NodeConnection::connect_over`]. For
//! transports whose *handshake* framing differs (inet_tls uses 4-byte
//! lengths during the handshake where erl_dist writes 2), run [`handshake`]
//! over a re-framing adapter wrapped around the stream, take the stream back
//! out of the adapter, and hand it to [`NodeConnection::from_handshake`]:
//! after the handshake the framing is the same for every transport.

mod connection;
pub mod epmd;
mod frame;
mod runner;
pub mod term;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

pub use connection::{CloseReason, Handshake, NodeConnection, handshake};
pub use erl_dist::term::Term;
pub use term::{
    as_atom, as_int, as_list, as_tuple, atom, binary, charlist, int, list, pretty, term_to_string,
    tuple,
};
pub use tls::{TlsError, TlsSettings};

/// The EPMD port when `ERL_EPMD_PORT` is not set.
pub const DEFAULT_EPMD_PORT: u16 = 4369;

/// How deployex reaches the nodes it supervises.
#[derive(Debug, Clone)]
pub struct DistConfig {
    /// The nodes' cookie (the peer closes the socket if it differs).
    pub cookie: String,
    /// Where EPMD runs; nodes listen on the same host, since EPMD only
    /// knows local nodes.
    pub epmd_host: String,
    /// EPMD's port, see [`DistConfig::epmd_port_from_env`].
    pub epmd_port: u16,
    /// Our own node name (`name@host`), as the peer sees it.
    pub local_node: String,
    /// Bound on a whole connect: EPMD lookup, TCP, handshake, first RPC.
    pub connect_timeout: Duration,
    /// Mutual TLS (`-proto_dist inet_tls` on the nodes); `None`: plain TCP.
    pub tls: Option<Arc<TlsSettings>>,
}

impl DistConfig {
    /// A config with the usual defaults: EPMD on 127.0.0.1 at the port of
    /// `ERL_EPMD_PORT` (or 4369), 5 s connect timeout.
    pub fn new(cookie: impl Into<String>, local_node: impl Into<String>) -> Self {
        Self {
            cookie: cookie.into(),
            epmd_host: "127.0.0.1".to_owned(),
            epmd_port: Self::epmd_port_from_env(),
            local_node: local_node.into(),
            connect_timeout: Duration::from_secs(5),
            tls: None,
        }
    }

    /// The same config, connecting over mutual TLS.
    pub fn with_tls(mut self, tls: Arc<TlsSettings>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// EPMD's port as the Erlang tools see it: `ERL_EPMD_PORT`, else 4369.
    /// An unparsable value falls back to the default (and is logged), as
    /// `erl` itself would not start with it either.
    pub fn epmd_port_from_env() -> u16 {
        match std::env::var("ERL_EPMD_PORT") {
            Ok(value) => value.trim().parse().unwrap_or_else(|_| {
                tracing::warn!(%value, "ERL_EPMD_PORT is not a port number; using 4369");
                DEFAULT_EPMD_PORT
            }),
            Err(_) => DEFAULT_EPMD_PORT,
        }
    }
}

/// Why talking to a node failed.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The node name is not `name@host`.
    #[error("invalid node name {node:?}: expected name@host")]
    InvalidNodeName { node: String },

    /// EPMD could not be asked (not running on that port, or misbehaving).
    #[error(
        "cannot query EPMD at {epmd} for node {node} (is a node running with this ERL_EPMD_PORT?)"
    )]
    Epmd {
        node: String,
        epmd: String,
        #[source]
        source: std::io::Error,
    },

    /// EPMD does not know the node: it is not running (yet).
    #[error("node {node} is not registered in EPMD (not running?)")]
    NodeNotRegistered { node: String },

    /// The TCP connection to the node's distribution port failed.
    #[error("cannot connect to node {node}")]
    Connect {
        node: String,
        #[source]
        source: std::io::Error,
    },

    /// The distribution handshake failed; `reason` says what the peer did.
    #[error("handshake with node {node} failed: {reason}")]
    Handshake { node: String, reason: String },

    /// TLS failed; `reason` names the likely cause (other CA, certificate
    /// refused by the node, node not using TLS...).
    #[error("TLS with node {node} failed: {reason}")]
    Tls { node: String, reason: String },

    /// The connection is gone (socket closed, tick timeout, closed locally).
    #[error("connection to node {node} is closed")]
    Closed { node: String },

    /// Something did not finish in time.
    #[error("timed out waiting for {what} on node {node}")]
    Timeout { node: String, what: String },

    /// The RPC ran and failed on the node (`{badrpc, Reason}`).
    #[error("rpc on node {node} failed: {reason}")]
    BadRpc { node: String, reason: String },

    /// A term could not be encoded (e.g. an atom longer than 255 chars).
    #[error("cannot encode a message for node {node}")]
    Encode {
        node: String,
        #[source]
        source: erl_dist::message::SendError,
    },

    /// A reply had an unexpected shape.
    #[error("unexpected reply from node {node} to {what}: {reply}")]
    Decode {
        node: String,
        what: String,
        reply: String,
    },
}
