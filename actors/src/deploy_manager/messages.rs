//! The DeployManager's messages.

use super::*;

pub enum DeployMsg {
    Tick,
    /// Re-evaluate now (a new release, an instance became ready...).
    Evaluate,
    InstanceReady {
        instance: u32,
        version: Option<String>,
    },
    InstanceCrashed {
        instance: u32,
        /// Crashes in a row without a stable period (see the backoff).
        consecutive: u32,
    },
    Deployed {
        instance: u32,
        version: String,
        hash: String,
        deploy_ref: String,
        kind: DeploymentKind,
    },
    DeployFailed {
        instance: u32,
        deploy_ref: String,
        error: String,
    },
    /// Start-first: the new version exited or was aborted before it was
    /// ready; the old process kept serving. The version is ghosted.
    CandidateFailed {
        instance: u32,
        deploy_ref: String,
        error: String,
    },
    /// Start-first: an `AbortCandidate` found no new process beside an old
    /// one (the instance was not running, so it deployed stop-first): roll
    /// it back like a stop-first deployment.
    NoCandidate {
        instance: u32,
        bad: String,
    },
    Status {
        reply: RpcReplyPort<DmStatus>,
    },
    Versions {
        instance: Option<u32>,
        reply: RpcReplyPort<Vec<HistoryEntry>>,
    },
    SetMode {
        mode: Mode,
        reply: RpcReplyPort<Result<(), ActionError>>,
    },
    Unghost {
        version: String,
        reply: RpcReplyPort<Result<(), ActionError>>,
    },
    /// An operator's restart of one instance. Goes through the deploy lock:
    /// refused while a deployment runs, and no deployment step starts until
    /// the restarted instance is ready again.
    Restart {
        instance: u32,
        reply: RpcReplyPort<Result<(), ActionError>>,
    },
    /// The fetcher answered an `Ensure` asked from a task: the tarball of
    /// a pinned version or of a rollback target (never awaited in a
    /// handler: a download can take long).
    Ensured {
        version: String,
        result: Result<std::path::PathBuf, crate::release_fetcher::FetchError>,
    },
    /// Fault injection for the supervision tests: the handler panics.
    #[cfg(feature = "testhooks")]
    InjectPanic,
}

impl Describe for DeployMsg {
    fn kind(&self) -> &'static str {
        match self {
            DeployMsg::Tick => "Tick",
            DeployMsg::Evaluate => "Evaluate",
            DeployMsg::InstanceReady { .. } => "InstanceReady",
            DeployMsg::InstanceCrashed { .. } => "InstanceCrashed",
            DeployMsg::Deployed { .. } => "Deployed",
            DeployMsg::DeployFailed { .. } => "DeployFailed",
            DeployMsg::CandidateFailed { .. } => "CandidateFailed",
            DeployMsg::NoCandidate { .. } => "NoCandidate",
            DeployMsg::Status { .. } => "Status",
            DeployMsg::Versions { .. } => "Versions",
            DeployMsg::SetMode { .. } => "SetMode",
            DeployMsg::Unghost { .. } => "Unghost",
            DeployMsg::Restart { .. } => "Restart",
            DeployMsg::Ensured { .. } => "Ensured",
            #[cfg(feature = "testhooks")]
            DeployMsg::InjectPanic => "InjectPanic",
        }
    }
    fn summary(&self) -> String {
        match self {
            DeployMsg::InstanceReady { instance, version } => {
                format!("instance {instance} {}", version.as_deref().unwrap_or("?"))
            }
            DeployMsg::InstanceCrashed {
                instance,
                consecutive,
            } => format!("instance {instance} consecutive={consecutive}"),
            DeployMsg::Deployed {
                instance,
                version,
                deploy_ref,
                kind,
                ..
            } => format!("instance {instance} {version} ref={deploy_ref} {kind:?}"),
            DeployMsg::DeployFailed {
                instance,
                deploy_ref,
                error,
            }
            | DeployMsg::CandidateFailed {
                instance,
                deploy_ref,
                error,
            } => format!("instance {instance} ref={deploy_ref}: {error}"),
            DeployMsg::SetMode { mode, .. } => format!("{mode:?}"),
            DeployMsg::Unghost { version, .. } => version.clone(),
            DeployMsg::Versions { instance, .. } => format!("{instance:?}"),
            DeployMsg::Restart { instance, .. } => format!("instance {instance}"),
            DeployMsg::Ensured { version, result } => match result {
                Ok(_) => format!("{version} ok"),
                Err(e) => format!("{version} error: {}", crate::error::error_chain(e)),
            },
            _ => String::new(),
        }
    }
}
