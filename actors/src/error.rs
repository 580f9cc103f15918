//! The error vocabulary shared across the actor layer: the one renderer of
//! an error chain, and [`RpcError`], the failure of an RPC to an instance's
//! node (whichever way it went: the watcher's link or a connection of the
//! caller's own).
//!
//! Invariants:
//! - Every error the engine shows (logs, `last_error`, events, API) is
//!   rendered with [`error_chain`], so the causes are never lost and the
//!   format is the same everywhere (`outer: cause: cause`). There is no
//!   second copy of this function in the workspace.
//! - A caller decides on a variant, never on the text of a message.

use crate::dist::DistError;

/// `err: source: source...` on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        s.push_str(": ");
        s.push_str(&e.to_string());
        source = e.source();
    }
    s
}

/// Why an RPC to a node did not bring back a term.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The OtpNodeWatcher is not registered (restarting, or shutting down).
    #[error("the OtpNodeWatcher is not running")]
    WatcherDown,
    /// The OtpNodeWatcher did not answer the call in time, or stopped
    /// while it was asked (`detail`: ractor's reason).
    #[error("the OtpNodeWatcher did not answer: {detail}")]
    WatcherSilent { detail: String },
    /// The watcher has no live link to the node now.
    #[error("node {node} is not connected")]
    NotConnected { node: String },
    /// The link failed, the RPC timed out, the node answered `{badrpc, _}`
    /// or something that could not be decoded.
    #[error(transparent)]
    Dist(#[from] DistError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_names_every_cause_in_order() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
        let rpc = RpcError::Dist(DistError::Timeout {
            node: "a@h".into(),
            what: "rpc erlang:node/0".into(),
        });
        assert_eq!(
            error_chain(&rpc),
            "timed out waiting for rpc erlang:node/0 on node a@h"
        );
        assert_eq!(
            error_chain(&RpcError::NotConnected { node: "a@h".into() }),
            "node a@h is not connected"
        );
    }
}
