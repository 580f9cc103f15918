//! OtpNodeWatcher: one Erlang distribution connection per running instance.
//!
//! Instances ask it to `Watch` their node when their OS process starts (and
//! again on every health tick: the message is idempotent, so a restarted
//! watcher learns every node again within 30 s). For each watched node a
//! connector task keeps a connection open, reconnecting with backoff, and
//! posts `Connected` / `Disconnected` back. A lost node is seen at once:
//! the connection's `closed()` resolves when the socket closes.
//!
//! RPCs never run inside the handler: the handler looks up the connection
//! and spawns a task that awaits the reply and answers the caller.
//!
//! Telemetry: every `beam_sample_interval` (unless zero, on the shared
//! grid of `crate::time`) each connected node is sampled ([`sample_beam`]:
//! memory, process count, run queue, reductions, in one RPC per node); one
//! spawned task per tick runs every node's sample and posts each
//! `Sampled` back as it comes. Invariants: at
//! most one sample in flight per node (a slow node is skipped, never piled
//! on); a sample belongs to one connection (`conn_id`): a lost connection
//! clears it, and a late answer for an older connection is dropped; the
//! reductions rate only compares two samples of the same connection.
//!
//! Files: `connector` (one task per node: link, reconnects, liveness
//! checks), `epmd` (the shared EPMD poller), `telemetry` (samples and the
//! BEAM-limit watchdog), `rpc` (RPCs for the rest of the engine).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;

use crate::config::EngineConfig;
use crate::dist::{DistConfig, DistError, NodeConnection, Term};
use crate::error::{RpcError, error_chain};
use crate::model::{BeamStats, BootPhase};
use crate::recorder::{Describe, Recorder};

mod connector;
mod epmd;
mod rpc;
mod telemetry;

pub use connector::*;
pub use epmd::*;
pub use rpc::*;
pub use telemetry::*;

pub const NAME: &str = "otp_node_watcher";

/// Connection state of one node, for status and readiness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub connected: bool,
    pub tls: bool,
    pub last_error: Option<String>,
    /// The latest telemetry sample of the current connection.
    pub beam: Option<BeamStats>,
}

pub enum WatcherMsg {
    /// Keep a connection to this node (idempotent), with its liveness
    /// check if any.
    Watch {
        node: String,
        liveness: Option<Arc<NodeSpec>>,
    },
    /// Like `Watch`, and a new OS process of this node was just started:
    /// if not connected, try at once with the fast backoff again (the
    /// connector backs off to 30 s after a minute without the node), and
    /// its liveness count starts over.
    Retry {
        node: String,
        liveness: Option<Arc<NodeSpec>>,
    },
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
    /// Whether one node is connected now (an InstanceMonitor's probe: one
    /// bool, not a copy of every node's entry; at 200 replicas the probes
    /// copying the whole snapshot were most of deployex's idle CPU).
    IsConnected {
        node: String,
        reply: RpcReplyPort<bool>,
    },
    Rpc {
        node: String,
        module: String,
        function: String,
        args: Vec<Term>,
        timeout: Duration,
        reply: RpcReplyPort<Result<Term, RpcError>>,
    },
    /// Time to sample every connected node's telemetry.
    SampleTick,
    /// A telemetry sample of `node` over connection `conn_id` finished.
    Sampled {
        node: String,
        conn_id: u64,
        at: Instant,
        result: Result<BeamSample, SampleError>,
    },
    /// Fault injection for the supervision tests.
    #[cfg(feature = "testhooks")]
    InjectPanic,
}

impl Describe for WatcherMsg {
    fn kind(&self) -> &'static str {
        match self {
            WatcherMsg::Watch { .. } => "Watch",
            WatcherMsg::Retry { .. } => "Retry",
            WatcherMsg::Unwatch { .. } => "Unwatch",
            WatcherMsg::Connected { .. } => "Connected",
            WatcherMsg::Disconnected { .. } => "Disconnected",
            WatcherMsg::Snapshot { .. } => "Snapshot",
            WatcherMsg::IsConnected { .. } => "IsConnected",
            WatcherMsg::Rpc { .. } => "Rpc",
            WatcherMsg::SampleTick => "SampleTick",
            WatcherMsg::Sampled { .. } => "Sampled",
            #[cfg(feature = "testhooks")]
            WatcherMsg::InjectPanic => "InjectPanic",
        }
    }
    fn summary(&self) -> String {
        match self {
            WatcherMsg::Watch { node, .. }
            | WatcherMsg::Retry { node, .. }
            | WatcherMsg::Unwatch { node }
            | WatcherMsg::IsConnected { node, .. } => node.clone(),
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
            WatcherMsg::Sampled {
                node,
                conn_id,
                result,
                ..
            } => match result {
                Ok(s) => format!(
                    "{node} conn={conn_id} memory={} processes={}",
                    s.memory_bytes, s.processes
                ),
                Err(e) => format!("{node} conn={conn_id}: {}", error_chain(e)),
            },
            _ => String::new(),
        }
    }
}

pub struct OtpNodeWatcher;

struct Entry {
    generation: u64,
    conn: Option<NodeConnection>,
    /// Identifies `conn` (unique within this watcher): samples carry it.
    conn_id: u64,
    task: JoinHandle<()>,
    /// Wakes the connector out of its backoff (`Retry`).
    poke: Arc<tokio::sync::Notify>,
    liveness: Arc<LivenessSlot>,
    last_error: Option<String>,
    /// A sample of `conn_id` is in flight.
    sampling: bool,
    beam: Option<BeamStats>,
    /// The previous reading's reductions total and time, same connection.
    reductions: Option<(u64, Instant)>,
    /// The BEAM limits this node is over (warned once per crossing).
    over: Vec<&'static str>,
    /// The node's BEAM limits, read with the connection's first sample.
    limits: Option<BeamLimits>,
}

/// Dropping an entry (node unwatched, or the watcher's state dropped
/// because the actor stopped or panicked) stops its connector and closes
/// its connection. ractor does not run `post_stop` when an actor fails, so
/// this cleanup must not live there: a connection left open would make
/// the node answer the next watcher's handshake with `alive`.
impl Drop for Entry {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(conn) = self.conn.take() {
            conn.close();
        }
    }
}

impl Entry {
    /// The connection is gone: its telemetry goes with it.
    fn drop_conn(&mut self) -> Option<NodeConnection> {
        self.sampling = false;
        self.beam = None;
        self.reductions = None;
        self.limits = None;
        self.conn.take()
    }
}

pub struct WatcherState {
    dist: Arc<DistConfig>,
    watchdog: crate::config::WatchdogConfig,
    /// Which nodes EPMD knows, for the connectors waiting for theirs.
    registry: Arc<EpmdRegistry>,
    nodes: HashMap<String, Entry>,
    next_generation: u64,
    next_conn_id: u64,
    /// `beam_sample_interval` (zero: no telemetry).
    sample_every: Duration,
    recorder: Recorder,
}

impl WatcherState {
    /// Starts a connector for `node` unless one runs (idempotent); sets its
    /// liveness spec.
    fn watch(
        &mut self,
        myself: &ActorRef<WatcherMsg>,
        node: String,
        liveness: Option<Arc<NodeSpec>>,
    ) {
        if let Some(entry) = self.nodes.get(&node) {
            entry.liveness.set(liveness);
            return;
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let poke = Arc::new(tokio::sync::Notify::new());
        let slot = Arc::new(LivenessSlot::default());
        slot.set(liveness);
        let task = tokio::spawn(connector(
            myself.clone(),
            node.clone(),
            generation,
            self.dist.clone(),
            self.registry.clone(),
            poke.clone(),
            slot.clone(),
        ));
        self.nodes.insert(
            node,
            Entry {
                generation,
                conn: None,
                conn_id: 0,
                task,
                poke,
                liveness: slot,
                over: Vec::new(),
                last_error: None,
                sampling: false,
                beam: None,
                reductions: None,
                limits: None,
            },
        );
    }
}

impl Actor for OtpNodeWatcher {
    type Msg = WatcherMsg;
    type State = WatcherState;
    type Arguments = Arc<EngineConfig>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        cfg: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let tls = match &cfg.tls_cert_path {
            None => None,
            Some(dir) => Some(Arc::new(crate::dist::TlsSettings::load(dir).map_err(
                |e| {
                    format!(
                        "mTLS certificates in {}: {}",
                        dir.display(),
                        error_chain(&e)
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
        if !cfg.beam_sample_interval.is_zero() {
            myself.send_after(
                crate::time::until_next_on_grid(cfg.beam_sample_interval),
                || WatcherMsg::SampleTick,
            );
        }
        let dist = Arc::new(dist);
        Ok(WatcherState {
            dist: dist.clone(),
            watchdog: cfg.watchdog.clone(),
            registry: EpmdRegistry::start(dist.clone()),
            nodes: HashMap::new(),
            next_generation: 1,
            next_conn_id: 1,
            sample_every: cfg.beam_sample_interval,
            recorder: Recorder::for_actor(NAME),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Each entry's `Drop` stops its connector and closes its link (the
        // same happens when the state is dropped after a panic).
        state.nodes.clear();
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
            WatcherMsg::Watch { node, liveness } => state.watch(&myself, node, liveness),
            WatcherMsg::Retry { node, liveness } => {
                state.registry.hurry();
                if let Some(entry) = state.nodes.get(&node) {
                    // Also when connected: a new process means the link
                    // (of the old one) is about to close, and the liveness
                    // count starts over.
                    entry.poke.notify_one();
                    entry.liveness.set(liveness);
                } else {
                    state.watch(&myself, node, liveness);
                }
            }
            WatcherMsg::Unwatch { node } => {
                // Dropping the entry stops its connector and closes the link.
                state.nodes.remove(&node);
            }
            WatcherMsg::Connected {
                node,
                generation,
                conn,
            } => match state.nodes.get_mut(&node) {
                Some(entry) if entry.generation == generation => {
                    tracing::info!(%node, "distribution connected");
                    if let Some(old) = entry.drop_conn() {
                        old.close();
                    }
                    entry.conn = Some(conn);
                    entry.conn_id = state.next_conn_id;
                    state.next_conn_id += 1;
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
                    if entry.drop_conn().is_some() {
                        tracing::warn!(%node, %error, "distribution connection lost");
                    } else if entry.last_error.as_deref() != Some(error.as_str()) {
                        tracing::debug!(%node, %error, "distribution not connected");
                    }
                    entry.last_error = Some(error);
                }
            }
            WatcherMsg::IsConnected { node, reply } => {
                let connected = state
                    .nodes
                    .get(&node)
                    .and_then(|e| e.conn.as_ref())
                    .is_some_and(|c| c.is_alive());
                let _ = reply.send(connected);
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
                                beam: entry.beam.clone().filter(|_| connected),
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
                        let _ = reply.send(Err(RpcError::NotConnected { node }));
                    }
                    Some(conn) => {
                        tokio::spawn(async move {
                            let result = conn
                                .rpc(&module, &function, args, timeout)
                                .await
                                .map_err(RpcError::from);
                            let _ = reply.send(result);
                        });
                    }
                }
            }
            WatcherMsg::SampleTick => {
                // The next tick on the shared grid (see `crate::time`).
                if !state.sample_every.is_zero() {
                    myself.send_after(crate::time::until_next_on_grid(state.sample_every), || {
                        WatcherMsg::SampleTick
                    });
                }
                let mut samples = Vec::new();
                for (node, entry) in state.nodes.iter_mut() {
                    let Some(conn) = entry.conn.clone().filter(|c| c.is_alive()) else {
                        continue;
                    };
                    if entry.sampling {
                        tracing::debug!(%node, "previous telemetry sample still in flight; skipping");
                        continue;
                    }
                    entry.sampling = true;
                    samples.push((node.clone(), entry.conn_id, entry.limits, conn));
                }
                if !samples.is_empty() {
                    tokio::spawn(sample_all(myself.clone(), samples));
                }
            }
            WatcherMsg::Sampled {
                node,
                conn_id,
                at,
                result,
            } => state.on_sampled(node, conn_id, at, result),
            #[cfg(feature = "testhooks")]
            WatcherMsg::InjectPanic => panic!("injected panic in {NAME}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_grows_fast_then_slows_down_after_a_minute() {
        let now = Instant::now();
        let Some(booted) = now.checked_sub(BOOT_WINDOW + Duration::from_secs(1)) else {
            return; // booted less than a few seconds ago
        };
        let mut b = RETRY_FIRST;
        for _ in 0..30 {
            b = next_backoff(b, booted);
        }
        assert_eq!(b, RETRY_CAP_FAST, "capped at 2 s during the first minute");
        let Some(long_ago) = now.checked_sub(PATIENCE + Duration::from_secs(1)) else {
            return; // booted less than a minute ago: nothing to compare with
        };
        let mut b = RETRY_CAP_FAST;
        for _ in 0..30 {
            b = next_backoff(b, long_ago);
        }
        assert_eq!(b, RETRY_CAP_SLOW, "30 s once unreachable for a minute");
        assert_eq!(
            next_backoff(Duration::from_secs(1), now),
            RETRY_FIRST,
            "every 100 ms while the node boots"
        );
        let Some(after_boot) = now.checked_sub(BOOT_WINDOW + Duration::from_secs(1)) else {
            return;
        };
        assert_eq!(
            next_backoff(RETRY_FIRST, after_boot),
            Duration::from_millis(150)
        );
    }

    #[test]
    fn boot_status_terms() {
        use crate::dist::atom;
        let t = |a: &str, b: &str| Term::from(erl_dist::term::Tuple::from(vec![atom(a), atom(b)]));
        assert_eq!(
            parse_boot_status(&t("started", "started")),
            Some(BootPhase::Started)
        );
        assert_eq!(
            parse_boot_status(&t("starting", "applications_loaded")),
            Some(BootPhase::Starting)
        );
        assert_eq!(
            parse_boot_status(&t("stopping", "started")),
            Some(BootPhase::Starting)
        );
        assert_eq!(parse_boot_status(&t("weird", "x")), None);
        assert_eq!(parse_boot_status(&atom("started")), None);
    }
}
