//! InstanceMonitor: owns the OS process of one replica.
//!
//! It starts `current/bin/{app} start` in its own process group with the
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
//!   not restart the app. Stopping the app is an explicit `Shutdown`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::config::EngineConfig;
use crate::deploy_manager::{self, DeployMsg};
use crate::model::{DeploymentKind, InstanceState, InstanceStatus, LogStream};
use crate::otp_node_watcher::{self, WatcherMsg};
use crate::process::{self, Adoption, ExitInfo, InstanceSpec, PidFile, ProcessHandle};
use crate::recorder::{Describe, Recorder};

pub fn name(instance: u32) -> String {
    format!("instance_monitor-{instance}")
}

/// A full deployment the DeployManager asks for.
#[derive(Debug, Clone)]
pub struct DeployJob {
    pub version: String,
    pub hash: String,
    pub deploy_ref: String,
    pub tarball: PathBuf,
    pub pre_commands: Vec<String>,
    pub kind: DeploymentKind,
}

/// What preparing a deployment found.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `Some(reason)` when the release can be hot-upgraded from the running
    /// version; `None(…)` with the reason for a full deployment otherwise.
    pub hot: bool,
    pub reason: String,
}

/// Why a process is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Restart,
    Deploy,
    Shutdown,
}

pub enum InstanceMsg {
    /// Adopt or start the process at boot of the monitor.
    Boot,
    Exited {
        generation: u64,
        info: ExitInfo,
    },
    /// The health check's clock: one chain of ticks per monitor, `seq`
    /// names the live one (a tick of an older chain is dropped).
    HealthTick {
        seq: u64,
    },
    Probed {
        generation: u64,
        otp: bool,
        http: bool,
    },
    RestartAfterBackoff {
        generation: u64,
    },
    /// Operator restart (a forced restart).
    Restart {
        reply: RpcReplyPort<Result<(), String>>,
    },
    Deploy {
        job: DeployJob,
    },
    /// `new/` unpacked and pre-commands run (or failed).
    Prepared {
        deploy_ref: String,
        result: Result<Prepared, String>,
    },
    /// A hot upgrade finished (or failed: then a full deployment follows).
    HotUpgraded {
        deploy_ref: String,
        result: Result<String, String>,
    },
    /// A stop requested earlier has completed.
    StopDone {
        generation: u64,
        reason: StopReason,
    },
    /// Folders rotated for a deployment (or failed).
    Rotated {
        deploy_ref: String,
        result: Result<(), String>,
    },
    Status {
        reply: RpcReplyPort<InstanceStatus>,
    },
    /// Stop the process (deployex shutting down); answers when it is gone.
    Shutdown {
        reply: RpcReplyPort<()>,
    },
    /// Fault injection for the supervision tests: the handler panics.
    InjectPanic,
}

impl Describe for InstanceMsg {
    fn kind(&self) -> &'static str {
        match self {
            InstanceMsg::Boot => "Boot",
            InstanceMsg::Exited { .. } => "Exited",
            InstanceMsg::HealthTick { .. } => "HealthTick",
            InstanceMsg::Probed { .. } => "Probed",
            InstanceMsg::RestartAfterBackoff { .. } => "RestartAfterBackoff",
            InstanceMsg::Restart { .. } => "Restart",
            InstanceMsg::Deploy { .. } => "Deploy",
            InstanceMsg::Prepared { .. } => "Prepared",
            InstanceMsg::HotUpgraded { .. } => "HotUpgraded",
            InstanceMsg::StopDone { .. } => "StopDone",
            InstanceMsg::Rotated { .. } => "Rotated",
            InstanceMsg::Status { .. } => "Status",
            InstanceMsg::Shutdown { .. } => "Shutdown",
            InstanceMsg::InjectPanic => "InjectPanic",
        }
    }
    fn summary(&self) -> String {
        match self {
            InstanceMsg::Exited { generation, info } => format!("gen={generation} {info:?}"),
            InstanceMsg::Probed {
                generation,
                otp,
                http,
            } => format!("gen={generation} otp={otp} http={http}"),
            InstanceMsg::RestartAfterBackoff { generation } => format!("gen={generation}"),
            InstanceMsg::Deploy { job } => format!(
                "{} ref={} {} pre_commands",
                job.version,
                job.deploy_ref,
                job.pre_commands.len()
            ),
            InstanceMsg::Prepared { deploy_ref, result } => match result {
                Ok(p) => format!("ref={deploy_ref} ok hot={} ({})", p.hot, p.reason),
                Err(e) => format!("ref={deploy_ref} error: {e}"),
            },
            InstanceMsg::HotUpgraded { deploy_ref, result } => match result {
                Ok(r) => format!("ref={deploy_ref} ok {r}"),
                Err(e) => format!("ref={deploy_ref} error: {e}"),
            },
            InstanceMsg::StopDone { generation, reason } => {
                format!("gen={generation} {reason:?}")
            }
            InstanceMsg::Rotated { deploy_ref, result } => {
                format!("ref={deploy_ref} {}", short_result(result))
            }
            _ => String::new(),
        }
    }
}

fn short_result(r: &Result<(), String>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("error: {e}"),
    }
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
    node: String,
    port: u16,
    service: PathBuf,
    phase: InstanceState,
    process: Option<Arc<ProcessHandle>>,
    /// Bumped on every spawn/adopt; stale messages are ignored.
    generation: u64,
    started_at: Option<Instant>,
    ready_since: Option<Instant>,
    probing: bool,
    stopping: Option<StopReason>,
    version: Option<String>,
    crash_restarts: u64,
    forced_restarts: u64,
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
        let service = cfg.service_dir(instance);
        let mut state = MonitorState {
            node: cfg.node_name(instance),
            port: cfg.port(instance),
            version: crate::store::release_version(&service.join("current")),
            service,
            cfg,
            instance,
            phase: InstanceState::Stopped,
            process: None,
            generation: 0,
            started_at: None,
            ready_since: None,
            probing: false,
            stopping: None,
            crash_restarts: 0,
            forced_restarts: 0,
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
            recorder: Recorder::for_actor(&name(instance)),
        };
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
                }
            }
            InstanceMsg::HealthTick { seq } => {
                if seq == state.tick_seq {
                    state.health_tick(&myself);
                    // Fast while an instance starts (readiness decides the
                    // rollout's pace), slow once it runs: exits are seen by
                    // the pidfd, not by this clock, and an idle deployex
                    // should sleep (200 replicas: 200 wake-ups/s, not 2000).
                    let next = if state.phase == InstanceState::Starting {
                        FAST_TICK
                    } else {
                        SLOW_TICK
                    };
                    state.schedule_tick(&myself, next);
                }
            }
            InstanceMsg::Probed {
                generation,
                otp,
                http,
            } => {
                state.probing = false;
                if generation == state.generation {
                    state.on_probe(otp, http);
                }
            }
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
                state.deploying = None;
                match state.process.take() {
                    Some(handle) => {
                        state.stopping = Some(StopReason::Shutdown);
                        state.set_phase(InstanceState::Stopped, "shutdown");
                        let grace = state.cfg.stop_grace;
                        let pidfile = state.service.join("pid");
                        tokio::spawn(async move {
                            process::stop_group(&handle, grace).await;
                            let _ = std::fs::remove_file(pidfile);
                            let _ = reply.send(());
                        });
                    }
                    None => {
                        let _ = reply.send(());
                    }
                }
            }
            InstanceMsg::InjectPanic => panic!("injected panic in {}", name(state.instance)),
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

    /// Adopt the process a previous monitor (or deployex) left running, or
    /// start a fresh one when a release is installed.
    fn boot(&mut self, myself: &ActorRef<InstanceMsg>) {
        repair_service_dir(&self.service);
        self.version = crate::store::release_version(&self.current_dir());
        if let Ok(pidfile) = PidFile::read(&self.pidfile()) {
            match process::adopt(&pidfile) {
                Adoption::Adopt(handle) => {
                    tracing::info!(
                        instance = self.instance,
                        pid = pidfile.pid,
                        "adopted running instance"
                    );
                    stop_strays(&self.service, Some(handle.pid()));
                    self.attach(myself, handle);
                    // It was already running: readiness only needs the probes.
                    self.started_at = Some(Instant::now() - self.cfg.min_ready);
                    return;
                }
                other => {
                    tracing::info!(instance = self.instance, pid = pidfile.pid, outcome = ?other, "pid file does not name a live instance");
                    let _ = std::fs::remove_file(self.pidfile());
                }
            }
        }
        // Nothing of this instance may run unless adopted above: a deployex
        // killed between spawn and pid file leaves a process nobody knows.
        stop_strays(&self.service, None);
        if self.version.is_some() {
            self.start(myself);
        }
    }

    fn attach(&mut self, myself: &ActorRef<InstanceMsg>, handle: ProcessHandle) {
        if std::mem::take(&mut self.crash_restart_pending) {
            push_bounded(&mut self.restart_times, crate::time::utc_now_millis());
        }
        self.generation += 1;
        let generation = self.generation;
        let handle = Arc::new(handle);
        self.process = Some(handle.clone());
        self.started_at = Some(Instant::now());
        self.ready_since = None;
        self.otp_connected = false;
        self.stopping = None;
        self.set_phase(InstanceState::Starting, "process started");
        // Back to the fast clock: readiness paces the rollout.
        self.schedule_tick(myself, FAST_TICK);
        if let Some(w) = ractor::registry::where_is(otp_node_watcher::NAME) {
            let _ = w.send_message(WatcherMsg::Retry {
                node: self.node.clone(),
            });
        }
        let me = myself.clone();
        tokio::spawn(async move {
            // pidfd readiness -> this task -> one cast: the whole way from
            // the kernel to the respawn (no timer involved).
            let info = handle.wait_exit_then_kill_group().await;
            let _ = me.cast(InstanceMsg::Exited { generation, info });
        });
    }

    /// Spawn `current/bin/{app} start`. Fork+exec returns at once, so this
    /// runs in the handler: the crash→respawn path stays in one message.
    fn start(&mut self, myself: &ActorRef<InstanceMsg>) {
        let current = self.current_dir();
        let program = current.join("bin").join(&self.cfg.app);
        if !program.is_file() {
            self.version = None;
            self.set_phase(InstanceState::Stopped, "no release installed");
            return;
        }
        let spec = InstanceSpec {
            program: program.clone(),
            args: vec!["start".to_string()],
            cwd: current.clone(),
            env: self.env(),
            stdout_log: self.cfg.log_file(self.instance, LogStream::Stdout),
            stderr_log: self.cfg.log_file(self.instance, LogStream::Stderr),
        };
        match process::spawn_instance(&spec) {
            Ok(handle) => {
                crate::testhook::point("spawned");
                self.version = crate::store::release_version(&current);
                let pidfile = PidFile {
                    pid: handle.pid(),
                    start_time_ticks: handle.start_time_ticks(),
                    program,
                    version: self.version.clone(),
                    port: self.port,
                };
                if let Err(e) = pidfile.write(&self.pidfile()) {
                    tracing::error!(instance = self.instance, error = %e, "cannot write pid file");
                }
                crate::testhook::point("pid_file_written");
                tracing::info!(
                    instance = self.instance,
                    pid = handle.pid(),
                    version = self.version.as_deref().unwrap_or("?"),
                    "instance started"
                );
                self.attach(myself, handle);
            }
            Err(e) => {
                let error = format!("cannot start {}: {e}", spec.program.display());
                tracing::error!(instance = self.instance, %error);
                self.last_error = Some(error);
                self.schedule_crash_restart(myself);
            }
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        let overrides = vec![
            (
                "RELEASE_NODE_SUFFIX".to_string(),
                format!("-{}", self.instance),
            ),
            ("RELEASE_DISTRIBUTION".to_string(), "sname".to_string()),
            ("RELEASE_COOKIE".to_string(), self.cfg.cookie.clone()),
            ("PORT".to_string(), self.port.to_string()),
            ("ERL_EPMD_PORT".to_string(), self.cfg.epmd_port.to_string()),
            ("ERL_CRASH_DUMP_SECONDS".to_string(), "0".to_string()),
            (
                process::INSTANCE_MARKER.to_string(),
                self.service.to_string_lossy().into_owned(),
            ),
        ];
        process::instance_env(self.cfg.base_env.iter().cloned(), &overrides)
    }

    /// The crash -> respawn path: the respawn (`schedule_crash_restart` ->
    /// `start`) comes first, the bookkeeping after it. The exit watcher
    /// already killed what was left of the old process group.
    fn on_exit(&mut self, myself: &ActorRef<InstanceMsg>, info: ExitInfo) {
        self.process = None;
        self.otp_connected = false;
        if self.stopping.is_some() {
            // An intended stop; StopDone drives what happens next.
            let _ = std::fs::remove_file(self.pidfile());
            return;
        }
        let crashed_at = crate::time::utc_now_millis();
        let crashed_version = self.version.clone();
        self.crash_restarts += 1;
        self.crash_restart_pending = true;
        self.schedule_crash_restart(myself);
        if self.process.is_none() {
            // Backing off (or the start failed): the pid file names a dead
            // process. After a respawn, `start` has already replaced it.
            let _ = std::fs::remove_file(self.pidfile());
        }
        push_bounded(&mut self.crash_times, crashed_at);
        tracing::warn!(instance = self.instance, exit = ?info, version = crashed_version.as_deref().unwrap_or("?"), "instance exited unexpectedly");
        // After the backoff bookkeeping: `consecutive_crashes` counts the
        // crashes without a stable period in between (a crash loop), not a
        // process killed once in a while (OOM killer, operator).
        if let Some(dm) = ractor::registry::where_is(deploy_manager::NAME) {
            let _ = dm.send_message(DeployMsg::InstanceCrashed {
                instance: self.instance,
                consecutive: self.consecutive_crashes,
            });
        }
    }

    fn schedule_crash_restart(&mut self, myself: &ActorRef<InstanceMsg>) {
        let was_ready_long = self
            .ready_since
            .is_some_and(|t| t.elapsed() >= self.cfg.backoff_reset_after);
        if was_ready_long {
            self.consecutive_crashes = 0;
        }
        self.ready_since = None;
        self.consecutive_crashes += 1;
        let delay = backoff_delay(
            self.consecutive_crashes,
            self.cfg.backoff_base,
            self.cfg.backoff_max,
        );
        if delay.is_zero() && self.deploying.is_none() {
            self.start(myself);
        } else {
            self.set_phase(InstanceState::CrashBackoff, "crashed");
            let generation = self.generation;
            myself.send_after(delay, move || InstanceMsg::RestartAfterBackoff {
                generation,
            });
        }
    }

    /// Start a new chain of health ticks, `delay` from now; the previous
    /// chain dies at its next tick.
    fn schedule_tick(&mut self, myself: &ActorRef<InstanceMsg>, delay: Duration) {
        self.tick_seq = self.tick_seq.wrapping_add(1);
        let seq = self.tick_seq;
        myself.send_after(delay, move || InstanceMsg::HealthTick { seq });
    }

    fn health_tick(&mut self, myself: &ActorRef<InstanceMsg>) {
        // Log rotation, every 10 s: the size check is two `stat`s (here);
        // the copy, when one is due, runs off the handler. A blocking-pool
        // task per instance every 5 s kept ~40 pool threads alive at 200
        // replicas for nothing.
        if self.rotated_at.elapsed() >= ROTATION_CHECK {
            self.rotated_at = Instant::now();
            let (max, keep) = (self.cfg.log_max_bytes, self.cfg.log_keep);
            let due: Vec<PathBuf> = [LogStream::Stdout, LogStream::Stderr]
                .into_iter()
                .map(|stream| self.cfg.log_file(self.instance, stream))
                .filter(|path| std::fs::metadata(path).is_ok_and(|m| m.len() > max))
                .collect();
            if !due.is_empty() {
                tokio::task::spawn_blocking(move || {
                    for path in due {
                        let _ = process::rotate_if_needed(&path, max, keep);
                    }
                });
            }
        }
        if self.process.is_none() {
            return;
        }
        // Idempotent: a restarted watcher learns the node again within
        // WATCH_REMINDER (every tick while the instance starts).
        if self.phase == InstanceState::Starting || self.watched_at.elapsed() >= WATCH_REMINDER {
            self.watched_at = Instant::now();
            if let Some(w) = ractor::registry::where_is(otp_node_watcher::NAME) {
                let _ = w.send_message(WatcherMsg::Watch {
                    node: self.node.clone(),
                });
            }
        }
        // Probes decide readiness, and only that: once an instance runs, a
        // probe result changes nothing (an exit is seen by the pidfd, the
        // crash counter starts over on the clock in
        // `schedule_crash_restart`, and the status takes the node's
        // connection from the watcher). Probing running instances every
        // second cost 200 replicas ~1000 messages and tasks per second.
        if self.phase != InstanceState::Starting || self.probing {
            return;
        }
        self.probing = true;
        let generation = self.generation;
        let node = self.node.clone();
        let port = self.port;
        let health_path = self.cfg.health_path.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let otp = node_connected(&node).await;
            let http = match health_path {
                None => true,
                Some(path) => crate::health::http_ok(port, &path, Duration::from_secs(1)).await,
            };
            let _ = me.cast(InstanceMsg::Probed {
                generation,
                otp,
                http,
            });
        });
    }

    fn on_probe(&mut self, otp: bool, http: bool) {
        self.otp_connected = otp;
        let Some(started) = self.started_at else {
            return;
        };
        if self.process.is_none() {
            return;
        }
        let checks = (otp || !self.cfg.otp_readiness) && http;
        match self.phase {
            InstanceState::Starting if checks && started.elapsed() >= self.cfg.min_ready => {
                self.ready_since = Some(Instant::now());
                self.last_error = None;
                self.set_phase(InstanceState::Running, "ready");
                if let Some(dm) = ractor::registry::where_is(deploy_manager::NAME) {
                    let _ = dm.send_message(DeployMsg::InstanceReady {
                        instance: self.instance,
                        version: self.version.clone(),
                    });
                }
            }
            _ => {}
        }
    }

    fn forced_restart(&mut self, myself: &ActorRef<InstanceMsg>) -> Result<(), String> {
        if self.deploying.is_some() {
            return Err("a deployment is in progress on this instance".to_string());
        }
        if self.stopping.is_some() {
            return Err("the instance is already being stopped".to_string());
        }
        self.forced_restarts += 1;
        match self.process.clone() {
            Some(handle) => {
                self.stop_process(myself, handle, StopReason::Restart);
            }
            None => {
                self.consecutive_crashes = 0;
                self.start(myself);
            }
        }
        Ok(())
    }

    fn stop_process(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
        handle: Arc<ProcessHandle>,
        reason: StopReason,
    ) {
        self.stopping = Some(reason);
        let generation = self.generation;
        let grace = self.cfg.stop_grace;
        let me = myself.clone();
        tokio::spawn(async move {
            process::stop_group(&handle, grace).await;
            let _ = me.cast(InstanceMsg::StopDone { generation, reason });
        });
    }

    fn on_stopped(&mut self, myself: &ActorRef<InstanceMsg>, reason: StopReason) {
        self.process = None;
        self.stopping = None;
        let _ = std::fs::remove_file(self.pidfile());
        match reason {
            StopReason::Restart => {
                self.consecutive_crashes = 0;
                self.start(myself);
            }
            StopReason::Deploy => {
                crate::testhook::point("old_stopped");
                self.rotate(myself)
            }
            StopReason::Shutdown => self.set_phase(InstanceState::Stopped, "stopped"),
        }
    }

    fn deploy(&mut self, myself: &ActorRef<InstanceMsg>, job: DeployJob) {
        crate::testhook::point("deploy_requested");
        if let Some(current) = &self.deploying {
            tracing::warn!(instance = self.instance, busy = %current.deploy_ref, refused = %job.deploy_ref, "deployment refused: another one is running");
            return;
        }
        tracing::info!(instance = self.instance, version = %job.version, deploy_ref = %job.deploy_ref, "full deployment: preparing new/");
        self.deploy_ref = Some(job.deploy_ref.clone());
        self.deploying = Some(job.clone());
        self.set_phase(
            if job.pre_commands.is_empty() {
                InstanceState::Deploying
            } else {
                InstanceState::PreCommands
            },
            "deployment",
        );
        let cfg = self.cfg.clone();
        let instance = self.instance;
        let service = self.service.clone();
        let env = self.env();
        let me = myself.clone();
        let running = self
            .version
            .clone()
            .filter(|_| self.process.is_some() && job.kind != DeploymentKind::Rollback);
        tokio::spawn(async move {
            let result = prepare(&cfg, instance, &service, &job, env, running).await;
            let _ = me.cast(InstanceMsg::Prepared {
                deploy_ref: job.deploy_ref,
                result,
            });
        });
    }

    fn on_prepared(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
        deploy_ref: String,
        result: Result<Prepared, String>,
    ) {
        let Some(job) = self.deploying.clone() else {
            return;
        };
        if job.deploy_ref != deploy_ref {
            return;
        }
        if let Err(error) = &result {
            let error = error.clone();
            tracing::error!(instance = self.instance, %deploy_ref, %error, "deployment preparation failed; the running version is kept");
            self.deploying = None;
            self.last_error = Some(error.clone());
            let pre_commands_failed = error.starts_with("pre-command");
            self.set_phase(
                if pre_commands_failed {
                    InstanceState::PreCommandsFailed
                } else if self.process.is_some() {
                    InstanceState::Running
                } else {
                    InstanceState::Stopped
                },
                "preparation failed",
            );
            if let Some(dm) = ractor::registry::where_is(deploy_manager::NAME) {
                let _ = dm.send_message(DeployMsg::DeployFailed {
                    instance: self.instance,
                    deploy_ref,
                    error,
                });
            }
            return;
        }
        let prepared = match result {
            Ok(p) => p,
            Err(_) => unreachable!("handled above"),
        };
        let from = self.version.clone().unwrap_or_default();
        if prepared.hot && self.process.is_some() {
            tracing::info!(instance = self.instance, %deploy_ref, from = %from, to = %job.version, reason = %prepared.reason, "HOT UPGRADE version detected");
            self.set_phase(InstanceState::Deploying, "hot upgrade");
            let rpc = crate::otp_node_watcher::WatcherRpc {
                node: self.node.clone(),
            };
            let current = self.current_dir();
            let new = self.service.join("new");
            let app = self.cfg.app.clone();
            let me = myself.clone();
            tokio::spawn(async move {
                let result = crate::upgrade::hot_upgrade(
                    &rpc,
                    &current,
                    &job.tarball,
                    &app,
                    &from,
                    &job.version,
                    Duration::from_secs(60),
                )
                .await
                .map(|report| {
                    format!(
                        "{} -> {} in {} ms (relup {:?})",
                        report.from,
                        report.to,
                        report.total.as_millis(),
                        report.relup
                    )
                })
                .map_err(|e| crate::release_fetcher::error_chain(&e));
                if result.is_ok() {
                    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(new)).await;
                }
                let _ = me.cast(InstanceMsg::HotUpgraded {
                    deploy_ref: job.deploy_ref,
                    result,
                });
            });
            return;
        }
        tracing::info!(instance = self.instance, %deploy_ref, from = %from, to = %job.version, reason = %prepared.reason, "full deployment");
        self.full_deploy(myself);
    }

    fn full_deploy(&mut self, myself: &ActorRef<InstanceMsg>) {
        self.set_phase(InstanceState::Deploying, "stopping the old version");
        match self.process.clone() {
            Some(handle) => self.stop_process(myself, handle, StopReason::Deploy),
            None => self.rotate(myself),
        }
    }

    fn on_hot_upgraded(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
        deploy_ref: String,
        result: Result<String, String>,
    ) {
        let Some(job) = self.deploying.clone() else {
            return;
        };
        if job.deploy_ref != deploy_ref {
            return;
        }
        match result {
            Ok(summary) => {
                tracing::info!(instance = self.instance, %deploy_ref, %summary, "release upgrade executed with success");
                self.deploying = None;
                self.version = crate::store::release_version(&self.current_dir());
                self.last_deployment = Some(DeploymentKind::HotUpgrade);
                self.last_error = None;
                self.set_phase(
                    if self.process.is_some() {
                        InstanceState::Running
                    } else {
                        InstanceState::CrashBackoff
                    },
                    "hot upgrade done",
                );
                if let Some(dm) = ractor::registry::where_is(deploy_manager::NAME) {
                    let _ = dm.send_message(DeployMsg::Deployed {
                        instance: self.instance,
                        version: job.version.clone(),
                        hash: job.hash.clone(),
                        deploy_ref: job.deploy_ref.clone(),
                        kind: DeploymentKind::HotUpgrade,
                    });
                    if self.process.is_some() {
                        let _ = dm.send_message(DeployMsg::InstanceReady {
                            instance: self.instance,
                            version: self.version.clone(),
                        });
                    }
                }
            }
            Err(error) => {
                tracing::error!(instance = self.instance, %deploy_ref, %error, "hot upgrade failed; falling back to a full deployment");
                self.last_error = Some(format!("hot upgrade failed: {error}"));
                self.full_deploy(myself);
            }
        }
    }

    fn rotate(&mut self, myself: &ActorRef<InstanceMsg>) {
        let Some(job) = self.deploying.clone() else {
            return;
        };
        let service = self.service.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let result = tokio::task::spawn_blocking(move || rotate_folders(&service))
                .await
                .map_err(|e| format!("rotation task failed: {e}"))
                .and_then(|r| r);
            let _ = me.cast(InstanceMsg::Rotated {
                deploy_ref: job.deploy_ref,
                result,
            });
        });
    }

    fn on_rotated(
        &mut self,
        myself: &ActorRef<InstanceMsg>,
        deploy_ref: String,
        result: Result<(), String>,
    ) {
        let Some(job) = self.deploying.take() else {
            return;
        };
        if job.deploy_ref != deploy_ref {
            self.deploying = Some(job);
            return;
        }
        if let Err(error) = result {
            tracing::error!(instance = self.instance, %deploy_ref, %error, "folder rotation failed");
            self.last_error = Some(error.clone());
            if let Some(dm) = ractor::registry::where_is(deploy_manager::NAME) {
                let _ = dm.send_message(DeployMsg::DeployFailed {
                    instance: self.instance,
                    deploy_ref,
                    error,
                });
            }
            // Start whatever `current/` holds now.
            self.start(myself);
            return;
        }
        self.consecutive_crashes = 0;
        self.last_deployment = Some(job.kind);
        self.start(myself);
        if let Some(dm) = ractor::registry::where_is(deploy_manager::NAME) {
            let _ = dm.send_message(DeployMsg::Deployed {
                instance: self.instance,
                version: job.version.clone(),
                hash: job.hash.clone(),
                deploy_ref: job.deploy_ref.clone(),
                kind: job.kind,
            });
        }
    }

    fn status(&self) -> InstanceStatus {
        InstanceStatus {
            instance: self.instance,
            version: self.version.clone(),
            state: self.phase,
            os_pid: self.process.as_ref().map(|p| p.pid()),
            port: self.port,
            node: self.node.clone(),
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
        }
    }
}

fn push_bounded(list: &mut VecDeque<String>, value: String) {
    if list.len() == 20 {
        list.pop_front();
    }
    list.push_back(value);
}

/// Delay before restart number `consecutive` (1-based): 0, base, 2·base,
/// 4·base … capped at `max`.
pub fn backoff_delay(consecutive: u32, base: Duration, max: Duration) -> Duration {
    if consecutive <= 1 {
        return Duration::ZERO;
    }
    let exp = (consecutive - 2).min(20);
    base.saturating_mul(1u32 << exp).min(max)
}

async fn node_connected(node: &str) -> bool {
    let Some(w) = ractor::registry::where_is(otp_node_watcher::NAME) else {
        return false;
    };
    let w: ActorRef<WatcherMsg> = w.into();
    let node = node.to_string();
    ractor::call_t!(w, |reply| WatcherMsg::IsConnected { node, reply }, 500).unwrap_or(false)
}

/// Unpack the tarball into `new/` and run the pre-commands from there.
async fn prepare(
    cfg: &EngineConfig,
    instance: u32,
    service: &Path,
    job: &DeployJob,
    env: Vec<(String, String)>,
    running: Option<String>,
) -> Result<Prepared, String> {
    let new = service.join("new");
    let tarball = job.tarball.clone();
    let app = cfg.app.clone();
    let new2 = new.clone();
    tokio::task::spawn_blocking(move || {
        if new2.exists() {
            std::fs::remove_dir_all(&new2)
                .map_err(|e| format!("cannot remove {}: {e}", new2.display()))?;
        }
        if let Some(parent) = new2.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        crate::store::unpack_release(
            &tarball,
            &new2,
            &app,
            &crate::store::UnpackLimits::default(),
        )
        .map(|_| ())
        .map_err(|e| format!("unpack: {}", crate::release_fetcher::error_chain(&e)))
    })
    .await
    .map_err(|e| format!("unpack task failed: {e}"))??;
    crate::testhook::point("new_unpacked");

    let program = new.join("bin").join(&cfg.app);
    for (n, command) in job.pre_commands.iter().enumerate() {
        let command = command.trim();
        let (sub, rest) = match command.split_once(char::is_whitespace) {
            Some((sub, rest)) => (sub, Some(rest.trim())),
            None => (command, None),
        };
        let mut args = vec![sub.to_string()];
        if let Some(rest) = rest {
            args.push(rest.to_string());
        }
        tracing::info!(instance, deploy_ref = %job.deploy_ref, command, "running pre-command");
        let outcome = process::run_command(
            &program,
            &args,
            &new,
            &env,
            &cfg.log_file(instance, LogStream::Stdout),
            &cfg.log_file(instance, LogStream::Stderr),
            cfg.pre_command_timeout,
        )
        .await;
        match outcome {
            Ok(info) if info.code == Some(0) => {}
            Ok(info) => {
                return Err(format!(
                    "pre-command {} ({command}) failed: {info:?}",
                    n + 1
                ));
            }
            Err(e) => {
                return Err(format!(
                    "pre-command {} ({command}) could not run: {e}",
                    n + 1
                ));
            }
        }
    }
    crate::testhook::point("pre_commands_done");
    let decision = match running {
        None => crate::upgrade::Decision::FullDeployment {
            reason: "no running instance to upgrade".to_string(),
        },
        Some(running) => {
            let app = cfg.app.clone();
            let to = job.version.clone();
            let new2 = new.clone();
            tokio::task::spawn_blocking(move || crate::upgrade::detect(&new2, &app, &to, &running))
                .await
                .map_err(|e| format!("detection task failed: {e}"))?
        }
    };
    Ok(Prepared {
        hot: decision.is_hot(),
        reason: decision.reason().to_string(),
    })
}

/// `previous/` removed, `current/` → `previous/`, `new/` → `current/`.
fn rotate_folders(service: &Path) -> Result<(), String> {
    let new = service.join("new");
    let current = service.join("current");
    let previous = service.join("previous");
    if !new.is_dir() {
        return Err(format!("{} is missing", new.display()));
    }
    if current.exists() {
        if previous.exists() {
            std::fs::remove_dir_all(&previous)
                .map_err(|e| format!("cannot remove {}: {e}", previous.display()))?;
        }
        std::fs::rename(&current, &previous)
            .map_err(|e| format!("cannot move {} to previous/: {e}", current.display()))?;
        sync_dir(service);
        crate::testhook::point("current_moved_to_previous");
    }
    std::fs::rename(&new, &current)
        .map_err(|e| format!("cannot move {} to current/: {e}", new.display()))?;
    sync_dir(service);
    crate::testhook::point("new_moved_to_current");
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Bring a service folder left by an interrupted deployment back to a
/// consistent shape: a missing `current/` is restored from `new/` (the
/// rotation had moved `current/` away already) or from `previous/`; a
/// leftover `new/` is removed.
pub fn repair_service_dir(service: &Path) {
    let new = service.join("new");
    let current = service.join("current");
    let previous = service.join("previous");
    if !current.exists() {
        if new.join("bin").is_dir() && previous.exists() {
            // Interrupted between the two renames of `rotate_folders`.
            if std::fs::rename(&new, &current).is_ok() {
                tracing::warn!(service = %service.display(), "repaired: new/ moved to current/");
            }
        } else if previous.join("bin").is_dir() && std::fs::rename(&previous, &current).is_ok() {
            tracing::warn!(service = %service.display(), "repaired: previous/ moved back to current/");
        }
    }
    if new.exists() {
        let _ = std::fs::remove_dir_all(&new);
    }
    sync_dir(service);
}

/// Stop every copy of this instance (process trees found by their
/// environment marker or command line, see [`process::instance_roots`]) but
/// the adopted one `keep`, and wait for them to be gone: left by a deployex
/// killed between spawn and pid file, or started by hand. Never two copies
/// of an instance.
fn stop_strays(service: &Path, keep: Option<i32>) {
    let strays: Vec<i32> = process::instance_roots(service)
        .into_iter()
        .filter(|&pid| Some(pid) != keep)
        .collect();
    if strays.is_empty() {
        return;
    }
    for pid in &strays {
        tracing::warn!(service = %service.display(), pid, "stopping a stray process of this instance");
    }
    let deadline = Instant::now() + STRAY_KILL_TIMEOUT;
    loop {
        let left: Vec<i32> = strays
            .iter()
            .copied()
            .filter(|&pid| process::is_running(pid))
            .collect();
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            tracing::error!(service = %service.display(), pids = ?left, "stray processes survive SIGKILL");
            return;
        }
        for pid in left {
            process::kill_stray(service, pid);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How long [`stop_strays`] waits for SIGKILLed strays to go (the kernel
/// frees a BEAM's memory before its pid: a big heap takes a moment).
const STRAY_KILL_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_immediate_then_exponential_and_capped() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        let delays: Vec<u64> = (1..=9)
            .map(|n| backoff_delay(n, base, max).as_secs())
            .collect();
        assert_eq!(delays, vec![0, 1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff_delay(1000, base, max), max);
    }

    #[test]
    fn rotation_moves_current_to_previous_and_new_to_current() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        for (d, v) in [("current", "1"), ("previous", "0"), ("new", "2")] {
            std::fs::create_dir_all(s.join(d)).unwrap();
            std::fs::write(s.join(d).join("v"), v).unwrap();
        }
        rotate_folders(s).unwrap();
        assert_eq!(std::fs::read_to_string(s.join("current/v")).unwrap(), "2");
        assert_eq!(std::fs::read_to_string(s.join("previous/v")).unwrap(), "1");
        assert!(!s.join("new").exists());
    }

    #[test]
    fn repair_restores_current_after_an_interrupted_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        // Interrupted after current → previous, before new → current.
        std::fs::create_dir_all(s.join("previous/bin")).unwrap();
        std::fs::create_dir_all(s.join("new/bin")).unwrap();
        std::fs::write(s.join("new/v"), "2").unwrap();
        repair_service_dir(s);
        assert_eq!(std::fs::read_to_string(s.join("current/v")).unwrap(), "2");
        assert!(s.join("previous/bin").is_dir());
        // Leftover new/ beside a good current/ is removed.
        std::fs::create_dir_all(s.join("new/bin")).unwrap();
        repair_service_dir(s);
        assert!(!s.join("new").exists());
        assert!(s.join("current").is_dir());
    }
}
