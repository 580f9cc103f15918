//! RootSupervisor: the top of deployex's actor tree, OTP style.
//!
//! ```text
//! RootSupervisor                      one_for_one, at most MAX_RESTARTS in RESTART_PERIOD
//! ├── EventLog                        events: bounded file, API, webhook delivery
//! ├── OtpNodeWatcher                  distribution links to every instance of every app, RPCs, liveness
//! └── AppSupervisor {app} × apps      one per application (see `app_supervisor`)
//!     ├── ReleaseFetcher {app}        polls the store, downloads + verifies tarballs
//!     ├── InstanceMonitor {app} × N   one per replica: OS process, backoff, pre-commands
//!     └── DeployManager {app}         rolling deploys, rollback, ghosting, mode, history
//! ```
//!
//! A child that panics or returns an error is restarted under the same name
//! (handles find actors by name, so they never hold a stale reference).
//! An app's actors are restarted by its own AppSupervisor, with its own
//! restart intensity; an AppSupervisor that exceeds it fails and is
//! restarted here with its whole subtree. More than `MAX_RESTARTS` restarts
//! of the root's own children within `RESTART_PERIOD` escalate: the root
//! stops, its children with it, and the binary exits non-zero so that
//! systemd restarts deployex (which then adopts the running apps).
//!
//! The EventLog and the OtpNodeWatcher are shared by every app (node names
//! `{app}-{i}` are distinct); they take the host-wide settings from the
//! first app's configuration.
//!
//! Restarting an InstanceMonitor never touches its OS process: the new
//! monitor adopts it through the instance's pid file (see
//! `instance_monitor`).
//!
//! Shutdown: every app shuts down at once, each in its order (its
//! DeployManager and ReleaseFetcher first, so that no deployment step starts
//! while the instances are being stopped; then every monitor stops its
//! instance, a booting one killed at once, and refuses to start anything
//! after); then the rest of the tree.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::app_supervisor::{self, AppMsg, AppSupervisor};
use crate::config::EngineConfig;
use crate::otp_node_watcher::{self, OtpNodeWatcher};
use crate::reconfigure::{self, Plan};
use crate::recorder::{Describe, Recorder};

pub const NAME: &str = "root_supervisor";

/// The child a supervision event says has exited, and how (`failed: …` or
/// `terminated: …`); `None` for the events that are not an exit. Shared by
/// the root and every AppSupervisor.
pub(crate) fn child_exit(event: &SupervisionEvent) -> Option<(&ractor::ActorCell, String)> {
    match event {
        SupervisionEvent::ActorFailed(cell, err) => Some((cell, format!("failed: {err}"))),
        SupervisionEvent::ActorTerminated(cell, _, reason) => Some((
            cell,
            format!("terminated: {}", reason.as_deref().unwrap_or("no reason")),
        )),
        _ => None,
    }
}

/// Restart intensity, like OTP's `intensity`/`period` (the root's, and each
/// AppSupervisor's own).
pub const MAX_RESTARTS: usize = 10;
pub const RESTART_PERIOD: Duration = Duration::from_secs(60);

/// The applications the tree runs, in configuration order (never empty:
/// `engine::start_apps` refuses an empty list). The first one's host-wide
/// settings (EPMD port, cookie, host name, TLS, event log) serve the shared
/// actors.
pub type Apps = Arc<Vec<Arc<EngineConfig>>>;

/// What the root starts with: its apps, and where it publishes its
/// current list (at start and after each reload) for the tasks outside
/// the tree that follow it (the metrics-history sampler, the fleets).
pub struct RootArgs {
    pub apps: Apps,
    pub current: tokio::sync::watch::Sender<Apps>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Child {
    Events,
    Watcher,
    /// The AppSupervisor of the app of this name (a name, not an index:
    /// a reload changes the list while a respawn may be pending).
    App(String),
}

impl Child {
    pub fn name(&self) -> String {
        match self {
            Child::Events => crate::events::NAME.to_string(),
            Child::Watcher => otp_node_watcher::NAME.to_string(),
            Child::App(app) => app_supervisor::name(app),
        }
    }
}

/// Every child of the root for `apps`, in spawn order.
fn children(apps: &[Arc<EngineConfig>]) -> impl Iterator<Item = Child> + '_ {
    [Child::Events, Child::Watcher]
        .into_iter()
        .chain(apps.iter().map(|c| Child::App(c.app.clone())))
}

pub enum RootMsg {
    /// Stop the instances (when `stop_apps`), then every child; answers
    /// when done.
    Shutdown {
        stop_apps: bool,
        reply: RpcReplyPort<()>,
    },
    /// Respawn a child that failed (retried if its name is still taken).
    Respawn { child: Child, attempt: u32 },
    /// Live reconfiguration (SIGHUP) to this app list (validated by the
    /// loader: non-empty, distinct names, disjoint ports): see
    /// `reconfigure`. Answers the plan applied.
    Reconfigure {
        apps: Vec<EngineConfig>,
        reply: RpcReplyPort<Plan>,
    },
}

impl Describe for RootMsg {
    fn kind(&self) -> &'static str {
        match self {
            RootMsg::Shutdown { .. } => "Shutdown",
            RootMsg::Respawn { .. } => "Respawn",
            RootMsg::Reconfigure { .. } => "Reconfigure",
        }
    }
    fn summary(&self) -> String {
        match self {
            RootMsg::Shutdown { stop_apps, .. } => format!("stop_apps={stop_apps}"),
            RootMsg::Respawn { child, attempt } => format!("{child:?} attempt {attempt}"),
            RootMsg::Reconfigure { apps, .. } => format!("{} apps", apps.len()),
        }
    }
}

pub struct RootSupervisor;

pub struct RootState {
    apps: Apps,
    /// `apps`, published (see [`RootArgs`]).
    current: tokio::sync::watch::Sender<Apps>,
    restarts: VecDeque<Instant>,
    shutting_down: bool,
    recorder: Recorder,
}

async fn spawn_child(
    child: Child,
    apps: &Apps,
    supervisor: &ActorRef<RootMsg>,
) -> Result<(), ractor::SpawnErr> {
    let cell = supervisor.get_cell();
    let name = Some(child.name());
    let host = apps
        .first()
        .cloned()
        .ok_or_else(|| ractor::SpawnErr::StartupFailed("no application configured".into()))?;
    match &child {
        Child::Events => {
            Actor::spawn_linked(name, crate::events::EventLog, host, cell).await?;
        }
        Child::Watcher => {
            Actor::spawn_linked(name, OtpNodeWatcher, host, cell).await?;
        }
        Child::App(app) => {
            let cfg = apps
                .iter()
                .find(|c| &c.app == app)
                .cloned()
                .ok_or_else(|| ractor::SpawnErr::StartupFailed(format!("no app {app:?}").into()))?;
            Actor::spawn_linked(name, AppSupervisor, cfg, cell).await?;
        }
    }
    Ok(())
}

fn child_of(name: &str, apps: &[Arc<EngineConfig>]) -> Option<Child> {
    children(apps).find(|c| c.name() == name)
}

fn app_supervisors(apps: &[Arc<EngineConfig>]) -> Vec<ActorRef<AppMsg>> {
    apps.iter()
        .filter_map(|c| ractor::registry::where_is(app_supervisor::name(&c.app)).map(Into::into))
        .collect()
}

/// Applies a new app list (see `reconfigure`): removed apps first (their
/// ports are free before an added app may take them), then scaled ones,
/// then added ones. The state's list changes before an AppSupervisor
/// stops, so that its exit is not taken for a failure.
async fn reconfigure(
    myself: &ActorRef<RootMsg>,
    state: &mut RootState,
    new: Vec<EngineConfig>,
) -> Plan {
    let plan = reconfigure::plan(&state.apps, &new);
    if new.is_empty() {
        return Plan::default();
    }
    let old = state.apps.clone();
    // Running settings kept for apps that stay (only the replica count
    // changes); the new settings for added apps.
    let apps: Vec<Arc<EngineConfig>> = new
        .into_iter()
        .map(|n| match old.iter().find(|o| o.app == n.app) {
            Some(o) if o.replicas == n.replicas => o.clone(),
            Some(o) => {
                let mut c = (**o).clone();
                c.replicas = n.replicas;
                Arc::new(c)
            }
            None => Arc::new(n),
        })
        .collect();
    state.apps = Arc::new(apps);
    // The sampler follows: it stops sampling a removed app (and drops its
    // rings) and samples an added one from its next period.
    state.current.send_replace(state.apps.clone());
    for app in &plan.removed {
        let Some(cell) = ractor::registry::where_is(app_supervisor::name(app)) else {
            continue;
        };
        let sup: ActorRef<AppMsg> = cell.into();
        let grace = old
            .iter()
            .find(|c| &c.app == app)
            .map(|c| c.stop_grace)
            .unwrap_or_default();
        let timeout = grace + Duration::from_secs(9);
        match ractor::call_t!(
            sup,
            |reply| AppMsg::Shutdown {
                stop_apps: true,
                reply
            },
            timeout.as_millis() as u64
        ) {
            Ok(()) => tracing::info!(%app, "app removed: instances stopped"),
            Err(e) => tracing::error!(%app, "removing the app: {e}"),
        }
    }
    for (app, from, to) in &plan.scaled {
        let Some(cell) = ractor::registry::where_is(app_supervisor::name(app)) else {
            continue;
        };
        let sup: ActorRef<AppMsg> = cell.into();
        let grace = state
            .apps
            .iter()
            .find(|c| &c.app == app)
            .map(|c| c.stop_grace)
            .unwrap_or_default();
        let timeout = grace * from.saturating_sub(*to).max(1) + Duration::from_secs(15);
        match ractor::call_t!(
            sup,
            |reply| AppMsg::Scale {
                replicas: *to,
                reply
            },
            timeout.as_millis() as u64
        ) {
            Ok(()) => tracing::info!(%app, from, to, "app scaled"),
            Err(e) => tracing::error!(%app, from, to, "scaling the app: {e}"),
        }
    }
    for app in &plan.added {
        match spawn_child(Child::App(app.clone()), &state.apps, myself).await {
            Ok(()) => tracing::info!(%app, "app added"),
            Err(e) => {
                tracing::error!(%app, "cannot start the added app: {e}");
                let _ = myself.cast(RootMsg::Respawn {
                    child: Child::App(app.clone()),
                    attempt: 1,
                });
            }
        }
    }
    for app in &plan.needs_restart {
        tracing::warn!(%app, "settings other than monitored_replicas changed: not applied, they need a restart of deployex (the running settings stay)");
    }
    plan
}

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        RootArgs { apps, current }: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        for child in children(&apps) {
            spawn_child(child, &apps, &myself).await?;
        }
        current.send_replace(apps.clone());
        Ok(RootState {
            apps,
            current,
            restarts: VecDeque::new(),
            shutting_down: false,
            recorder: Recorder::for_actor(NAME),
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
            .stop_children_and_wait(Some("root stopping".into()), Some(Duration::from_secs(5)))
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
            RootMsg::Shutdown { stop_apps, reply } => {
                state.shutting_down = true;
                // Every app in its own order (app_supervisor), all at once.
                let timeout = state
                    .apps
                    .iter()
                    .map(|c| c.stop_grace)
                    .max()
                    .unwrap_or_default()
                    + Duration::from_secs(9);
                let waits = app_supervisors(&state.apps)
                    .into_iter()
                    .map(|a| async move {
                        let _ = ractor::call_t!(
                            a,
                            |reply| AppMsg::Shutdown { stop_apps, reply },
                            timeout.as_millis() as u64
                        );
                    });
                futures::future::join_all(waits).await;
                myself
                    .stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
                    .await;
                let _ = reply.send(());
                myself.stop(Some("shutdown".into()));
            }
            RootMsg::Reconfigure { apps, reply } => {
                if state.shutting_down {
                    let _ = reply.send(Plan::default());
                    return Ok(());
                }
                let plan = reconfigure(&myself, state, apps).await;
                let _ = reply.send(plan);
            }
            RootMsg::Respawn { child, attempt } => {
                if state.shutting_down {
                    return Ok(());
                }
                if let Child::App(app) = &child
                    && !state.apps.iter().any(|c| &c.app == app)
                {
                    // Removed by a reload meanwhile.
                    return Ok(());
                }
                if let Err(e) = spawn_child(child.clone(), &state.apps, &myself).await {
                    if attempt >= 20 {
                        return Err(format!("cannot restart {}: {e}", child.name()).into());
                    }
                    myself.send_after(Duration::from_millis(50), move || RootMsg::Respawn {
                        child,
                        attempt: attempt + 1,
                    });
                } else {
                    tracing::info!(actor = %child.name(), "actor restarted");
                    if child == Child::Watcher {
                        // A new watcher knows no node: every app's monitors
                        // tell it at once.
                        for a in app_supervisors(&state.apps) {
                            let _ = a.send_message(AppMsg::WatcherRestarted);
                        }
                    }
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
        let Some(child) = child_of(&name, &state.apps) else {
            return Ok(());
        };
        tracing::error!(actor = %name, %why, "child actor exited; restarting");
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
                restarts = state.restarts.len(),
                period_s = RESTART_PERIOD.as_secs(),
                "restart intensity exceeded: escalating (deployex stops)"
            );
            state.shutting_down = true;
            myself.stop(Some("restart intensity exceeded".into()));
            return Ok(());
        }
        Recorder::for_actor(&name).note_restart();
        let _ = myself.cast(RootMsg::Respawn { child, attempt: 0 });
        Ok(())
    }
}
