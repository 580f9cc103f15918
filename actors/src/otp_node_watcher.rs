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
//! Telemetry: every `beam_sample_interval` (unless zero) each connected node
//! is sampled ([`sample_beam`]: memory, process count, run queue,
//! reductions) in a spawned task that posts `Sampled` back. Invariants: at
//! most one sample in flight per node (a slow node is skipped, never piled
//! on); a sample belongs to one connection (`conn_id`): a lost connection
//! clears it, and a late answer for an older connection is dropped; the
//! reductions rate only compares two samples of the same connection.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;

use crate::config::EngineConfig;
use crate::dist::{DistConfig, DistError, NodeConnection, Term};
use crate::model::{BeamStats, BootPhase};
use crate::recorder::{Describe, Recorder};

pub const NAME: &str = "otp_node_watcher";

/// Bound on one telemetry sample (its RPCs run concurrently).
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Connection state of one node, for status and readiness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub connected: bool,
    pub tls: bool,
    pub last_error: Option<String>,
    /// The latest telemetry sample of the current connection.
    pub beam: Option<BeamStats>,
}

/// Why a telemetry sample failed.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("telemetry RPC {what} on node {node} failed")]
    Rpc {
        node: String,
        what: &'static str,
        #[source]
        source: DistError,
    },
    #[error("telemetry RPC {what} on node {node} answered {reply}")]
    Unexpected {
        node: String,
        what: &'static str,
        reply: String,
    },
}

/// One raw reading of a node; [`BeamStats`] adds the rate and the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeamSample {
    pub memory_bytes: u64,
    /// The split of `erlang:memory()` kept in the metrics history.
    pub memory_processes: u64,
    pub memory_binary: u64,
    pub memory_ets: u64,
    pub memory_atom: u64,
    pub memory_code: u64,
    pub processes: u64,
    pub run_queue: u64,
    /// `erlang:statistics(reductions)`'s total since the node started.
    pub reductions_total: u64,
    /// `erlang:system_info/1`: the counts and the limits the watchdog
    /// compares (`atom_count`/`atom_limit`, `port_count`/`port_limit`,
    /// `process_limit`).
    pub atom_count: u64,
    pub atom_limit: u64,
    pub port_count: u64,
    pub port_limit: u64,
    pub process_limit: u64,
}

impl BeamSample {
    /// The limits used above `pct` percent, as `(what, used, limit)`.
    pub fn over_limits(
        &self,
        watchdog: &crate::config::WatchdogConfig,
    ) -> Vec<(&'static str, u64, u64)> {
        [
            (
                "atoms",
                self.atom_count,
                self.atom_limit,
                watchdog.atoms_pct,
            ),
            (
                "processes",
                self.processes,
                self.process_limit,
                watchdog.processes_pct,
            ),
            (
                "ports",
                self.port_count,
                self.port_limit,
                watchdog.ports_pct,
            ),
        ]
        .into_iter()
        .filter(|&(_, used, limit, pct)| limit > 0 && used * 100 > limit * u64::from(pct))
        .map(|(what, used, limit, _)| (what, used, limit))
        .collect()
    }
}

/// Read a node's telemetry over `conn`: four RPCs in flight at once, the
/// whole bounded by `timeout`.
pub async fn sample_beam(
    conn: &NodeConnection,
    timeout: Duration,
) -> Result<BeamSample, SampleError> {
    use crate::dist::atom;
    let node = conn.node();
    let call = |what: &'static str, function: &'static str, arg: &'static str| async move {
        conn.rpc("erlang", function, vec![atom(arg)], timeout)
            .await
            .map_err(|source| SampleError::Rpc {
                node: node.to_string(),
                what,
                source,
            })
    };
    let info = |what: &'static str| call(what, "system_info", what);
    let (
        (memory, processes, run_queue, reductions),
        (atom_count, atom_limit, port_count, port_limit, process_limit),
    ) = futures::try_join!(
        async {
            futures::try_join!(
                async {
                    conn.rpc("erlang", "memory", vec![], timeout)
                        .await
                        .map_err(|source| SampleError::Rpc {
                            node: node.to_string(),
                            what: "erlang:memory()",
                            source,
                        })
                },
                info("process_count"),
                call("erlang:statistics(run_queue)", "statistics", "run_queue"),
                call("erlang:statistics(reductions)", "statistics", "reductions"),
            )
        },
        async {
            futures::try_join!(
                info("atom_count"),
                info("atom_limit"),
                info("port_count"),
                info("port_limit"),
                info("process_limit"),
            )
        },
    )?;
    let count = |what: &'static str, term: &Term| {
        crate::dist::as_int(term)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| SampleError::Unexpected {
                node: node.to_string(),
                what,
                reply: crate::dist::pretty(term),
            })
    };
    // `{Total, SinceLastCall}`: only the total is ours (the second element
    // is shared with every other caller on the node).
    let reductions_total = match crate::dist::as_tuple(&reductions) {
        Some([total, _]) => count("erlang:statistics(reductions)", total)?,
        _ => count("erlang:statistics(reductions)", &reductions)?,
    };
    // `[{total, N}, {processes, N}, …]`.
    let memory_of = |key: &str| {
        crate::dist::as_list(&memory)
            .unwrap_or_default()
            .iter()
            .find_map(|kv| match crate::dist::as_tuple(kv) {
                Some([k, v]) if crate::dist::as_atom(k) == Some(key) => {
                    crate::dist::as_int(v).and_then(|n| u64::try_from(n).ok())
                }
                _ => None,
            })
    };
    let memory_bytes = memory_of("total").ok_or_else(|| SampleError::Unexpected {
        node: node.to_string(),
        what: "erlang:memory()",
        reply: crate::dist::pretty(&memory),
    })?;
    Ok(BeamSample {
        memory_bytes,
        memory_processes: memory_of("processes").unwrap_or(0),
        memory_binary: memory_of("binary").unwrap_or(0),
        memory_ets: memory_of("ets").unwrap_or(0),
        memory_atom: memory_of("atom").unwrap_or(0),
        memory_code: memory_of("code").unwrap_or(0),
        processes: count("erlang:system_info(process_count)", &processes)?,
        run_queue: count("erlang:statistics(run_queue)", &run_queue)?,
        reductions_total,
        atom_count: count("atom_count", &atom_count)?,
        atom_limit: count("atom_limit", &atom_limit)?,
        port_count: count("port_count", &port_count)?,
        port_limit: count("port_limit", &port_limit)?,
        process_limit: count("process_limit", &process_limit)?,
    })
}

/// Reductions per second between two readings of the same node.
pub fn reductions_rate(prev: (u64, Instant), now: (u64, Instant)) -> Option<u64> {
    let secs = now.1.checked_duration_since(prev.1)?.as_secs_f64();
    (secs > 0.0).then(|| (now.0.saturating_sub(prev.0) as f64 / secs).round() as u64)
}

/// What the owner of a node (its InstanceMonitor) asks of the watcher
/// besides the link: the node's liveness check, and where to report.
///
/// The liveness check is run by the node's connector while the link is up:
/// every `interval` (zero: no checks) an RPC round trip (`erlang:node()`,
/// timeout `interval`) and, when set, `GET http://127.0.0.1:{port}{path}`
/// (2xx). Once the node was connected, a lost link counts as a failed check
/// at each interval too. No task is spawned per check: the connector task
/// itself runs them.
pub struct NodeSpec {
    pub interval: Duration,
    pub http: Option<(u16, String)>,
    /// Called (from the connector or the watcher, never blocking) with
    /// what the owner must know: liveness failures, resource limits.
    pub report: Box<dyn Fn(NodeReport) + Send + Sync>,
}

/// What a [`NodeSpec`]'s owner is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeReport {
    /// `failures` liveness checks failed in a row (the last with `error`);
    /// `0`: a check passes again after failures. Sent only then, not for
    /// every passing check.
    Liveness {
        failures: u32,
        error: Option<String>,
    },
    /// The node uses more of a BEAM limit than the watchdog allows and the
    /// watchdog's action is `restart`.
    OverLimit { message: String },
}

impl std::fmt::Debug for NodeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSpec")
            .field("interval", &self.interval)
            .field("http", &self.http)
            .finish()
    }
}

/// A node's liveness spec, shared by its entry and its connector (the spec
/// can arrive or change after the connector started).
#[derive(Default)]
struct LivenessSlot {
    spec: std::sync::Mutex<Option<Arc<NodeSpec>>>,
    changed: tokio::sync::Notify,
}

impl LivenessSlot {
    fn get(&self) -> Option<Arc<NodeSpec>> {
        self.spec.lock().ok().and_then(|s| s.clone())
    }
    fn set(&self, spec: Option<Arc<NodeSpec>>) {
        let Ok(mut slot) = self.spec.lock() else {
            return;
        };
        let same = match (&*slot, &spec) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            *slot = spec;
            drop(slot);
            self.changed.notify_one();
        }
    }
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
        reply: RpcReplyPort<Result<Term, String>>,
    },
    /// Time to sample every connected node's telemetry.
    SampleTick,
    /// A telemetry sample of `node` over connection `conn_id` finished.
    Sampled {
        node: String,
        conn_id: u64,
        at: Instant,
        result: Result<BeamSample, String>,
    },
    /// Fault injection for the supervision tests.
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
                Err(e) => format!("{node} conn={conn_id}: {e}"),
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
        if !cfg.beam_sample_interval.is_zero() {
            myself.send_interval(cfg.beam_sample_interval, || WatcherMsg::SampleTick);
        }
        let dist = Arc::new(dist);
        Ok(WatcherState {
            dist: dist.clone(),
            watchdog: cfg.watchdog.clone(),
            registry: EpmdRegistry::start(dist.clone()),
            nodes: HashMap::new(),
            next_generation: 1,
            next_conn_id: 1,
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
            WatcherMsg::SampleTick => {
                for (node, entry) in state.nodes.iter_mut() {
                    let Some(conn) = entry.conn.clone().filter(|c| c.is_alive()) else {
                        continue;
                    };
                    if entry.sampling {
                        tracing::debug!(%node, "previous telemetry sample still in flight; skipping");
                        continue;
                    }
                    entry.sampling = true;
                    let (watcher, node, conn_id) = (myself.clone(), node.clone(), entry.conn_id);
                    tokio::spawn(async move {
                        let result = sample_beam(&conn, SAMPLE_TIMEOUT)
                            .await
                            .map_err(|e| crate::release_fetcher::error_chain(&e));
                        let _ = watcher.cast(WatcherMsg::Sampled {
                            node,
                            conn_id,
                            at: Instant::now(),
                            result,
                        });
                    });
                }
            }
            WatcherMsg::Sampled {
                node,
                conn_id,
                at,
                result,
            } => {
                if let Some(entry) = state.nodes.get_mut(&node)
                    && entry.conn.is_some()
                    && entry.conn_id == conn_id
                {
                    entry.sampling = false;
                    match result {
                        Ok(sample) => {
                            // Metrics history (history.rs): one copy into
                            // the instance's ring.
                            if let Some(i) = instance_of(&node) {
                                crate::history::record_beam(
                                    i,
                                    crate::history::beam_point(
                                        crate::history::unix_ms_now(),
                                        &sample,
                                    ),
                                );
                            }
                            let now = (sample.reductions_total, at);
                            let rate = entry.reductions.and_then(|prev| reductions_rate(prev, now));
                            entry.reductions = Some(now);
                            entry.beam = Some(BeamStats {
                                memory_bytes: sample.memory_bytes,
                                processes: sample.processes,
                                run_queue: sample.run_queue,
                                reductions_per_s: rate,
                                sampled_at: crate::time::utc_now_millis(),
                                atom_count: sample.atom_count,
                                atom_limit: sample.atom_limit,
                                port_count: sample.port_count,
                                port_limit: sample.port_limit,
                                process_limit: sample.process_limit,
                            });
                            check_limits(&node, entry, &sample, &state.watchdog);
                        }
                        Err(error) => {
                            // A node too busy to answer shows "no data"
                            // rather than an old reading.
                            tracing::debug!(%node, %error, "telemetry sample failed");
                            entry.beam = None;
                            entry.reductions = None;
                        }
                    }
                }
            }
            WatcherMsg::InjectPanic => panic!("injected panic in {NAME}"),
        }
        Ok(())
    }
}

/// The watchdog's BEAM limits: a `watchdog_warning` event when the node
/// crosses one (once per crossing, again after it went back below), and a
/// report to the node's owner when the watchdog's action is `restart`.
fn check_limits(
    node: &str,
    entry: &mut Entry,
    sample: &BeamSample,
    watchdog: &crate::config::WatchdogConfig,
) {
    let over = sample.over_limits(watchdog);
    entry
        .over
        .retain(|what| over.iter().any(|(w, _, _)| w == what));
    for (what, used, limit) in over {
        if entry.over.contains(&what) {
            continue;
        }
        entry.over.push(what);
        let message = format!(
            "node {node} uses {used} of its {limit} {what} ({} %)",
            used * 100 / limit.max(1)
        );
        tracing::warn!(%node, what, used, limit, "BEAM limit nearly reached");
        let mut event = crate::events::NewEvent::new(
            crate::events::EventKind::WatchdogWarning,
            message.clone(),
        );
        if let Some(i) = instance_of(node) {
            event = event.instance(i);
        }
        crate::events::emit(event);
        if watchdog.limits_action() == crate::config::WatchdogAction::Restart
            && let Some(spec) = entry.liveness.get()
        {
            (spec.report)(NodeReport::OverLimit { message });
        }
    }
}

/// `i` of a node named `{app}-{i}@{host}`.
fn instance_of(node: &str) -> Option<u32> {
    node.split('@').next()?.rsplit_once('-')?.1.parse().ok()
}

/// A connector's pace while its node is new (just started, or a new OS
/// process of it was announced by `Retry`): one attempt every 100 ms for
/// [`BOOT_WINDOW`]. A BEAM registers with EPMD ~0.5–1 s after its process
/// starts and readiness waits for the connection: a growing backoff here
/// used to add up to half a second to every instance of a rolling deploy.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const BOOT_WINDOW: Duration = Duration::from_secs(5);
/// After the boot window: ×1.5 per attempt up to 2 s, for a minute.
const RETRY_CAP_FAST: Duration = Duration::from_secs(2);
/// Backoff cap after that: a node that never comes (a release without
/// distribution, `DEPLOYEX_OTP_READINESS=false`) costs one EPMD lookup per
/// 30 s, not one per 2 s (200 such instances: 7 lookups/s, not 100). A new
/// process of the node (`Retry`) brings back the fast pace at once.
const RETRY_CAP_SLOW: Duration = Duration::from_secs(30);
const PATIENCE: Duration = Duration::from_secs(60);

/// The backoff after `backoff`, the node unreachable since `since`.
fn next_backoff(backoff: Duration, since: Instant) -> Duration {
    let unreachable = since.elapsed();
    if unreachable < BOOT_WINDOW {
        return RETRY_FIRST;
    }
    let cap = if unreachable < PATIENCE {
        RETRY_CAP_FAST
    } else {
        RETRY_CAP_SLOW
    };
    (backoff * 3 / 2).clamp(RETRY_FIRST, cap)
}

/// Keeps one node connected: connect, wait for the connection to close,
/// reconnect. A node EPMD does not know (not started yet, crashed, a
/// release without distribution) is waited for through the shared
/// [`EpmdRegistry`], without a clock of its own; other failures (refused
/// connection, handshake, EPMD down) retry every 100 ms for 5 s, then ×1.5
/// up to 2 s, up to 30 s after a minute; the pace starts over after a
/// success or a poke (a new OS process of the node). While a liveness spec
/// is set it also runs the node's liveness checks ([`NodeSpec`]).
async fn connector(
    watcher: ActorRef<WatcherMsg>,
    node: String,
    generation: u64,
    dist: Arc<DistConfig>,
    registry: Arc<EpmdRegistry>,
    poke: Arc<tokio::sync::Notify>,
    liveness: Arc<LivenessSlot>,
) {
    let mut backoff = RETRY_FIRST;
    let mut unreachable_since = Instant::now();
    let name = node.split('@').next().unwrap_or(&node).to_owned();
    let mut last_error: Option<String> = None;
    let mut live = LiveCount::default();
    loop {
        let attempt_at = Instant::now();
        match NodeConnection::connect(&node, &dist).await {
            Ok(conn) => {
                backoff = RETRY_FIRST;
                last_error = None;
                live.connected(&liveness);
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
                keep_alive(&conn, &liveness, &poke, &mut live).await;
                unreachable_since = Instant::now();
                if watcher
                    .cast(WatcherMsg::Disconnected {
                        node: node.clone(),
                        generation,
                        error: conn
                            .close_reason()
                            .unwrap_or_else(|| "connection closed".to_string()),
                    })
                    .is_err()
                {
                    return;
                }
            }
            Err(err) => {
                // Nothing to retry on a clock: wait for EPMD to list the
                // node, or to answer at all.
                let wait_for = match &err {
                    DistError::NodeNotRegistered { .. } => Some(Some(name.as_str())),
                    DistError::Epmd { .. } => Some(None),
                    _ => None,
                };
                let error = err.to_string();
                // The watcher already knows an unchanged error.
                if last_error.as_deref() != Some(error.as_str()) {
                    if watcher
                        .cast(WatcherMsg::Disconnected {
                            node: node.clone(),
                            generation,
                            error: error.clone(),
                        })
                        .is_err()
                    {
                        return;
                    }
                    last_error = Some(error);
                }
                if let Some(name) = wait_for {
                    let registered = registry.wait_registered(name, attempt_at);
                    wait_unreachable(registered, &poke, &liveness, &mut live).await;
                    backoff = RETRY_FIRST;
                    unreachable_since = Instant::now();
                    continue;
                }
            }
        }
        match wait_unreachable(tokio::time::sleep(backoff), &poke, &liveness, &mut live).await {
            Woke::Ready => backoff = next_backoff(backoff, unreachable_since),
            Woke::Poked => {
                backoff = RETRY_FIRST;
                unreachable_since = Instant::now();
            }
        }
    }
}

/// A connector's count of failed liveness checks.
#[derive(Default)]
struct LiveCount {
    failures: u32,
    /// The node was connected since its process started: from then on a
    /// lost link is a failed check (before, it is still booting).
    was_connected: bool,
}

impl LiveCount {
    fn connected(&mut self, slot: &LivenessSlot) {
        self.was_connected = true;
        self.passed(slot);
    }
    /// A new OS process of the node: nothing of the old one counts.
    fn reset(&mut self) {
        self.failures = 0;
        self.was_connected = false;
    }
    fn passed(&mut self, slot: &LivenessSlot) {
        if self.failures > 0 {
            self.failures = 0;
            if let Some(spec) = slot.get() {
                (spec.report)(NodeReport::Liveness {
                    failures: 0,
                    error: None,
                });
            }
        }
    }
    fn failed(&mut self, spec: &NodeSpec, error: String) {
        self.failures = self.failures.saturating_add(1);
        (spec.report)(NodeReport::Liveness {
            failures: self.failures,
            error: Some(error),
        });
    }
}

enum Woke {
    /// The awaited future finished.
    Ready,
    /// A new OS process of the node was announced.
    Poked,
}

/// Waits for `fut` (EPMD lists the node, or a backoff delay) or a poke;
/// meanwhile, once the node had been connected, every liveness interval
/// without a link is a failed check.
async fn wait_unreachable(
    fut: impl std::future::Future<Output = ()>,
    poke: &tokio::sync::Notify,
    slot: &LivenessSlot,
    live: &mut LiveCount,
) -> Woke {
    tokio::pin!(fut);
    loop {
        let spec = slot
            .get()
            .filter(|s| live.was_connected && !s.interval.is_zero());
        let tick = async {
            match &spec {
                Some(spec) => tokio::time::sleep(spec.interval).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut fut => return Woke::Ready,
            () = poke.notified() => {
                live.reset();
                return Woke::Poked;
            }
            () = tick => {
                if let Some(spec) = &spec {
                    live.failed(spec, "the node is not connected".to_string());
                }
            }
            () = slot.changed.notified() => {}
        }
    }
}

/// While the link is up: runs the liveness checks (when a spec is set) and
/// returns once the link has closed.
async fn keep_alive(
    conn: &NodeConnection,
    slot: &LivenessSlot,
    poke: &tokio::sync::Notify,
    live: &mut LiveCount,
) {
    let mut next = tokio::time::Instant::now();
    loop {
        let spec = slot.get().filter(|s| !s.interval.is_zero());
        if let Some(spec) = &spec {
            // Fixed cadence from the first check: a check that times out
            // (after `interval`) is followed by the next one at once.
            next += spec.interval;
            let now = tokio::time::Instant::now();
            if next < now {
                next = now;
            }
        }
        let tick = async {
            match &spec {
                Some(_) => tokio::time::sleep_until(next).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = conn.closed() => return,
            () = slot.changed.notified() => {
                next = tokio::time::Instant::now();
                continue;
            }
            () = poke.notified() => {
                // A new process of this node: its link is about to close
                // (or this one is the new process's); start counting over.
                live.failures = 0;
                continue;
            }
            () = tick => {}
        }
        let Some(spec) = spec else { continue };
        match check_liveness(conn, &spec).await {
            Ok(()) => live.passed(slot),
            Err(error) => live.failed(&spec, error),
        }
    }
}

/// One liveness check over `conn`: an RPC round trip, plus the health path.
async fn check_liveness(conn: &NodeConnection, spec: &NodeSpec) -> Result<(), String> {
    conn.rpc("erlang", "node", vec![], spec.interval)
        .await
        .map_err(|e| format!("liveness RPC: {e}"))?;
    if let Some((port, path)) = &spec.http
        && !crate::health::http_ok(*port, path, spec.interval).await
    {
        return Err(format!("GET {path} on port {port} did not answer 2xx"));
    }
    Ok(())
}

/// The poller's pace while a node was started lately ([`BOOT_WINDOW`]): a
/// BEAM registers ~0.5–1 s after its start and readiness waits for it.
const REGISTRY_POLL_FAST: Duration = Duration::from_millis(100);
/// The poller's pace otherwise.
const REGISTRY_POLL_SLOW: Duration = Duration::from_secs(1);

/// Which nodes are registered in EPMD, for every connector waiting for its
/// node: one poller, whatever the number of nodes.
///
/// Each connector used to ask EPMD for its own node (`PORT_PLEASE2`, a TCP
/// connection each) on its own backoff clock: 200 instances without a node
/// cost 100 EPMD connections and ~300 wake-ups per second in their first
/// minute, and a node appearing after a few minutes was seen up to 30 s
/// late. Now one task asks EPMD for all names (`NAMES`) every 100 ms while
/// a node was started lately, every second otherwise, and only while some
/// connector waits; it wakes exactly the waiters whose name the answer
/// lists (and those that found EPMD down, once it answers again). A node
/// is so seen within one poll, and nodes that never come (or an EPMD that
/// is not running: a site without any BEAM) cost one EPMD query per second
/// in all.
pub struct EpmdRegistry {
    waiters: std::sync::Mutex<Waiters>,
    /// Wakes the poller: a first waiter, or [`EpmdRegistry::hurry`]. Its
    /// own `Arc`: the poller waits on it without holding the registry.
    wake: Arc<tokio::sync::Notify>,
    /// The fast pace lasts until then.
    fast_until: std::sync::Mutex<Instant>,
    poller: std::sync::Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Waiters {
    next_id: u64,
    /// id → (name, or `None` for "EPMD answers", waiting since, its
    /// wake-up).
    #[allow(clippy::type_complexity)]
    by_id: HashMap<u64, (Option<String>, Instant, Arc<tokio::sync::Notify>)>,
}

impl EpmdRegistry {
    /// A registry and its poller (aborted when the registry is dropped).
    pub fn start(dist: Arc<DistConfig>) -> Arc<EpmdRegistry> {
        let registry = Arc::new(EpmdRegistry {
            waiters: std::sync::Mutex::new(Waiters::default()),
            wake: Arc::new(tokio::sync::Notify::new()),
            fast_until: std::sync::Mutex::new(Instant::now() + BOOT_WINDOW),
            poller: std::sync::Mutex::new(None),
        });
        let task = tokio::spawn(poll_epmd(Arc::downgrade(&registry), dist));
        if let Ok(mut poller) = registry.poller.lock() {
            *poller = Some(task);
        }
        registry
    }

    /// A node was just started: poll at the fast pace for [`BOOT_WINDOW`].
    pub fn hurry(&self) {
        if let Ok(mut until) = self.fast_until.lock() {
            *until = Instant::now() + BOOT_WINDOW;
        }
        self.wake.notify_one();
    }

    /// Returns once an EPMD answer asked for after `since` lists `name`
    /// (`None`: once EPMD answers at all). The caller has just been told,
    /// at `since`, that `name` is not registered (or that EPMD did not
    /// answer): no older answer is trusted.
    pub async fn wait_registered(&self, name: Option<&str>, since: Instant) {
        let wake = Arc::new(tokio::sync::Notify::new());
        let Some((id, first)) = self.add_waiter(name, since, wake.clone()) else {
            return;
        };
        let _registered = Registered { registry: self, id };
        if first {
            self.wake.notify_one();
        }
        wake.notified().await;
    }

    /// Adds a waiter: its id and whether it is the only one.
    fn add_waiter(
        &self,
        name: Option<&str>,
        since: Instant,
        wake: Arc<tokio::sync::Notify>,
    ) -> Option<(u64, bool)> {
        let mut waiters = self.waiters.lock().ok()?;
        let id = waiters.next_id;
        waiters.next_id += 1;
        waiters
            .by_id
            .insert(id, (name.map(str::to_owned), since, wake));
        Some((id, waiters.by_id.len() == 1))
    }

    /// How many connectors wait now.
    pub fn waiting(&self) -> usize {
        self.waiters.lock().map_or(0, |w| w.by_id.len())
    }

    fn pace(&self) -> Duration {
        match self.fast_until.lock() {
            Ok(until) if Instant::now() < *until => REGISTRY_POLL_FAST,
            _ => REGISTRY_POLL_SLOW,
        }
    }

    /// Wakes the waiters this answer (asked for at `asked`) is for.
    fn answered(&self, asked: Instant, names: &HashSet<String>) {
        let Ok(waiters) = self.waiters.lock() else {
            return;
        };
        for (name, since, wake) in waiters.by_id.values() {
            if asked > *since && name.as_ref().is_none_or(|name| names.contains(name)) {
                // A stored permit: a waiter not polled yet still wakes.
                wake.notify_one();
            }
        }
    }
}

impl Drop for EpmdRegistry {
    fn drop(&mut self) {
        if let Ok(mut poller) = self.poller.lock()
            && let Some(task) = poller.take()
        {
            task.abort();
        }
    }
}

/// One waiter's entry, removed however its wait ends (woken, poked,
/// aborted).
struct Registered<'a> {
    registry: &'a EpmdRegistry,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Ok(mut waiters) = self.registry.waiters.lock() {
            waiters.by_id.remove(&self.id);
        }
    }
}

/// The poller of [`EpmdRegistry`]. It holds the registry weakly and never
/// across a wait, so dropping the registry (a stopped watcher) drops it and
/// its `Drop` aborts this task, parked or not.
async fn poll_epmd(registry: std::sync::Weak<EpmdRegistry>, dist: Arc<DistConfig>) {
    loop {
        let Some((waiting, wake)) = registry.upgrade().map(|r| (r.waiting(), r.wake.clone()))
        else {
            return;
        };
        if waiting == 0 {
            // Until a connector waits (a stored permit counts).
            wake.notified().await;
            continue;
        }
        let asked = Instant::now();
        let query = crate::dist::epmd::names(&dist.epmd_host, dist.epmd_port);
        // EPMD down: nobody to wake (asked again at the next poll).
        let names = match tokio::time::timeout(dist.connect_timeout, query).await {
            Ok(Ok(names)) => Some(
                names
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect::<HashSet<_>>(),
            ),
            _ => None,
        };
        let Some(pace) = registry.upgrade().map(|reg| {
            if let Some(names) = &names {
                reg.answered(asked, names);
            }
            reg.pace()
        }) else {
            return;
        };
        let _ = tokio::time::timeout(pace, wake.notified()).await;
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

/// How far `node` got through its boot: `init:get_status()` over its
/// link. `{started, _}` is [`BootPhase::Started`]; `{starting, _}` and
/// `{stopping, _}` are [`BootPhase::Starting`] (not ready either way).
pub async fn boot_phase(node: &str, timeout: Duration) -> Result<BootPhase, String> {
    use crate::upgrade::Rpc;
    let term = WatcherRpc {
        node: node.to_string(),
    }
    .call("init", "get_status", vec![], timeout)
    .await?;
    parse_boot_status(&term)
        .ok_or_else(|| format!("init:get_status() answered {}", crate::dist::pretty(&term)))
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
pub async fn stop_node(node: &str, timeout: Duration) -> Result<(), String> {
    use crate::upgrade::Rpc;
    WatcherRpc {
        node: node.to_string(),
    }
    .call("init", "stop", vec![], timeout)
    .await
    .map(|_| ())
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

    #[test]
    fn reductions_rate_is_per_second_and_never_negative() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(reductions_rate((1_000, t0), (6_000, t1)), Some(10_000));
        // A counter that went backwards (should not happen) reads as idle.
        assert_eq!(reductions_rate((6_000, t0), (1_000, t1)), Some(0));
        // No time between the readings, or readings out of order: no rate.
        assert_eq!(reductions_rate((1_000, t0), (2_000, t0)), None);
        assert_eq!(reductions_rate((1_000, t1), (2_000, t0)), None);
    }
}
