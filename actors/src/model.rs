//! Plain data shared by the engine and its clients (the web layer, the CLI,
//! the tests): the status snapshot, the deployment history, the mode.
//!
//! These types are the JSON contract of `/api/v1/*`: field names are part of
//! the public API; add fields freely, never rename one.

use serde::{Deserialize, Serialize};

/// Lifecycle of one instance, as shown to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// The OS process runs but has not passed every readiness check yet.
    Starting,
    /// Ready: alive, node answering (if required), health path 2xx (if set),
    /// and up for at least `min_ready_ms`.
    Running,
    /// Pre-commands of a new version are running (the old version still runs).
    PreCommands,
    /// A pre-command failed; the old version keeps running; retried with backoff.
    PreCommandsFailed,
    /// Crashed; waiting for the backoff delay before the next start.
    CrashBackoff,
    /// No process (never deployed, or stopped on purpose).
    Stopped,
    /// A deployment step (unpack, stop, rotate folders, start) is running.
    Deploying,
}

/// How far an instance's node got through its boot script, from
/// `init:get_status()` over the distribution link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootPhase {
    /// The node answers, its boot script is still running (applications
    /// are being started: `{starting, _}`), or it is stopping.
    Starting,
    /// The boot script finished: every application started
    /// (`{started, _}`).
    Started,
}

/// Why deployex last started a new process of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartReason {
    /// The process exited on its own.
    Crash,
    /// The node stopped answering the liveness check.
    Liveness,
    /// The watchdog found its resident memory over the limit.
    Memory,
    /// An operator asked for it.
    Forced,
    /// A full deployment replaced it.
    Deploy,
}

impl RestartReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::Crash => "crash",
            RestartReason::Liveness => "liveness",
            RestartReason::Memory => "memory",
            RestartReason::Forced => "forced",
            RestartReason::Deploy => "deploy",
        }
    }
}

/// How a version reached an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentKind {
    FullDeployment,
    HotUpgrade,
    Rollback,
}

/// One row of the deployment history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub version: String,
    pub hash: String,
    pub instance: u32,
    pub deployment: DeploymentKind,
    pub deploy_ref: String,
    /// UTC, RFC 3339.
    pub inserted_at: String,
}

/// Which version the DeployManager aims for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Mode {
    /// Follow `current.json`.
    #[default]
    Automatic,
    /// Deploy the pinned version, ignore `current.json`.
    Manual { version: String },
}

/// Snapshot of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub instance: u32,
    pub version: Option<String>,
    pub state: InstanceState,
    pub os_pid: Option<i32>,
    /// The port the current process listens on (moves with start-first
    /// deployments, within the pool).
    pub port: u16,
    pub node: String,
    /// The slot the current process runs from (`a`: `service/{app}/{i}`,
    /// `b`: `service/{app}/{i}b`; see `instance_monitor::slot`).
    #[serde(default)]
    pub slot: crate::config::Slot,
    pub otp_connected: bool,
    /// The distribution link runs over mutual TLS.
    #[serde(default)]
    pub tls: bool,
    pub last_deployment: Option<DeploymentKind>,
    pub deploy_ref: Option<String>,
    pub crash_restarts: u64,
    pub forced_restarts: u64,
    pub uptime_s: Option<u64>,
    pub last_error: Option<String>,
    /// True when the instance's actor did not answer in time: every other
    /// field is then a placeholder.
    pub stale: bool,
    /// UTC times at which the most recent crash restarts started a new
    /// process (at most 20), oldest first.
    #[serde(default)]
    pub restart_times: Vec<String>,
    /// UTC times of the most recent crashes (at most 20), oldest first.
    #[serde(default)]
    pub crash_times: Vec<String>,
    /// The latest telemetry sample of the instance's BEAM, taken over
    /// distribution; `None` while the node is not connected, before its
    /// first sample, or when sampling is off.
    #[serde(default)]
    pub beam: Option<BeamStats>,
    /// The boot phase of the current process's node (`None`: no process,
    /// node not answering yet, or `DEPLOYEX_OTP_READINESS=false`).
    #[serde(default)]
    pub boot: Option<BootPhase>,
    /// Restarts because the node stopped answering the liveness check.
    #[serde(default)]
    pub liveness_restarts: u64,
    /// Restarts by the resource watchdog (memory).
    #[serde(default)]
    pub watchdog_restarts: u64,
    /// Why the current process was started, if deployex restarted it.
    #[serde(default)]
    pub last_restart_reason: Option<RestartReason>,
    /// What built the installed release (`mix`, `relx`); decides the start
    /// command. `None` while no release is installed.
    #[serde(default)]
    pub release_kind: Option<crate::release_kind::ReleaseKind>,
}

impl InstanceStatus {
    /// What the status shows for an instance whose actor did not answer.
    pub fn stale(instance: u32, port: u16, node: String) -> InstanceStatus {
        InstanceStatus {
            instance,
            version: None,
            state: InstanceState::Stopped,
            os_pid: None,
            port,
            node,
            slot: crate::config::Slot::A,
            otp_connected: false,
            tls: false,
            last_deployment: None,
            deploy_ref: None,
            crash_restarts: 0,
            forced_restarts: 0,
            uptime_s: None,
            last_error: None,
            stale: true,
            restart_times: Vec::new(),
            crash_times: Vec::new(),
            beam: None,
            boot: None,
            liveness_restarts: 0,
            watchdog_restarts: 0,
            last_restart_reason: None,
            release_kind: None,
        }
    }
}

/// One telemetry sample of a BEAM node (read over distribution).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeamStats {
    /// `erlang:memory(total)`.
    pub memory_bytes: u64,
    /// `erlang:system_info(process_count)`.
    pub processes: u64,
    /// `erlang:statistics(run_queue)`: processes ready to run, all schedulers.
    pub run_queue: u64,
    /// Reductions per second between this sample and the previous one on
    /// the same connection; `None` on a connection's first sample.
    pub reductions_per_s: Option<u64>,
    /// When the sample was taken, UTC RFC 3339 with milliseconds.
    pub sampled_at: String,
    /// `erlang:system_info/1` counts and limits (0: unknown).
    #[serde(default)]
    pub atom_count: u64,
    #[serde(default)]
    pub atom_limit: u64,
    #[serde(default)]
    pub port_count: u64,
    #[serde(default)]
    pub port_limit: u64,
    #[serde(default)]
    pub process_limit: u64,
}

/// Snapshot of the whole engine, the body of `GET /api/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub app: String,
    pub mode: String,
    pub manual_version: Option<String>,
    pub desired_version: Option<String>,
    pub ghosted_versions: Vec<String>,
    pub last_error: Option<String>,
    /// The deployment in progress, if any: which instance, which step.
    pub deploying: Option<DeployProgress>,
    pub instances: Vec<InstanceStatus>,
    pub deployex: DeployexStatus,
    /// True when some actor did not answer in time.
    pub stale: bool,
    /// How long completed deployments took, since deployex started.
    #[serde(default)]
    pub deploy_durations: DeployDurations,
}

/// Deployments that completed (reached a ready instance) since deployex
/// started: from the moment the DeployManager sent the job to the moment the
/// instance was ready on the new version. In memory only: a restart of
/// deployex starts from zero, like any Prometheus counter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployDurations {
    /// Completed deployments.
    pub count: u64,
    /// Their total duration.
    pub total_ms: u64,
    /// The most recent one.
    pub last: Option<DeployDuration>,
}

/// One completed deployment and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployDuration {
    pub instance: u32,
    pub version: String,
    pub deployment: DeploymentKind,
    pub duration_ms: u64,
    /// When the instance became ready, UTC RFC 3339.
    pub finished_at: String,
}

/// The deployment in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployProgress {
    pub instance: u32,
    pub version: String,
    pub deploy_ref: String,
    pub step: String,
}

/// deployex itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployexStatus {
    pub version: String,
    /// deployex connects to instances over mutual TLS.
    #[serde(default)]
    pub tls: bool,
    pub uptime_s: u64,
    pub os_pid: u32,
}

/// What an operator action answers when it cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("{0}")]
    Invalid(String),
    #[error("no such instance: {0}")]
    NoSuchInstance(u32),
    #[error("busy: {0}")]
    Busy(String),
    #[error("the engine did not answer in time")]
    Timeout,
    /// The part of the engine that would do it is not running right now
    /// (an actor being restarted).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// It failed on deployex's side (a state file that cannot be written):
    /// not the caller's fault, nothing changed.
    #[error("failed: {0}")]
    Failed(String),
}

/// Which log stream of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// A command that opens a remote IEx shell into an instance
/// (`current/bin/{app} remote` with the node name and cookie).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellCommand {
    pub program: std::path::PathBuf,
    pub args: Vec<String>,
    /// The complete environment (the command is started with a cleared one).
    pub env: Vec<(String, String)>,
    pub cwd: std::path::PathBuf,
    /// `DEPLOYEX_APP_USER`: the shell runs as this user, like the instance.
    pub user: Option<crate::app_user::AppUser>,
}

/// One message handled (or being handled) by an actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// The message's variant name.
    pub kind: String,
    /// One line, no secrets.
    pub summary: String,
    /// When handling started, UTC RFC 3339 with milliseconds.
    pub at: String,
    /// Handling time in microseconds; `None` while still being handled.
    pub handling_us: Option<u64>,
}

/// One node of the live actor tree, for the debug view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorInfo {
    pub name: String,
    pub id: String,
    pub status: String,
    pub children: Vec<ActorInfo>,
    pub restarts: u64,
    /// The message being handled right now, if any (a stuck handler shows here).
    pub in_flight: Option<MessageRecord>,
    /// Most recent first.
    pub messages: Vec<MessageRecord>,
}
