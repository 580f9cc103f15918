//! AppSupervisor: one application's subtree, below the RootSupervisor.
//!
//! ```text
//! AppSupervisor {app}             one_for_one, at most MAX_RESTARTS in RESTART_PERIOD (this app's)
//! ├── ReleaseFetcher {app}        polls the store, downloads + verifies tarballs
//! ├── InstanceMonitor {app} × N   one per replica: OS process, backoff, pre-commands
//! └── DeployManager {app}         rolling deploys, rollback, ghosting, mode, history
//! ```
//!
//! Invariants:
//! - A failed child is restarted under the same name (`deploy_manager:{app}`,
//!   …); nothing outside this app's subtree is touched, so a panic in one
//!   app's actors never restarts another app's actors or instances.
//! - The restart intensity is counted per app. Exceeding it fails this
//!   supervisor; the RootSupervisor then restarts the whole app subtree
//!   (counted in the root's own intensity, which escalates as before).
//!   Restarting monitors never touches their OS processes (adoption by pid
//!   file, see `instance_monitor`).
//! - Shutdown order within the app: DeployManager and ReleaseFetcher first
//!   (no deployment step starts while instances stop), then every monitor
//!   stops its instance (when asked to), then the rest.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::config::EngineConfig;
use crate::deploy_manager::{self, DeployManager};
use crate::instance_monitor::{self, InstanceMonitor, InstanceMsg};
use crate::recorder::{Describe, Recorder};
use crate::release_fetcher::{self, ReleaseFetcher};
use crate::root::{MAX_RESTARTS, RESTART_PERIOD};

/// The registered name of `app`'s supervisor: `app_supervisor:{app}`.
pub fn name(app: &str) -> String {
    format!("app_supervisor:{app}")
}

/// A child of an app's subtree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppChild {
    Fetcher,
    Monitor(u32),
    DeployManager,
}

impl AppChild {
    /// The registered name of this child of `app`'s subtree.
    pub fn name(self, app: &str) -> String {
        match self {
            AppChild::Fetcher => release_fetcher::name(app),
            AppChild::Monitor(i) => instance_monitor::name(app, i),
            AppChild::DeployManager => deploy_manager::name(app),
        }
    }
}

pub enum AppMsg {
    /// Stop this app's deployment actors, then its instances (when
    /// `stop_apps`), then every child; answers when done.
    Shutdown {
        stop_apps: bool,
        reply: RpcReplyPort<()>,
    },
    /// Respawn a child that failed (retried if its name is still taken).
    Respawn { child: AppChild, attempt: u32 },
    /// The shared OtpNodeWatcher was restarted: every monitor re-registers
    /// its node at once.
    WatcherRestarted,
    /// Live reconfiguration: run `replicas` instances (new monitors for
    /// the new instance numbers, or the highest ones stopped with their
    /// OS processes); the DeployManager restarts with the new count.
    /// Answers when done.
    Scale {
        replicas: u32,
        reply: RpcReplyPort<()>,
    },
}

impl Describe for AppMsg {
    fn kind(&self) -> &'static str {
        match self {
            AppMsg::Shutdown { .. } => "Shutdown",
            AppMsg::Respawn { .. } => "Respawn",
            AppMsg::WatcherRestarted => "WatcherRestarted",
            AppMsg::Scale { .. } => "Scale",
        }
    }
    fn summary(&self) -> String {
        match self {
            AppMsg::Shutdown { stop_apps, .. } => format!("stop_apps={stop_apps}"),
            AppMsg::Respawn { child, attempt } => format!("{child:?} attempt {attempt}"),
            AppMsg::WatcherRestarted => String::new(),
            AppMsg::Scale { replicas, .. } => format!("replicas={replicas}"),
        }
    }
}

pub struct AppSupervisor;

pub struct AppState {
    cfg: Arc<EngineConfig>,
    restarts: VecDeque<Instant>,
    shutting_down: bool,
    /// Children stopped on purpose (scaling): their exit is not a failure.
    stopped_on_purpose: std::collections::HashSet<String>,
    recorder: Recorder,
}

async fn spawn_child(
    child: AppChild,
    cfg: &Arc<EngineConfig>,
    supervisor: &ActorRef<AppMsg>,
) -> Result<(), ractor::SpawnErr> {
    let cell = supervisor.get_cell();
    let name = Some(child.name(&cfg.app));
    match child {
        AppChild::Fetcher => {
            Actor::spawn_linked(name, ReleaseFetcher, cfg.clone(), cell).await?;
        }
        AppChild::Monitor(instance) => {
            let args = instance_monitor::Args {
                cfg: cfg.clone(),
                instance,
            };
            Actor::spawn_linked(name, InstanceMonitor, args, cell).await?;
        }
        AppChild::DeployManager => {
            Actor::spawn_linked(name, DeployManager, cfg.clone(), cell).await?;
        }
    }
    Ok(())
}

fn child_of(name: &str, app: &str, replicas: u32) -> Option<AppChild> {
    [AppChild::Fetcher, AppChild::DeployManager]
        .into_iter()
        .chain((1..=replicas).map(AppChild::Monitor))
        .find(|c| c.name(app) == name)
}

fn monitors(cfg: &EngineConfig) -> impl Iterator<Item = ActorRef<InstanceMsg>> + '_ {
    (1..=cfg.replicas).filter_map(|i| {
        ractor::registry::where_is(instance_monitor::name(&cfg.app, i)).map(Into::into)
    })
}

/// Scale to `replicas` (see [`AppMsg::Scale`]). The new count is the
/// state's before any monitor stops, so that a stopped monitor is not
/// taken for a failed child and restarted.
async fn scale(myself: &ActorRef<AppMsg>, state: &mut AppState, replicas: u32) {
    let old = state.cfg.replicas;
    let app = state.cfg.app.clone();
    let mut cfg = (*state.cfg).clone();
    cfg.replicas = replicas;
    let cfg = Arc::new(cfg);
    state.cfg = cfg.clone();
    crate::reconfigure::set_live_replicas(&app, replicas);
    // The DeployManager walks 1..=replicas: it restarts with the new count
    // (its state is on disk, as after a panic).
    let dm = deploy_manager::name(&app);
    if let Some(cell) = ractor::registry::where_is(dm.clone()) {
        state.stopped_on_purpose.insert(dm.clone());
        let _ = cell
            .stop_and_wait(Some("scale".into()), Some(Duration::from_secs(5)))
            .await;
    }
    if replicas < old {
        // Highest instance numbers first, each with its OS process.
        for i in (replicas + 1..=old).rev() {
            let name = instance_monitor::name(&app, i);
            let Some(cell) = ractor::registry::where_is(name) else {
                continue;
            };
            let m: ActorRef<InstanceMsg> = cell.clone().into();
            let timeout = cfg.stop_grace + Duration::from_secs(3);
            if let Err(e) = ractor::call_t!(
                m,
                |reply| InstanceMsg::Shutdown { reply },
                timeout.as_millis() as u64
            ) {
                tracing::warn!(%app, instance = i, "stopping the instance: {e}");
            }
            let _ = cell
                .stop_and_wait(Some("scaled down".into()), Some(Duration::from_secs(5)))
                .await;
            tracing::info!(%app, instance = i, "instance removed (scaled down)");
        }
    } else {
        for i in old + 1..=replicas {
            match spawn_child(AppChild::Monitor(i), &cfg, myself).await {
                Ok(()) => tracing::info!(%app, instance = i, "instance added (scaled up)"),
                Err(e) => {
                    tracing::error!(%app, instance = i, "cannot add the instance: {e}");
                    let _ = myself.cast(AppMsg::Respawn {
                        child: AppChild::Monitor(i),
                        attempt: 1,
                    });
                }
            }
        }
    }
    if let Err(e) = spawn_child(AppChild::DeployManager, &cfg, myself).await {
        tracing::error!(%app, "cannot restart the deploy manager: {e}");
        let _ = myself.cast(AppMsg::Respawn {
            child: AppChild::DeployManager,
            attempt: 1,
        });
    }
}

impl Actor for AppSupervisor {
    type Msg = AppMsg;
    type State = AppState;
    type Arguments = Arc<EngineConfig>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        cfg: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let children = [AppChild::Fetcher]
            .into_iter()
            .chain((1..=cfg.replicas).map(AppChild::Monitor))
            .chain([AppChild::DeployManager]);
        for child in children {
            spawn_child(child, &cfg, &myself).await?;
        }
        crate::reconfigure::set_live_replicas(&cfg.app, cfg.replicas);
        Ok(AppState {
            recorder: Recorder::for_actor(&name(&cfg.app)),
            cfg,
            restarts: VecDeque::new(),
            shutting_down: false,
            stopped_on_purpose: Default::default(),
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // ractor kills children without their post_stop when a supervisor
        // stops: stop them properly first.
        myself
            .stop_children_and_wait(Some("app stopping".into()), Some(Duration::from_secs(5)))
            .await;
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
            AppMsg::Shutdown { stop_apps, reply } => {
                state.shutting_down = true;
                // No deployment step may start while instances stop.
                let app = &state.cfg.app;
                for name in [deploy_manager::name(app), release_fetcher::name(app)] {
                    if let Some(cell) = ractor::registry::where_is(name) {
                        let _ = cell
                            .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
                            .await;
                    }
                }
                if stop_apps {
                    let timeout = state.cfg.stop_grace + Duration::from_secs(3);
                    let waits = monitors(&state.cfg).map(|m| async move {
                        let _ = ractor::call_t!(
                            m,
                            |reply| InstanceMsg::Shutdown { reply },
                            timeout.as_millis() as u64
                        );
                    });
                    futures::future::join_all(waits).await;
                }
                myself
                    .stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
                    .await;
                let _ = reply.send(());
                myself.stop(Some("shutdown".into()));
            }
            AppMsg::Respawn { child, attempt } => {
                if state.shutting_down {
                    return Ok(());
                }
                let app = &state.cfg.app;
                if let Err(e) = spawn_child(child, &state.cfg, &myself).await {
                    if attempt >= 20 {
                        return Err(format!("cannot restart {}: {e}", child.name(app)).into());
                    }
                    myself.send_after(Duration::from_millis(50), move || AppMsg::Respawn {
                        child,
                        attempt: attempt + 1,
                    });
                } else {
                    tracing::info!(actor = %child.name(app), "actor restarted");
                }
            }
            AppMsg::Scale { replicas, reply } => {
                if !state.shutting_down {
                    scale(&myself, state, replicas).await;
                }
                let _ = reply.send(());
            }
            AppMsg::WatcherRestarted => {
                // A new watcher knows no node: every monitor with a running
                // process tells it at once (not at its next 30 s reminder),
                // so links come back within seconds.
                for m in monitors(&state.cfg) {
                    let _ = m.send_message(InstanceMsg::WatcherRestarted);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, why)) = crate::root::child_exit(&event) else {
            return Ok(());
        };
        if state.shutting_down {
            return Ok(());
        }
        let name = cell.get_name().unwrap_or_default();
        if state.stopped_on_purpose.remove(&name) {
            return Ok(());
        }
        let app = state.cfg.app.clone();
        let Some(child) = child_of(&name, &app, state.cfg.replicas) else {
            return Ok(());
        };
        tracing::error!(actor = %name, %app, %why, "child actor exited; restarting");
        let now = Instant::now();
        state.restarts.push_back(now);
        while state
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_PERIOD)
        {
            state.restarts.pop_front();
        }
        if state.restarts.len() > MAX_RESTARTS {
            tracing::error!(
                %app,
                restarts = state.restarts.len(),
                period_s = RESTART_PERIOD.as_secs(),
                "restart intensity exceeded: escalating (the app's subtree restarts)"
            );
            state.shutting_down = true;
            return Err(format!("{app}: restart intensity exceeded").into());
        }
        Recorder::for_actor(&name).note_restart();
        let _ = myself.cast(AppMsg::Respawn { child, attempt: 0 });
        Ok(())
    }
}
