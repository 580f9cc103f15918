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

mod messages;
mod persist;
mod rollback;
mod rollout;

pub use messages::DeployMsg;
use rollout::{ENSURE_TIMEOUT_MS, Target, retry_delay};

/// The registered name of `app`'s DeployManager: `deploy_manager:{app}`.
pub fn name(app: &str) -> String {
    format!("deploy_manager:{app}")
}

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
        let recorder = Recorder::for_actor(&name(&cfg.app));
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
            recorder,
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
                            &state.cfg.app,
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
                let fleet_ghost = crate::fleet::unghosted(&state.cfg.app, &version);
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
            DeployMsg::InjectPanic => panic!("injected panic in {}", name(&state.cfg.app)),
        }
        Ok(())
    }
}

fn kind_name(kind: DeploymentKind) -> &'static str {
    match kind {
        DeploymentKind::FullDeployment => "full deployment",
        DeploymentKind::HotUpgrade => "hot upgrade",
        DeploymentKind::Rollback => "rollback",
    }
}

fn monitor(app: &str, instance: u32) -> Option<ActorRef<InstanceMsg>> {
    ractor::registry::where_is(instance_monitor::name(app, instance)).map(Into::into)
}
