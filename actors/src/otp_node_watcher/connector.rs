//! One task per watched node: connect, keep the link, reconnect with
//! backoff, and run the node's liveness checks ([`NodeSpec`]) between waits
//! (no task per check).

use super::*;

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
pub(super) struct LivenessSlot {
    spec: std::sync::Mutex<Option<Arc<NodeSpec>>>,
    changed: tokio::sync::Notify,
}

impl LivenessSlot {
    pub(super) fn get(&self) -> Option<Arc<NodeSpec>> {
        self.spec.lock().ok().and_then(|s| s.clone())
    }
    pub(super) fn set(&self, spec: Option<Arc<NodeSpec>>) {
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

/// A connector's pace while its node is new (just started, or a new OS
/// process of it was announced by `Retry`): one attempt every 100 ms for
/// [`BOOT_WINDOW`]. A BEAM registers with EPMD ~0.5–1 s after its process
/// starts and readiness waits for the connection: a growing backoff here
/// used to add up to half a second to every instance of a rolling deploy.
pub(super) const RETRY_FIRST: Duration = Duration::from_millis(100);

pub(super) const BOOT_WINDOW: Duration = Duration::from_secs(5);

/// After the boot window: ×1.5 per attempt up to 2 s, for a minute.
pub(super) const RETRY_CAP_FAST: Duration = Duration::from_secs(2);

/// Backoff cap after that: a node that never comes (a release without
/// distribution, `DEPLOYEX_OTP_READINESS=false`) costs one EPMD lookup per
/// 30 s, not one per 2 s (200 such instances: 7 lookups/s, not 100). A new
/// process of the node (`Retry`) brings back the fast pace at once.
pub(super) const RETRY_CAP_SLOW: Duration = Duration::from_secs(30);

pub(super) const PATIENCE: Duration = Duration::from_secs(60);

/// The backoff after `backoff`, the node unreachable since `since`.
pub(super) fn next_backoff(backoff: Duration, since: Instant) -> Duration {
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
pub(super) async fn connector(
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
                            .map_or_else(|| "connection closed".to_string(), |r| error_chain(&r)),
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
pub(super) struct LiveCount {
    failures: u32,
    /// The node was connected since its process started: from then on a
    /// lost link is a failed check (before, it is still booting).
    was_connected: bool,
}

impl LiveCount {
    pub(super) fn connected(&mut self, slot: &LivenessSlot) {
        self.was_connected = true;
        self.passed(slot);
    }
    /// A new OS process of the node: nothing of the old one counts.
    pub(super) fn reset(&mut self) {
        self.failures = 0;
        self.was_connected = false;
    }
    pub(super) fn passed(&mut self, slot: &LivenessSlot) {
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
    pub(super) fn failed(&mut self, spec: &NodeSpec, error: &LivenessError) {
        self.failures = self.failures.saturating_add(1);
        (spec.report)(NodeReport::Liveness {
            failures: self.failures,
            error: Some(error_chain(error)),
        });
    }
}

pub(super) enum Woke {
    /// The awaited future finished.
    Ready,
    /// A new OS process of the node was announced.
    Poked,
}

/// Waits for `fut` (EPMD lists the node, or a backoff delay) or a poke;
/// meanwhile, once the node had been connected, every liveness interval
/// without a link is a failed check.
pub(super) async fn wait_unreachable(
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
                    live.failed(spec, &LivenessError::NotConnected);
                }
            }
            () = slot.changed.notified() => {}
        }
    }
}

/// While the link is up: runs the liveness checks (when a spec is set) and
/// returns once the link has closed.
pub(super) async fn keep_alive(
    conn: &NodeConnection,
    slot: &LivenessSlot,
    poke: &tokio::sync::Notify,
    live: &mut LiveCount,
) {
    // When the next check is due (`None`: the next point on the grid).
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        let spec = slot.get().filter(|s| !s.interval.is_zero());
        let next = match &spec {
            Some(spec) => *due.get_or_insert_with(|| crate::time::next_on_grid(spec.interval)),
            None => tokio::time::Instant::now(),
        };
        let tick = async {
            match &spec {
                Some(_) => tokio::time::sleep_until(next).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = conn.closed() => return,
            () = slot.changed.notified() => {
                // A new or changed spec: its first check on the grid.
                due = None;
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
        let started = tokio::time::Instant::now();
        match check_liveness(conn, &spec).await {
            Ok(()) => live.passed(slot),
            Err(error) => live.failed(&spec, &error),
        }
        // On the shared grid; a check that timed out (it took the whole
        // interval) is followed by the next one at once, so a hung node is
        // killed after `failures` × interval, not twice that.
        due = Some(if started.elapsed() >= spec.interval {
            tokio::time::Instant::now()
        } else {
            crate::time::next_on_grid(spec.interval)
        });
    }
}

/// How recent (in liveness intervals) an answer on the link must be to
/// stand for a check's round trip. More than one: with telemetry sampled
/// at the liveness interval, the last answer is about one interval old
/// when the check runs (both on the grid), and a window of exactly one
/// interval missed about half the time. A hung node is then found at most
/// half an interval later.
pub(super) const ANSWER_WINDOW: f64 = 1.5;

/// One liveness check over `conn`: an RPC round trip, plus the health path.
/// Any RPC answered on the link within [`ANSWER_WINDOW`] intervals (a
/// telemetry sample, an operator's query) already is that round trip: no
/// extra RPC then (at 200 nodes, checks of their own doubled deployex's
/// idle CPU).
pub(super) async fn check_liveness(
    conn: &NodeConnection,
    spec: &NodeSpec,
) -> Result<(), LivenessError> {
    if !conn.answered_within(spec.interval.mul_f64(ANSWER_WINDOW)) {
        conn.rpc("erlang", "node", vec![], spec.interval)
            .await
            .map_err(LivenessError::Rpc)?;
    }
    if let Some((port, path)) = &spec.http
        && !crate::health::http_ok(*port, path, spec.interval).await
    {
        return Err(LivenessError::Http {
            port: *port,
            path: path.clone(),
        });
    }
    Ok(())
}

/// Why a liveness check failed (reported to the node's owner as text).
#[derive(Debug, thiserror::Error)]
pub enum LivenessError {
    /// No link to the node during a whole interval.
    #[error("the node is not connected")]
    NotConnected,
    /// The round-trip RPC failed or timed out.
    #[error("liveness RPC")]
    Rpc(#[source] DistError),
    /// The health path did not answer 2xx in time.
    #[error("GET {path} on port {port} did not answer 2xx")]
    Http { port: u16, path: String },
}
