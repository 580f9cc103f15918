//! RPCs through the watcher for the rest of the engine: [`WatcherRpc`]
//! (hot upgrades), the node's boot phase (readiness) and `init:stop()`.

use super::*;

/// RPCs to one node through the watcher's connection (used by hot upgrades:
/// no extra VM, no extra connection).
pub struct WatcherRpc {
    pub node: String,
}

impl crate::upgrade::Rpc for WatcherRpc {
    async fn call(
        &self,
        module: &str,
        function: &str,
        args: Vec<Term>,
        timeout: Duration,
    ) -> Result<Term, RpcError> {
        let watcher: ActorRef<WatcherMsg> = ractor::registry::where_is(NAME)
            .ok_or(RpcError::WatcherDown)?
            .into();
        let wait = timeout + Duration::from_secs(1);
        ractor::call_t!(
            watcher,
            |reply| WatcherMsg::Rpc {
                node: self.node.clone(),
                module: module.to_string(),
                function: function.to_string(),
                args,
                timeout,
                reply,
            },
            wait.as_millis() as u64
        )
        .map_err(|e| RpcError::WatcherSilent {
            detail: e.to_string(),
        })?
    }
}

/// How far `node` got through its boot: `init:get_status()` over its
/// link. `{started, _}` is [`BootPhase::Started`]; `{starting, _}` and
/// `{stopping, _}` are [`BootPhase::Starting`] (not ready either way).
pub async fn boot_phase(node: &str, timeout: Duration) -> Result<BootPhase, RpcError> {
    use crate::upgrade::Rpc;
    let term = WatcherRpc {
        node: node.to_string(),
    }
    .call("init", "get_status", vec![], timeout)
    .await?;
    parse_boot_status(&term).ok_or_else(|| {
        RpcError::Dist(DistError::Decode {
            node: node.to_string(),
            what: "init:get_status()".to_string(),
            reply: crate::dist::pretty(&term),
        })
    })
}

/// `{InternalStatus, ProvidedStatus}` → the boot phase.
pub fn parse_boot_status(term: &Term) -> Option<BootPhase> {
    match crate::dist::as_tuple(term)? {
        [status, _] => match crate::dist::as_atom(status)? {
            "started" => Some(BootPhase::Started),
            "starting" | "stopping" => Some(BootPhase::Starting),
            _ => None,
        },
        _ => None,
    }
}

/// Asks `node` to stop (`init:stop()`, the graceful way a release stops).
pub async fn stop_node(node: &str, timeout: Duration) -> Result<(), RpcError> {
    use crate::upgrade::Rpc;
    WatcherRpc {
        node: node.to_string(),
    }
    .call("init", "stop", vec![], timeout)
    .await
    .map(|_| ())
}
