//! OtpNodeWatcher: one Erlang distribution connection per running instance.
//!
//! Instances ask it to `Watch` their node when their OS process starts (and
//! again on every health tick: the message is idempotent, so a restarted
//! watcher learns every node again within a second). For each watched node a
//! connector task keeps a connection open, reconnecting with backoff, and
//! posts `Connected` / `Disconnected` back. A lost node is seen at once:
//! the connection's `closed()` resolves when the socket closes.
//!
//! RPCs never run inside the handler: the handler looks up the connection
//! and spawns a task that awaits the reply and answers the caller.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;

use crate::config::EngineConfig;
use crate::dist::{DistConfig, NodeConnection, Term};
use crate::recorder::{Describe, Recorder};

pub const NAME: &str = "otp_node_watcher";

/// Connection state of one node, for status and readiness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub connected: bool,
    pub tls: bool,
    pub last_error: Option<String>,
}

pub enum WatcherMsg {
    /// Keep a connection to this node (idempotent).
    Watch { node: String },
    /// Drop the connection and stop reconnecting.
    Unwatch { node: String },
    Connected {
        node: String,
        generation: u64,
        conn: NodeConnection,
    },
    Disconnected {
        node: String,
        generation: u64,
        error: String,
    },
    Snapshot {
        reply: RpcReplyPort<HashMap<String, NodeInfo>>,
    },
    Rpc {
        node: String,
        module: String,
        function: String,
        args: Vec<Term>,
        timeout: Duration,
        reply: RpcReplyPort<Result<Term, String>>,
    },
    /// Fault injection for the supervision tests.
    InjectPanic,
}

impl Describe for WatcherMsg {
    fn kind(&self) -> &'static str {
        match self {
            WatcherMsg::Watch { .. } => "Watch",
            WatcherMsg::Unwatch { .. } => "Unwatch",
            WatcherMsg::Connected { .. } => "Connected",
            WatcherMsg::Disconnected { .. } => "Disconnected",
            WatcherMsg::Snapshot { .. } => "Snapshot",
            WatcherMsg::Rpc { .. } => "Rpc",
            WatcherMsg::InjectPanic => "InjectPanic",
        }
    }
    fn summary(&self) -> String {
        match self {
            WatcherMsg::Watch { node } | WatcherMsg::Unwatch { node } => node.clone(),
            WatcherMsg::Connected {
                node, generation, ..
            } => format!("{node} gen={generation}"),
            WatcherMsg::Disconnected {
                node,
                generation,
                error,
            } => format!("{node} gen={generation}: {error}"),
            WatcherMsg::Rpc {
                node,
                module,
                function,
                args,
                ..
            } => format!("{node} {module}:{function}/{}", args.len()),
            _ => String::new(),
        }
    }
}

pub struct OtpNodeWatcher;

struct Entry {
    generation: u64,
    conn: Option<NodeConnection>,
    task: JoinHandle<()>,
    last_error: Option<String>,
}

pub struct WatcherState {
    dist: Arc<DistConfig>,
    nodes: HashMap<String, Entry>,
    next_generation: u64,
    recorder: Recorder,
}

impl Actor for OtpNodeWatcher {
    type Msg = WatcherMsg;
    type State = WatcherState;
    type Arguments = Arc<EngineConfig>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        cfg: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let tls = match &cfg.tls_cert_path {
            None => None,
            Some(dir) => Some(Arc::new(crate::dist::TlsSettings::load(dir).map_err(
                |e| {
                    format!(
                        "mTLS certificates in {}: {}",
                        dir.display(),
                        crate::release_fetcher::error_chain(&e)
                    )
                },
            )?)),
        };
        let dist = DistConfig {
            cookie: cfg.cookie.clone(),
            epmd_host: "127.0.0.1".to_string(),
            epmd_port: cfg.epmd_port,
            local_node: format!("deployex@{}", cfg.hostname),
            connect_timeout: Duration::from_secs(3),
            tls,
        };
        Ok(WatcherState {
            dist: Arc::new(dist),
            nodes: HashMap::new(),
            next_generation: 1,
            recorder: Recorder::for_actor(NAME),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for (_, entry) in state.nodes.drain() {
            entry.task.abort();
            if let Some(conn) = entry.conn {
                conn.close();
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _rec = state.recorder.begin(&msg);
        match msg {
            WatcherMsg::Watch { node } => {
                if !state.nodes.contains_key(&node) {
                    let generation = state.next_generation;
                    state.next_generation += 1;
                    let task = tokio::spawn(connector(
                        myself.clone(),
                        node.clone(),
                        generation,
                        state.dist.clone(),
                    ));
                    state.nodes.insert(
                        node,
                        Entry {
                            generation,
                            conn: None,
                            task,
                            last_error: None,
                        },
                    );
                }
            }
            WatcherMsg::Unwatch { node } => {
                if let Some(entry) = state.nodes.remove(&node) {
                    entry.task.abort();
                    if let Some(conn) = entry.conn {
                        conn.close();
                    }
                }
            }
            WatcherMsg::Connected {
                node,
                generation,
                conn,
            } => match state.nodes.get_mut(&node) {
                Some(entry) if entry.generation == generation => {
                    tracing::info!(%node, "distribution connected");
                    entry.conn = Some(conn);
                    entry.last_error = None;
                }
                _ => conn.close(),
            },
            WatcherMsg::Disconnected {
                node,
                generation,
                error,
            } => {
                if let Some(entry) = state.nodes.get_mut(&node)
                    && entry.generation == generation
                {
                    if entry.conn.take().is_some() {
                        tracing::warn!(%node, %error, "distribution connection lost");
                    } else if entry.last_error.as_deref() != Some(error.as_str()) {
                        tracing::debug!(%node, %error, "distribution not connected");
                    }
                    entry.last_error = Some(error);
                }
            }
            WatcherMsg::Snapshot { reply } => {
                let snapshot = state
                    .nodes
                    .iter()
                    .map(|(node, entry)| {
                        let connected = entry.conn.as_ref().is_some_and(|c| c.is_alive());
                        (
                            node.clone(),
                            NodeInfo {
                                connected,
                                tls: connected && entry.conn.as_ref().is_some_and(|c| c.is_tls()),
                                last_error: entry.last_error.clone(),
                            },
                        )
                    })
                    .collect();
                let _ = reply.send(snapshot);
            }
            WatcherMsg::Rpc {
                node,
                module,
                function,
                args,
                timeout,
                reply,
            } => {
                let conn = state
                    .nodes
                    .get(&node)
                    .and_then(|e| e.conn.clone())
                    .filter(|c| c.is_alive());
                match conn {
                    None => {
                        let _ = reply.send(Err(format!("node {node} is not connected")));
                    }
                    Some(conn) => {
                        tokio::spawn(async move {
                            let result = conn
                                .rpc(&module, &function, args, timeout)
                                .await
                                .map_err(|e| e.to_string());
                            let _ = reply.send(result);
                        });
                    }
                }
            }
            WatcherMsg::InjectPanic => panic!("injected panic in {NAME}"),
        }
        Ok(())
    }
}

/// Keeps one node connected: connect, wait for the connection to close,
/// reconnect with backoff (50 ms growing to 2 s; reset after a success).
async fn connector(
    watcher: ActorRef<WatcherMsg>,
    node: String,
    generation: u64,
    dist: Arc<DistConfig>,
) {
    // A node registers with EPMD ~0.5 s after its OS process starts: retry
    // fast at first, so readiness is seen promptly, then back off to 2 s.
    let mut backoff = Duration::from_millis(50);
    loop {
        match NodeConnection::connect(&node, &dist).await {
            Ok(conn) => {
                backoff = Duration::from_millis(50);
                if watcher
                    .cast(WatcherMsg::Connected {
                        node: node.clone(),
                        generation,
                        conn: conn.clone(),
                    })
                    .is_err()
                {
                    conn.close();
                    return;
                }
                conn.closed().await;
                if watcher
                    .cast(WatcherMsg::Disconnected {
                        node: node.clone(),
                        generation,
                        error: "connection closed".to_string(),
                    })
                    .is_err()
                {
                    return;
                }
            }
            Err(err) => {
                if watcher
                    .cast(WatcherMsg::Disconnected {
                        node: node.clone(),
                        generation,
                        error: err.to_string(),
                    })
                    .is_err()
                {
                    return;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 3 / 2).min(Duration::from_secs(2));
    }
}

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
    ) -> Result<Term, String> {
        let watcher: ActorRef<WatcherMsg> = ractor::registry::where_is(NAME)
            .ok_or_else(|| "the OtpNodeWatcher is not running".to_string())?
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
        .map_err(|e| format!("the OtpNodeWatcher did not answer: {e}"))?
    }
}
