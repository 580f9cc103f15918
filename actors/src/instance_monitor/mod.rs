//! InstanceMonitor: owns the OS process of one replica.
//!
//! It starts `current/bin/{app} start` (`foreground` for relx releases,
//! see [`crate::release_kind`]) in its own process group with the
//! instance's environment, watches it exit (pidfd: sub-millisecond), restarts
//! it after a crash with backoff (first restart immediate, then 1 s, 2 s, 4 s
//! … capped; the consecutive count resets after the instance was ready for
//! `backoff_reset_after`), probes readiness, runs pre-commands, and carries
//! out the full-deployment steps the DeployManager asks for.
//!
//! Invariants:
//! - At most one OS process per instance. Every spawn writes
//!   `{service}/pid` (atomically); a restarted monitor (after a panic, or a
//!   new deployex) adopts the process named there if `/proc` proves it is
//!   the same process (pid + start time + release root). Any other process
//!   running from this service folder is stopped before a start.
//! - Waiting never happens in a handler: exits, stops, folder rotation,
//!   unpacking, pre-commands and readiness probes run in tasks that post a
//!   message back. Messages from an older process carry a stale `generation`
//!   and are ignored.
//! - The actor never kills its process when it stops: an actor restart must
//!   not restart the app. Stopping the app is an explicit `Shutdown`, after
//!   which nothing of this instance starts again.
//! - Ready means the node finished booting (`init:get_status()`), not that
//!   time passed (see [`health`]).
//!
//! Files: `messages` (the messages), `lifecycle` (start, exit, backoff,
//! stop, restart), `health` (readiness, liveness reports, watchdog),
//! `deploy` (full deployment and hot-upgrade steps), `service_dir` (folder
//! rotation, repair, strays).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::config::EngineConfig;
use crate::deploy_manager::{self, DeployMsg};
use crate::events::{self, EventKind, NewEvent};
use crate::model::{
    ActionError, BootPhase, DeploymentKind, InstanceState, InstanceStatus, LogStream, RestartReason,
};
use crate::otp_node_watcher::{self, NodeReport, NodeSpec, WatcherMsg};
use crate::process::{self, Adoption, ExitInfo, InstanceSpec, PidFile, ProcessHandle};
use crate::recorder::{Describe, Recorder};

mod deploy;
mod health;
mod lifecycle;
mod messages;
mod service_dir;
pub mod slot;
mod start_first;

pub use lifecycle::backoff_delay;
pub use messages::{DeployJob, InstanceMsg, Prepared, StepError, StopReason};
pub use service_dir::repair_service_dir;

use health::*;
use lifecycle::*;
use service_dir::*;
use start_first::Switch;

/// The registered name of `app`'s monitor of instance `instance`:
/// `instance_monitor:{app}-{instance}` (the instance's node is `{app}-{instance}`).
pub fn name(app: &str, instance: u32) -> String {
    format!("instance_monitor:{app}-{instance}")
}

pub struct InstanceMonitor;

/// Health tick while an instance starts: readiness is seen within this.
const FAST_TICK: Duration = Duration::from_millis(100);

/// Health tick once it runs (or is stopped): rotation checks and the
/// watcher's `Watch` reminder; nothing else is left to do on a clock once
/// an instance is ready (see [`MonitorState::health_tick`]).
const SLOW_TICK: Duration = Duration::from_secs(10);

/// How often the log files are checked for rotation.
const ROTATION_CHECK: Duration = Duration::from_secs(10);

/// How often a running instance reminds the OtpNodeWatcher of its node
/// (`Watch`, idempotent): only a restarted watcher needs it (a new OS
/// process of the node sends `Retry` at once).
const WATCH_REMINDER: Duration = Duration::from_secs(30);

pub struct Args {
    pub cfg: Arc<EngineConfig>,
    pub instance: u32,
}

pub struct MonitorState {
    cfg: Arc<EngineConfig>,
    instance: u32,
    /// Where the current process lives (see [`slot`]): folder, node, port.
    slot: crate::config::Slot,
    node: String,
    port: u16,
    service: PathBuf,
    phase: InstanceState,
    process: Option<Arc<ProcessHandle>>,
    /// Bumped on every spawn/adopt; stale messages are ignored.
    generation: u64,
    /// The highest generation ever given: a start-first switch that fails
    /// goes back to the old process's generation, and the next process
    /// must not reuse the failed one's.
    generation_high: u64,
    /// A start-first deployment between the new process's start and its
    /// readiness: the old process keeps serving (see [`start_first`]).
    switch: Option<Switch>,
    started_at: Option<Instant>,
    ready_since: Option<Instant>,
    /// Since when every readiness check has passed without a break.
    checks_since: Option<Instant>,
    /// The node's boot phase, as last seen (current process only).
    boot: Option<BootPhase>,
    /// The current process was adopted: it counts as up for `min_ready`.
    adopted: bool,
    /// `Shutdown` was received: nothing starts any more.
    shut_down: bool,
    probing: bool,
    stopping: Option<StopReason>,
    version: Option<String>,
    crash_restarts: u64,
    forced_restarts: u64,
    liveness_restarts: u64,
    watchdog_restarts: u64,
    last_restart_reason: Option<RestartReason>,
    /// Why the next process is started (recorded when it starts).
    next_start_reason: Option<RestartReason>,
    /// Consecutive memory samples over the watchdog's limit.
    memory_over: u32,
    /// This node's liveness check, handed to the OtpNodeWatcher.
    liveness: Option<Arc<NodeSpec>>,
    consecutive_crashes: u32,
    /// When the process crashed / was started again after a crash (UTC),
    /// newest last, at most 20 each.
    crash_times: VecDeque<String>,
    restart_times: VecDeque<String>,
    /// The next start is a crash restart (recorded in `restart_times`).
    crash_restart_pending: bool,
    last_deployment: Option<DeploymentKind>,
    deploy_ref: Option<String>,
    deploying: Option<DeployJob>,
    last_error: Option<String>,
    otp_connected: bool,
    /// The live chain of health ticks (see [`InstanceMsg::HealthTick`]).
    tick_seq: u64,
    /// When the log files were last checked for rotation.
    rotated_at: Instant,
    /// When the watcher was last reminded of this node.
    watched_at: Instant,
    recorder: Recorder,
    /// Flavour of `current/`, found at each start (see [`crate::release_kind`]).
    release_kind: Option<crate::release_kind::ReleaseKind>,
}

impl Actor for InstanceMonitor {
    type Msg = InstanceMsg;
    type State = MonitorState;
    type Arguments = Args;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let cfg = args.cfg;
        let instance = args.instance;
        let placed = slot::placement(&cfg, instance);
        let service = cfg.slot_service_dir(instance, placed.slot);
        let recorder = Recorder::for_actor(&name(&cfg.app, instance));
        let mut state = MonitorState {
            slot: placed.slot,
            node: cfg.slot_node_name(instance, placed.slot),
            port: placed.port,
            version: crate::store::release_version(&service.join("current")),
            service,
            cfg,
            instance,
            phase: InstanceState::Stopped,
            process: None,
            generation: 0,
            generation_high: 0,
            switch: None,
            started_at: None,
            ready_since: None,
            checks_since: None,
            boot: None,
            adopted: false,
            shut_down: false,
            probing: false,
            stopping: None,
            crash_restarts: 0,
            forced_restarts: 0,
            liveness_restarts: 0,
            watchdog_restarts: 0,
            last_restart_reason: None,
            next_start_reason: None,
            memory_over: 0,
            liveness: None,
            consecutive_crashes: 0,
            crash_times: VecDeque::new(),
            restart_times: VecDeque::new(),
            crash_restart_pending: false,
            last_deployment: None,
            deploy_ref: None,
            deploying: None,
            last_error: None,
            otp_connected: false,
            tick_seq: 0,
            rotated_at: Instant::now(),
            watched_at: Instant::now(),
            recorder,
            release_kind: None,
        };
        state.liveness = liveness_spec(&state.cfg, &myself, &state.node, state.port);
        if state.cfg.watchdog.memory_bytes.is_some() && !state.cfg.beam_sample_interval.is_zero() {
            myself.send_interval(state.cfg.beam_sample_interval, || InstanceMsg::WatchdogTick);
        }
        state.schedule_tick(&myself, FAST_TICK);
        let _ = myself.cast(InstanceMsg::Boot);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _rec = state.recorder.begin(&msg);
        match msg {
            InstanceMsg::Boot => state.boot(&myself),
            InstanceMsg::Exited { generation, info } => {
                if generation == state.generation {
                    state.on_exit(&myself, info);
                } else {
                    state.on_old_exit(generation, &info);
                }
            }
            InstanceMsg::HealthTick { seq } => {
                if seq == state.tick_seq {
                    state.health_tick(&myself);
                    // Fast while an instance starts (readiness decides the
                    // rollout's pace), slow once it runs: exits are seen by
                    // the pidfd, not by this clock, and an idle deployex
                    // should sleep (200 replicas: 200 wake-ups/s, not 2000).
                    // The slow one on the shared grid (`crate::time`): 200
                    // instances' ticks cost one wake-up, not 200.
                    let next = if state.phase == InstanceState::Starting {
                        FAST_TICK
                    } else {
                        crate::time::until_next_on_grid(SLOW_TICK)
                    };
                    state.schedule_tick(&myself, next);
                }
            }
            InstanceMsg::Probed {
                generation,
                otp,
                boot,
                http,
            } => {
                state.probing = false;
                if generation == state.generation {
                    state.on_probe(&myself, otp, boot, http);
                }
            }
            // Reports about another node (the old one, during a
            // start-first switch) change nothing here.
            InstanceMsg::Node { node, .. } if node != state.node => {}
            InstanceMsg::Node {
                report: NodeReport::Liveness { failures, error },
                ..
            } => {
                state.on_liveness(&myself, failures, error);
            }
            InstanceMsg::Node {
                report: NodeReport::OverLimit { message },
                ..
            } => {
                state.on_over_limit(&myself, message);
            }
            InstanceMsg::WatchdogTick => state.watchdog_tick(&myself),
            InstanceMsg::RestartAfterBackoff { generation } => {
                if generation == state.generation
                    && state.phase == InstanceState::CrashBackoff
                    && state.process.is_none()
                {
                    state.start(&myself);
                }
            }
            InstanceMsg::Restart { reply } => {
                let result = state.forced_restart(&myself);
                let _ = reply.send(result);
            }
            InstanceMsg::Deploy { job } => state.deploy(&myself, job),
            InstanceMsg::Prepared { deploy_ref, result } => {
                state.on_prepared(&myself, deploy_ref, result)
            }
            InstanceMsg::HotUpgraded { deploy_ref, result } => {
                state.on_hot_upgraded(&myself, deploy_ref, result)
            }
            InstanceMsg::StopDone { generation, reason } => {
                if generation == state.generation {
                    state.on_stopped(&myself, reason);
                }
            }
            InstanceMsg::Rotated { deploy_ref, result } => {
                state.on_rotated(&myself, deploy_ref, result)
            }
            InstanceMsg::Status { reply } => {
                let _ = reply.send(state.status());
            }
            InstanceMsg::Shutdown { reply } => {
                // From now on nothing of this instance starts again: no
                // backoff restart, no deployment step, no late `Rotated`.
                state.shut_down = true;
                state.deploying = None;
                // A start-first switch in flight: the old process stops too
                // (the new one was never recorded: a next deployex starts
                // from the old slot).
                let old = state.switch.take().and_then(|s| s.into_old_stop());
                let current = state.process.take().map(|handle| {
                    state.stopping = Some(StopReason::Shutdown);
                    (handle, state.stop_plan(false), state.service.join("pid"))
                });
                state.set_phase(InstanceState::Stopped, "shutdown");
                tokio::spawn(async move {
                    let current = async {
                        if let Some((handle, plan, pidfile)) = current {
                            plan.run(&handle).await;
                            let _ = std::fs::remove_file(pidfile);
                        }
                    };
                    let old = async {
                        if let Some(old) = old {
                            old.run().await;
                        }
                    };
                    tokio::join!(current, old);
                    let _ = reply.send(());
                });
            }
            InstanceMsg::WatcherRestarted => {
                if state.process.is_some() {
                    state.watched_at = Instant::now();
                    state.tell_watcher(false);
                }
            }
            InstanceMsg::OldStopped { generation } => {
                // Only for the process that took over, still running.
                if generation == state.generation
                    && state.process.is_some()
                    && state.phase == InstanceState::Running
                {
                    state.tell_dm_ready();
                }
            }
            InstanceMsg::CandidatePlaced { deploy_ref, result } => {
                state.on_candidate_placed(&myself, deploy_ref, result)
            }
            InstanceMsg::AbortCandidate {
                deploy_ref,
                version,
                why,
            } => state.abort_candidate(&myself, &deploy_ref, version, why),
            #[cfg(feature = "testhooks")]
            InstanceMsg::InjectPanic => {
                panic!("injected panic in {}", name(&state.cfg.app, state.instance))
            }
        }
        Ok(())
    }
}

impl MonitorState {
    fn set_phase(&mut self, phase: InstanceState, why: &str) {
        if self.phase != phase {
            tracing::info!(instance = self.instance, from = ?self.phase, to = ?phase, why, deploy_ref = self.deploy_ref.as_deref().unwrap_or("-"), "instance state");
            self.phase = phase;
        }
    }

    fn current_dir(&self) -> PathBuf {
        self.service.join("current")
    }

    fn pidfile(&self) -> PathBuf {
        self.service.join("pid")
    }

    fn status(&self) -> InstanceStatus {
        InstanceStatus {
            instance: self.instance,
            version: self.version.clone(),
            state: self.phase,
            os_pid: self.process.as_ref().map(|p| p.pid()),
            port: self.port,
            node: self.node.clone(),
            slot: self.slot,
            otp_connected: self.otp_connected,
            tls: false,
            last_deployment: self.last_deployment,
            deploy_ref: self.deploy_ref.clone(),
            crash_restarts: self.crash_restarts,
            forced_restarts: self.forced_restarts,
            uptime_s: self
                .process
                .as_ref()
                .and(self.started_at)
                .map(|t| t.elapsed().as_secs()),
            last_error: self.last_error.clone(),
            stale: false,
            restart_times: self.restart_times.iter().cloned().collect(),
            crash_times: self.crash_times.iter().cloned().collect(),
            beam: None,
            boot: self.boot.filter(|_| self.process.is_some()),
            liveness_restarts: self.liveness_restarts,
            watchdog_restarts: self.watchdog_restarts,
            last_restart_reason: self.last_restart_reason,
            release_kind: self.release_kind,
        }
    }
}
