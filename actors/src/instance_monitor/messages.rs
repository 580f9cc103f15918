//! The InstanceMonitor's messages and the data they carry.

use super::*;
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

/// Why a deployment step failed. The kind decides the state it leaves
/// (a failed pre-command shows as `pre_commands_failed`); the text is for
/// people (status, events, logs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// A pre-command exited non-zero, timed out, or could not run.
    #[error("pre-command {n} ({command}) {what}")]
    PreCommand {
        n: usize,
        command: String,
        what: String,
    },
    /// The release was refused before any start (see `release_kind`).
    #[error("{0}")]
    Refused(String),
    /// A file-system step: unpacking, moving or removing folders.
    #[error("{0}")]
    Files(String),
    /// The hot upgrade failed on the node.
    #[error("{0}")]
    Upgrade(String),
    /// The task carrying the step failed (a panic, a cancelled blocking
    /// task).
    #[error("{0}")]
    Task(String),
}

impl From<crate::task::TaskPanic> for StepError {
    fn from(panic: crate::task::TaskPanic) -> Self {
        StepError::Task(panic.to_string())
    }
}

/// Why a process is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Stop, then start again (operator, liveness, watchdog).
    Restart(RestartReason),
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
        /// The node's boot phase, when it answered.
        boot: Option<BootPhase>,
        http: bool,
    },
    /// A report about `node` from the OtpNodeWatcher (liveness, BEAM
    /// limits); ignored unless `node` is the current process's (during a
    /// start-first switch the old node still reports).
    Node {
        node: String,
        report: NodeReport,
    },
    /// Time to sample the process group's memory (watchdog).
    WatchdogTick,
    RestartAfterBackoff {
        generation: u64,
    },
    /// Operator restart (a forced restart).
    Restart {
        reply: RpcReplyPort<Result<(), ActionError>>,
    },
    Deploy {
        job: DeployJob,
    },
    /// `new/` unpacked and pre-commands run (or failed).
    Prepared {
        deploy_ref: String,
        result: Result<Prepared, StepError>,
    },
    /// A hot upgrade finished (or failed: then a full deployment follows).
    HotUpgraded {
        deploy_ref: String,
        result: Result<String, StepError>,
    },
    /// A stop requested earlier has completed.
    StopDone {
        generation: u64,
        reason: StopReason,
    },
    /// Folders rotated for a deployment (or failed).
    Rotated {
        deploy_ref: String,
        result: Result<(), StepError>,
    },
    Status {
        reply: RpcReplyPort<InstanceStatus>,
    },
    /// Stop the process (deployex shutting down); answers when it is gone.
    Shutdown {
        reply: RpcReplyPort<()>,
    },
    /// The OtpNodeWatcher was restarted: tell it about this node now.
    WatcherRestarted,
    /// Start-first: the new version is in the other slot's `current/` (or
    /// could not be put there).
    CandidatePlaced {
        deploy_ref: String,
        result: Result<(), StepError>,
    },
    /// Start-first: the new version was not ready in time (the
    /// DeployManager's rollback timeout): kill it, keep the old process.
    /// Start-first: the old process of the switch to process `generation`
    /// is gone (the rollout may move on).
    OldStopped {
        generation: u64,
    },
    AbortCandidate {
        deploy_ref: String,
        version: String,
        why: String,
    },
    /// Fault injection for the supervision tests: the handler panics.
    #[cfg(feature = "testhooks")]
    InjectPanic,
}

impl Describe for InstanceMsg {
    fn kind(&self) -> &'static str {
        match self {
            InstanceMsg::Boot => "Boot",
            InstanceMsg::Exited { .. } => "Exited",
            InstanceMsg::HealthTick { .. } => "HealthTick",
            InstanceMsg::Probed { .. } => "Probed",
            InstanceMsg::Node { .. } => "Node",
            InstanceMsg::WatchdogTick => "WatchdogTick",
            InstanceMsg::RestartAfterBackoff { .. } => "RestartAfterBackoff",
            InstanceMsg::Restart { .. } => "Restart",
            InstanceMsg::Deploy { .. } => "Deploy",
            InstanceMsg::Prepared { .. } => "Prepared",
            InstanceMsg::HotUpgraded { .. } => "HotUpgraded",
            InstanceMsg::StopDone { .. } => "StopDone",
            InstanceMsg::Rotated { .. } => "Rotated",
            InstanceMsg::Status { .. } => "Status",
            InstanceMsg::Shutdown { .. } => "Shutdown",
            InstanceMsg::WatcherRestarted => "WatcherRestarted",
            InstanceMsg::CandidatePlaced { .. } => "CandidatePlaced",
            InstanceMsg::AbortCandidate { .. } => "AbortCandidate",
            InstanceMsg::OldStopped { .. } => "OldStopped",
            #[cfg(feature = "testhooks")]
            InstanceMsg::InjectPanic => "InjectPanic",
        }
    }
    fn summary(&self) -> String {
        match self {
            InstanceMsg::Exited { generation, info } => format!("gen={generation} {info:?}"),
            InstanceMsg::Probed {
                generation,
                otp,
                boot,
                http,
            } => format!("gen={generation} otp={otp} boot={boot:?} http={http}"),
            InstanceMsg::Node { node, report } => format!("{node} {report:?}"),
            InstanceMsg::RestartAfterBackoff { generation }
            | InstanceMsg::OldStopped { generation } => format!("gen={generation}"),
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
            InstanceMsg::Rotated { deploy_ref, result }
            | InstanceMsg::CandidatePlaced { deploy_ref, result } => {
                format!("ref={deploy_ref} {}", short_result(result))
            }
            InstanceMsg::AbortCandidate {
                deploy_ref,
                version,
                why,
            } => format!("ref={deploy_ref} {version} {why}"),
            _ => String::new(),
        }
    }
}

fn short_result(r: &Result<(), StepError>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("error: {e}"),
    }
}
