//! DeployManager: decides which version each instance should run and walks
//! the instances 1 → N, one at a time.
//!
//! The desired version is the pinned one in manual mode, else the verified
//! release the ReleaseFetcher holds (unless that version is ghosted). An
//! instance is asked to deploy only when every instance before it runs the
//! desired version and is ready, so a bad release never gets past the first
//! instance. It owns the persistent state (history, ghosted versions, mode),
//! written atomically before any change is acknowledged.
//!
//! Rollback: an instance that is not ready within `rollback_timeout` of its
//! deployment, or crashes more than `rollback_crashes` times in that window,
//! gets its version ghosted and the previous version from its history
//! deployed again (recorded as `rollback`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::config::EngineConfig;
use crate::events::{self, EventKind, NewEvent};
use crate::instance_monitor::{self, DeployJob, InstanceMsg};
use crate::model::{
    ActionError, DeployDuration, DeployDurations, DeployProgress, DeploymentKind, HistoryEntry,
    InstanceState, Mode,
};
use crate::recorder::{Describe, Recorder};
use crate::release_fetcher::{self, FetcherMsg};
use crate::storage::Storage;

pub const NAME: &str = "deploy_manager";

/// The DeployManager's part of the status.
#[derive(Debug, Clone, Default)]
pub struct DmStatus {
    pub mode: Mode,
    pub desired_version: Option<String>,
    pub ghosted: Vec<String>,
    pub last_error: Option<String>,
    pub deploying: Option<DeployProgress>,
    pub deploy_durations: DeployDurations,
}

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
        result: Result<std::path::PathBuf, String>,
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
                Err(e) => format!("{version} error: {e}"),
            },
            _ => String::new(),
        }
    }
}

pub struct DeployManager;

struct Recent {
    version: String,
    since: Instant,
    crashes: u32,
}

struct InProgress {
    instance: u32,
    version: String,
    deploy_ref: String,
    kind: DeploymentKind,
    started: Instant,
    crashes: u32,
}

pub struct DmState {
    cfg: Arc<EngineConfig>,
    storage: Arc<Storage>,
    history: Vec<HistoryEntry>,
    ghosted: Vec<String>,
    mode: Mode,
    desired: Option<String>,
    in_progress: Option<InProgress>,
    /// An operator's restart under way: (instance, since). No deployment
    /// step starts until that instance is ready again (or the rollback
    /// timeout passes), so a restart and a deployment never interleave.
    restarting: Option<(u32, Instant)>,
    /// Instances deployed recently: crashes inside the rollback window
    /// count against their version, even after the rollout moved on.
    recent: HashMap<u32, Recent>,
    /// Failed preparations: (instance, version) → (attempts, not before).
    failures: HashMap<(u32, String), (u32, Instant)>,
    last_error: Option<String>,
    /// Completed deployments since start (for `/metrics`).
    durations: DeployDurations,
    /// Versions whose tarball was asked from the fetcher and not answered.
    ensuring: std::collections::HashSet<String>,
    /// The pinned version's verified tarball, once the fetcher gave it.
    pinned_tarball: Option<(String, std::path::PathBuf)>,
    /// A rollback waiting for its tarball: no other step starts meanwhile.
    pending_rollback: Option<PendingRollback>,
    /// This actor, for the tasks it starts.
    me: ActorRef<DeployMsg>,
    recorder: Recorder,
}

/// A rollback decided, waiting for the previous version's tarball.
struct PendingRollback {
    instance: u32,
    bad: String,
    previous: String,
}

impl Actor for DeployManager {
    type Msg = DeployMsg;
    type State = DmState;
    type Arguments = Arc<EngineConfig>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        cfg: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let dir = cfg.storage_dir();
        let (storage, loaded, errors) =
            tokio::task::spawn_blocking(move || Storage::open(&dir)).await?;
        let mut last_error = None;
        for error in errors {
            let error = crate::release_fetcher::error_chain(&error);
            tracing::error!(%error, "state file could not be read; starting from what could be recovered");
            last_error = Some(error);
        }
        myself.send_interval(cfg.schedule_interval, || DeployMsg::Tick);
        let _ = myself.cast(DeployMsg::Evaluate);
        Ok(DmState {
            cfg,
            storage: Arc::new(storage),
            history: loaded.history,
            ghosted: loaded.ghosted,
            mode: loaded.mode,
            desired: None,
            in_progress: None,
            restarting: None,
            recent: HashMap::new(),
            failures: HashMap::new(),
            last_error,
            durations: DeployDurations::default(),
            ensuring: std::collections::HashSet::new(),
            pinned_tarball: None,
            pending_rollback: None,
            me: myself.clone(),
            recorder: Recorder::for_actor(NAME),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _rec = state.recorder.begin(&msg);
        match msg {
            DeployMsg::Tick => {
                state.check_rollback().await;
                state.evaluate().await;
            }
            DeployMsg::Evaluate => state.evaluate().await,
            DeployMsg::InstanceReady { instance, version } => {
                if state.restarting.is_some_and(|(i, _)| i == instance) {
                    state.restarting = None;
                    tracing::info!(instance, "restarted instance ready");
                    state.evaluate().await;
                }
                let done = state.in_progress.as_ref().is_some_and(|p| {
                    p.instance == instance && version.as_deref() == Some(p.version.as_str())
                });
                if done {
                    crate::testhook::point("instance_ready");
                    if let Some(p) = state.in_progress.take() {
                        let took_ms = p.started.elapsed().as_millis() as u64;
                        tracing::info!(instance, version = %p.version, deploy_ref = %p.deploy_ref, took_ms, "instance ready; moving on");
                        events::emit(
                            NewEvent::new(
                                EventKind::DeployFinished,
                                format!("{} ready in {took_ms} ms", kind_name(p.kind)),
                            )
                            .instance(instance)
                            .version(p.version.clone()),
                        );
                        state.durations.count += 1;
                        state.durations.total_ms += took_ms;
                        state.durations.last = Some(DeployDuration {
                            instance,
                            version: p.version.clone(),
                            deployment: p.kind,
                            duration_ms: took_ms,
                            finished_at: crate::time::utc_now_millis(),
                        });
                        state.failures.remove(&(instance, p.version));
                    }
                    state.evaluate().await;
                }
            }
            DeployMsg::InstanceCrashed {
                instance,
                consecutive,
            } => {
                // A crash ends an operator's restart: the crash rules take over.
                if state.restarting.is_some_and(|(i, _)| i == instance) {
                    state.restarting = None;
                }
                if let Some(p) = state.in_progress.as_mut()
                    && p.instance == instance
                {
                    p.crashes = consecutive;
                }
                state.on_crash(instance, consecutive).await;
                state.check_rollback().await;
            }
            DeployMsg::Deployed {
                instance,
                version,
                hash,
                deploy_ref,
                kind,
            } => {
                let entry = HistoryEntry {
                    version,
                    hash,
                    instance,
                    deployment: kind,
                    deploy_ref,
                    inserted_at: crate::time::utc_now_millis(),
                };
                if kind != DeploymentKind::Rollback {
                    state.recent.insert(
                        instance,
                        Recent {
                            version: entry.version.clone(),
                            since: Instant::now(),
                            crashes: 0,
                        },
                    );
                } else {
                    state.recent.remove(&instance);
                }
                state.history.insert(0, entry);
                state.persist_history().await;
                crate::testhook::point("history_written");
            }
            DeployMsg::DeployFailed {
                instance,
                deploy_ref,
                error,
            } => {
                if let Some(p) = state
                    .in_progress
                    .take_if(|p| p.instance == instance && p.deploy_ref == deploy_ref)
                {
                    let key = (instance, p.version.clone());
                    let attempts = state.failures.get(&key).map_or(0, |f| f.0) + 1;
                    let delay = retry_delay(state.cfg.schedule_interval, attempts);
                    tracing::warn!(instance, version = %p.version, %error, attempts, retry_in_ms = delay.as_millis() as u64, "deployment failed; will retry");
                    state
                        .failures
                        .insert(key, (attempts, Instant::now() + delay));
                    state.last_error = Some(format!("instance {instance}: {error}"));
                }
            }
            DeployMsg::CandidateFailed {
                instance,
                deploy_ref,
                error,
            } => {
                state
                    .on_candidate_failed(instance, &deploy_ref, &error)
                    .await;
                state.evaluate().await;
            }
            DeployMsg::NoCandidate { instance, bad } => {
                if state.in_progress.is_none() && state.pending_rollback.is_none() {
                    state.rollback(instance, &bad).await;
                }
            }
            DeployMsg::Status { reply } => {
                let _ = reply.send(DmStatus {
                    mode: state.mode.clone(),
                    desired_version: state.desired.clone(),
                    ghosted: state.ghosted.clone(),
                    last_error: state.last_error.clone(),
                    deploying: state.in_progress.as_ref().map(|p| DeployProgress {
                        instance: p.instance,
                        version: p.version.clone(),
                        deploy_ref: p.deploy_ref.clone(),
                        step: match p.kind {
                            DeploymentKind::Rollback => "rollback".to_string(),
                            DeploymentKind::HotUpgrade => "hot_upgrade".to_string(),
                            DeploymentKind::FullDeployment => "full_deployment".to_string(),
                        },
                    }),
                    deploy_durations: state.durations.clone(),
                });
            }
            DeployMsg::Versions { instance, reply } => {
                let rows = state
                    .history
                    .iter()
                    .filter(|e| instance.is_none_or(|i| e.instance == i))
                    .cloned()
                    .collect();
                let _ = reply.send(rows);
            }
            DeployMsg::SetMode { mode, reply } => {
                let result = state.set_mode(mode).await;
                let ok = result.is_ok();
                let _ = reply.send(result);
                if ok {
                    state.evaluate().await;
                }
            }
            DeployMsg::Unghost { version, reply } => {
                // Fleet: un-ghosting here clears the fleet's ghost too.
                let fleet_ghost = crate::fleet::unghosted(&version);
                if !state.ghosted.contains(&version) {
                    let _ = reply.send(if fleet_ghost {
                        Ok(())
                    } else {
                        Err(ActionError::Invalid(format!(
                            "version {version} is not ghosted"
                        )))
                    });
                } else {
                    let before = state.ghosted.clone();
                    state.ghosted.retain(|v| v != &version);
                    let result = state.persist_ghosted().await;
                    if result.is_err() {
                        // Nothing changed: the file still lists it.
                        state.ghosted = before;
                    } else {
                        tracing::info!(%version, "version un-ghosted");
                    }
                    let _ = reply.send(result);
                }
            }
            DeployMsg::Restart { instance, reply } => {
                let result = state.restart(instance).await;
                let _ = reply.send(result);
            }
            DeployMsg::Ensured { version, result } => state.on_ensured(version, result).await,
            #[cfg(feature = "testhooks")]
            DeployMsg::InjectPanic => panic!("injected panic in {NAME}"),
        }
        Ok(())
    }
}

/// How long a task waits for the fetcher's `Ensure` (a download).
const ENSURE_TIMEOUT_MS: u64 = 600_000;

fn retry_delay(base: Duration, attempts: u32) -> Duration {
    base.saturating_mul(1u32 << attempts.min(10))
        .min(Duration::from_secs(300))
}

/// What to deploy.
struct Target {
    version: String,
    hash: String,
    tarball: std::path::PathBuf,
    pre_commands: Vec<String>,
}

impl DmState {
    async fn persist_history(&mut self) {
        let storage = self.storage.clone();
        let history = self.history.clone();
        match tokio::task::spawn_blocking(move || storage.save_history(&history)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let error = crate::release_fetcher::error_chain(&e);
                tracing::error!(%error, "cannot save the history");
                self.last_error = Some(error);
            }
            Err(e) => tracing::error!(error = %e, "history save task failed"),
        }
    }

    /// Writes the ghosted list; a failure is recorded in `last_error` and
    /// answered as [`ActionError::Failed`] (a 5xx: not the caller's fault).
    async fn persist_ghosted(&mut self) -> Result<(), ActionError> {
        let storage = self.storage.clone();
        let ghosted = self.ghosted.clone();
        let result = tokio::task::spawn_blocking(move || storage.save_ghosted(&ghosted))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| crate::release_fetcher::error_chain(&e)));
        self.state_written(result)
    }

    fn state_written(&mut self, result: Result<(), String>) -> Result<(), ActionError> {
        result.map_err(|error| {
            tracing::error!(%error, "cannot save the state");
            self.last_error = Some(format!("cannot save the state: {error}"));
            ActionError::Failed(error)
        })
    }

    async fn set_mode(&mut self, mode: Mode) -> Result<(), ActionError> {
        if let Mode::Manual { version } = &mode {
            if !self.history.iter().any(|e| &e.version == version) {
                return Err(ActionError::Invalid(format!(
                    "version {version} is not in the history; pin one of the deployed versions"
                )));
            }
            if self.ghosted.contains(version) {
                self.ghosted.retain(|v| v != version);
                self.persist_ghosted().await?;
            }
        }
        let storage = self.storage.clone();
        let m = mode.clone();
        let written = tokio::task::spawn_blocking(move || storage.save_mode(&m))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| crate::release_fetcher::error_chain(&e)));
        self.state_written(written)?;
        tracing::info!(?mode, "deployment mode changed");
        self.mode = mode;
        Ok(())
    }

    async fn target(&mut self) -> Option<Target> {
        let fetcher: ActorRef<FetcherMsg> =
            ractor::registry::where_is(release_fetcher::NAME)?.into();
        match self.mode.clone() {
            Mode::Manual { version } => {
                self.desired = Some(version.clone());
                let tarball = match &self.pinned_tarball {
                    Some((v, tarball)) if v == &version && tarball.is_file() => tarball.clone(),
                    _ => {
                        // Asked from a task; `Ensured` evaluates again.
                        self.ensure(&version);
                        return None;
                    }
                };
                let hash = self
                    .history
                    .iter()
                    .find(|e| e.version == version)
                    .map(|e| e.hash.clone())
                    .unwrap_or_default();
                Some(Target {
                    version,
                    hash,
                    tarball,
                    pre_commands: Vec::new(),
                })
            }
            Mode::Automatic => {
                let status =
                    ractor::call_t!(fetcher, |reply| FetcherMsg::Status { reply }, 2000).ok()?;
                let ready = status.ready?;
                self.desired = Some(ready.release.version.clone());
                if self.ghosted.contains(&ready.release.version) {
                    return None;
                }
                Some(Target {
                    version: ready.release.version,
                    hash: ready.release.hash,
                    tarball: ready.tarball,
                    pre_commands: ready.release.pre_commands,
                })
            }
        }
    }

    /// A deployed instance that crash-loops inside its rollback window gets
    /// its version ghosted, even when the rollout has moved past it (a
    /// release that dies a few seconds after it looked ready).
    async fn on_crash(&mut self, instance: u32, consecutive: u32) {
        let window = self.cfg.rollback_timeout;
        let limit = self.cfg.rollback_crashes;
        let Some(r) = self.recent.get_mut(&instance) else {
            return;
        };
        if r.since.elapsed() > window {
            self.recent.remove(&instance);
            return;
        }
        r.crashes = consecutive;
        if r.crashes <= limit {
            return;
        }
        let version = r.version.clone();
        let crashes = r.crashes;
        self.recent.remove(&instance);
        tracing::error!(instance, %version, crashes, "crash loop after deployment: ghosting the version");
        events::emit(
            NewEvent::new(
                EventKind::CrashLoop,
                format!("crashed {crashes} times after its deployment"),
            )
            .instance(instance)
            .version(version.clone()),
        );
        self.ghost(&version, &format!("instance {instance} crash-looped"))
            .await;
        self.last_error = Some(format!(
            "version {version} rolled back: instance {instance} crashed {crashes} times after its deployment"
        ));
        if let Some(p) = &self.in_progress
            && p.instance == instance
            && p.kind != DeploymentKind::Rollback
        {
            self.in_progress = None;
        }
        if self.in_progress.is_none() {
            // The failing instance itself: rolled back, or stopped when it
            // has no previous version.
            self.rollback(instance, &version).await;
        }
        self.evaluate().await;
    }

    async fn ghost(&mut self, version: &str, why: &str) {
        if !self.ghosted.iter().any(|v| v == version) {
            events::emit(
                NewEvent::new(
                    EventKind::Ghosted,
                    format!("ghosted ({why}): it will not be deployed again automatically"),
                )
                .version(version),
            );
            self.ghosted.push(version.to_string());
            if let Err(e) = self.persist_ghosted().await {
                tracing::error!(error = %e, "cannot save the ghosted list");
            }
        }
        // Fleet: ghosted on every host.
        crate::fleet::ghosted(version, why);
    }

    /// Roll back, one at a time, every instance that runs a ghosted
    /// version. Returns true when a rollback was started (or is needed but
    /// cannot start now).
    async fn rollback_ghosted(&mut self) -> bool {
        if self.ghosted.is_empty() {
            return false;
        }
        for instance in 1..=self.cfg.replicas {
            let Some(monitor) = monitor(instance) else {
                return true;
            };
            let Ok(status) = ractor::call_t!(monitor, |reply| InstanceMsg::Status { reply }, 1000)
            else {
                return true;
            };
            let Some(version) = status.version.clone() else {
                continue;
            };
            if !self.ghosted.contains(&version) {
                continue;
            }
            if let Mode::Manual { version: pinned } = &self.mode
                && pinned == &version
            {
                continue;
            }
            if self.previous_good(instance, &version).is_none() {
                // Nothing to roll back to: a running instance is left
                // alone (never stop a healthy instance for lack of an older
                // version); the failing one was stopped when it failed.
                continue;
            }
            self.rollback(instance, &version).await;
            return true;
        }
        false
    }

    /// The instance an operator's restart is waiting for, if any; the lock
    /// lapses after the rollback timeout (an instance that never comes back
    /// must not block deployments forever).
    fn restart_lock(&mut self) -> Option<u32> {
        let (instance, since) = self.restarting?;
        if since.elapsed() < self.cfg.rollback_timeout {
            return Some(instance);
        }
        tracing::warn!(
            instance,
            "restarted instance not ready in time; deployments resume"
        );
        self.restarting = None;
        None
    }

    /// An operator's restart, under the deploy lock.
    async fn restart(&mut self, instance: u32) -> Result<(), ActionError> {
        if let Some(p) = &self.pending_rollback {
            return Err(ActionError::Busy(format!(
                "a rollback of instance {} to {} is starting: try again when it ends",
                p.instance, p.previous
            )));
        }
        if let Some(p) = &self.in_progress {
            return Err(ActionError::Busy(format!(
                "a deployment is in progress ({:?} of {} on instance {}, started {} s ago): try again when it ends",
                p.kind,
                p.version,
                p.instance,
                p.started.elapsed().as_secs()
            )));
        }
        if let Some(other) = self.restart_lock()
            && other != instance
        {
            return Err(ActionError::Busy(format!(
                "instance {other} is restarting: try again when it is ready"
            )));
        }
        let monitor = monitor(instance).ok_or_else(|| {
            ActionError::Unavailable(format!("instance {instance} is not supervised right now"))
        })?;
        match ractor::call_t!(monitor, |reply| InstanceMsg::Restart { reply }, 2000) {
            Ok(Ok(())) => {
                self.restarting = Some((instance, Instant::now()));
                Ok(())
            }
            Ok(Err(busy)) => Err(ActionError::Busy(busy)),
            Err(e) => {
                tracing::warn!(instance, error = %e, "instance monitor did not answer a restart");
                Err(ActionError::Timeout)
            }
        }
    }

    /// Start the next deployment step, if any.
    async fn evaluate(&mut self) {
        if self.in_progress.is_some() || self.pending_rollback.is_some() {
            return;
        }
        if self.restart_lock().is_some() {
            return;
        }
        if self.rollback_ghosted().await {
            return;
        }
        let Some(target) = self.target().await else {
            return;
        };
        for instance in 1..=self.cfg.replicas {
            let Some(monitor) = monitor(instance) else {
                return;
            };
            let Ok(status) = ractor::call_t!(monitor, |reply| InstanceMsg::Status { reply }, 1000)
            else {
                return;
            };
            if status.version.as_deref() == Some(target.version.as_str()) {
                if status.state == InstanceState::Running {
                    continue;
                }
                // On the desired version but not ready (yet): wait for it.
                return;
            }
            if let Some((_, not_before)) = self.failures.get(&(instance, target.version.clone()))
                && Instant::now() < *not_before
            {
                return;
            }
            // Fleet: no deployment step without a slot for this version.
            if !crate::fleet::may_deploy(&target.version) {
                return;
            }
            let deploy_ref = crate::storage::new_deploy_ref();
            tracing::info!(instance, from = status.version.as_deref().unwrap_or("<none>"), to = %target.version, %deploy_ref, "update needed: full deployment");
            self.start_deploy(
                &monitor,
                instance,
                &target,
                deploy_ref,
                DeploymentKind::FullDeployment,
            );
            return;
        }
        // Fleet: every instance runs the target and is ready.
        crate::fleet::rolled_out(&target.version);
    }

    fn start_deploy(
        &mut self,
        monitor: &ActorRef<InstanceMsg>,
        instance: u32,
        target: &Target,
        deploy_ref: String,
        kind: DeploymentKind,
    ) {
        let job = DeployJob {
            version: target.version.clone(),
            hash: target.hash.clone(),
            deploy_ref: deploy_ref.clone(),
            tarball: target.tarball.clone(),
            pre_commands: target.pre_commands.clone(),
            kind,
        };
        if kind != DeploymentKind::Rollback {
            events::emit(
                NewEvent::new(
                    EventKind::DeployStarted,
                    format!("deploying ({deploy_ref})"),
                )
                .instance(instance)
                .version(target.version.clone()),
            );
        }
        if monitor.cast(InstanceMsg::Deploy { job }).is_ok() {
            self.in_progress = Some(InProgress {
                instance,
                version: target.version.clone(),
                deploy_ref,
                kind,
                started: Instant::now(),
                crashes: 0,
            });
        }
    }

    /// Roll back the instance being deployed if it is clearly bad.
    /// Start-first: the new version of `instance` failed before it was
    /// ready; the old process never stopped, so nothing is rolled back.
    async fn on_candidate_failed(&mut self, instance: u32, deploy_ref: &str, error: &str) {
        let Some(p) = self
            .in_progress
            .take_if(|p| p.instance == instance && p.deploy_ref == deploy_ref)
        else {
            return;
        };
        if p.kind == DeploymentKind::Rollback {
            tracing::error!(instance, version = %p.version, %error, "rollback's new process failed; the running one is kept");
            self.last_error = Some(format!(
                "rollback of instance {instance} to {} failed: {error}",
                p.version
            ));
            return;
        }
        tracing::error!(instance, version = %p.version, %error, "start-first: new version failed before it was ready; ghosting it");
        self.ghost(
            &p.version,
            &format!("instance {instance}: new version failed before it was ready: {error}"),
        )
        .await;
        self.last_error = Some(format!(
            "version {} ghosted: on instance {instance} it failed before it was ready ({error}); the old version kept serving",
            p.version
        ));
    }

    /// Start-first: ask the monitor to kill the new process and keep the
    /// old one (the answer is a `CandidateFailed`, ignored by then).
    fn abort_candidate(&self, instance: u32, deploy_ref: &str, version: &str, why: &str) {
        if let Some(m) = monitor(instance) {
            let _ = m.cast(InstanceMsg::AbortCandidate {
                deploy_ref: deploy_ref.to_string(),
                version: version.to_string(),
                why: why.to_string(),
            });
        }
    }

    async fn check_rollback(&mut self) {
        let Some(p) = self.in_progress.as_ref() else {
            return;
        };
        let start_first = self.cfg.deploy_strategy == crate::config::DeployStrategy::StartFirst;
        if p.kind == DeploymentKind::Rollback {
            if p.started.elapsed() >= self.cfg.rollback_timeout {
                let instance = p.instance;
                if start_first {
                    self.abort_candidate(
                        instance,
                        &p.deploy_ref,
                        &p.version,
                        "rollback not ready in time",
                    );
                }
                tracing::error!(instance, version = %p.version, "rollback did not become ready in time; giving up");
                self.last_error = Some(format!(
                    "rollback of instance {instance} to {} did not become ready in time",
                    p.version
                ));
                self.in_progress = None;
            }
            return;
        }
        let timed_out = p.started.elapsed() >= self.cfg.rollback_timeout;
        let crash_loop = p.crashes > self.cfg.rollback_crashes;
        if !timed_out && !crash_loop {
            return;
        }
        let Some(p) = self.in_progress.take() else {
            return;
        };
        let why = if crash_loop {
            format!("{} crashes", p.crashes)
        } else {
            "not ready in time".to_string()
        };
        tracing::error!(instance = p.instance, version = %p.version, %why, "deployment unstable: rolling back and ghosting the version");
        if crash_loop {
            events::emit(
                NewEvent::new(EventKind::CrashLoop, format!("{why} during its deployment"))
                    .instance(p.instance)
                    .version(p.version.clone()),
            );
        }
        self.ghost(&p.version, &format!("instance {}: {why}", p.instance))
            .await;
        if start_first && !crash_loop {
            // The old process still serves: kill the new one, nothing to
            // roll back on this instance.
            self.abort_candidate(p.instance, &p.deploy_ref, &p.version, &why);
            self.last_error = Some(format!(
                "version {} ghosted: instance {} {why}; the old version kept serving",
                p.version, p.instance
            ));
            return;
        }
        self.last_error = Some(format!(
            "version {} rolled back on instance {} ({why})",
            p.version, p.instance
        ));
        self.rollback(p.instance, &p.version).await;
    }

    /// Deploy the previous good version of `instance` (kind `rollback`), or
    /// stop the instance when there is none.
    fn previous_good(&self, instance: u32, bad: &str) -> Option<String> {
        self.history
            .iter()
            .filter(|e| e.instance == instance)
            .map(|e| e.version.clone())
            .find(|v| v != bad && !self.ghosted.contains(v))
    }

    async fn rollback(&mut self, instance: u32, bad: &str) {
        let previous = self.previous_good(instance, bad);
        let Some(monitor) = monitor(instance) else {
            return;
        };
        let Some(previous) = previous else {
            tracing::error!(
                instance,
                "no previous version to roll back to; stopping the instance"
            );
            self.last_error = Some(format!(
                "version {bad} failed on instance {instance} and there is no previous version to roll back to"
            ));
            // Answered when it is stopped; nobody needs to wait for that.
            let (reply, _) = ractor::concurrency::oneshot();
            let _ = monitor.cast(InstanceMsg::Shutdown {
                reply: reply.into(),
            });
            return;
        };
        // The tarball comes from the fetcher through a task (`Ensured`);
        // no other step starts until this rollback has started.
        self.pending_rollback = Some(PendingRollback {
            instance,
            bad: bad.to_string(),
            previous: previous.clone(),
        });
        self.ensure(&previous);
    }

    /// Asks the fetcher for `version`'s tarball from a task; the answer
    /// comes back as `Ensured` (once per version in flight).
    fn ensure(&mut self, version: &str) {
        if !self.ensuring.insert(version.to_string()) {
            return;
        }
        let Some(fetcher) = ractor::registry::where_is(release_fetcher::NAME) else {
            self.ensuring.remove(version);
            return;
        };
        let fetcher: ActorRef<FetcherMsg> = fetcher.into();
        let v = version.to_string();
        let version = version.to_string();
        crate::task::spawn_for(
            self.me.clone(),
            "asking the fetcher for a release",
            async move {
                ractor::call_t!(
                    fetcher,
                    |reply| FetcherMsg::Ensure { version: v, reply },
                    ENSURE_TIMEOUT_MS
                )
                .map_err(|e| format!("the release fetcher did not answer: {e}"))?
            },
            move |result| DeployMsg::Ensured { version, result },
        );
    }

    async fn on_ensured(&mut self, version: String, result: Result<std::path::PathBuf, String>) {
        self.ensuring.remove(&version);
        if self
            .pending_rollback
            .as_ref()
            .is_some_and(|p| p.previous == version)
            && let Some(p) = self.pending_rollback.take()
        {
            match result.clone() {
                Ok(tarball) => self.start_rollback(p, tarball),
                Err(e) => {
                    self.last_error = Some(format!("rollback to {version}: {e}"));
                }
            }
        }
        if let Mode::Manual { version: pinned } = &self.mode
            && pinned == &version
        {
            match result {
                Ok(tarball) => self.pinned_tarball = Some((version, tarball)),
                Err(error) => {
                    self.last_error = Some(format!("pinned version {version}: {error}"));
                }
            }
        }
        self.evaluate().await;
    }

    fn start_rollback(&mut self, p: PendingRollback, tarball: std::path::PathBuf) {
        let PendingRollback {
            instance,
            bad,
            previous,
        } = p;
        let Some(monitor) = monitor(instance) else {
            return;
        };
        let hash = self
            .history
            .iter()
            .find(|e| e.version == previous)
            .map(|e| e.hash.clone())
            .unwrap_or_default();
        tracing::warn!(instance, from = %bad, to = %previous, "rolling back");
        events::emit(
            NewEvent::new(
                EventKind::Rollback,
                format!("rolling back from {bad} to {previous}"),
            )
            .instance(instance)
            .version(previous.clone()),
        );
        let target = Target {
            version: previous,
            hash,
            tarball,
            pre_commands: Vec::new(),
        };
        let deploy_ref = crate::storage::new_deploy_ref();
        self.start_deploy(
            &monitor,
            instance,
            &target,
            deploy_ref,
            DeploymentKind::Rollback,
        );
    }
}

fn kind_name(kind: DeploymentKind) -> &'static str {
    match kind {
        DeploymentKind::FullDeployment => "full deployment",
        DeploymentKind::HotUpgrade => "hot upgrade",
        DeploymentKind::Rollback => "rollback",
    }
}

fn monitor(instance: u32) -> Option<ActorRef<InstanceMsg>> {
    ractor::registry::where_is(instance_monitor::name(instance)).map(Into::into)
}
