//! RootSupervisor: the top of deployex's actor tree, OTP style.
//!
//! ```text
//! RootSupervisor                  one_for_one, at most MAX_RESTARTS in RESTART_PERIOD
//! ├── EventLog                    events: bounded file, API, webhook delivery
//! ├── OtpNodeWatcher              distribution links to every instance, RPCs, liveness
//! ├── ReleaseFetcher              polls the store, downloads + verifies tarballs
//! ├── InstanceMonitor × N         one per replica: OS process, backoff, pre-commands
//! └── DeployManager               rolling deploys, rollback, ghosting, mode, history
//! ```
//!
//! A child that panics or returns an error is restarted under the same name
//! (handles find actors by name, so they never hold a stale reference).
//! More than `MAX_RESTARTS` restarts within `RESTART_PERIOD` escalate: the
//! root stops, its children with it, and the binary exits non-zero so that
//! systemd restarts deployex (which then adopts the running apps).
//!
//! Restarting an InstanceMonitor never touches its OS process: the new
//! monitor adopts it through the instance's pid file (see
//! `instance_monitor`).
//!
//! Shutdown: the DeployManager and the ReleaseFetcher stop first, so that
//! no deployment step starts while the instances are being stopped; then
//! every monitor stops its instance (a booting one is killed at once) and
//! refuses to start anything after; then the rest of the tree.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::config::EngineConfig;
use crate::deploy_manager::{self, DeployManager};
use crate::instance_monitor::{self, InstanceMonitor, InstanceMsg};
use crate::otp_node_watcher::{self, OtpNodeWatcher};
use crate::recorder::{Describe, Recorder};
use crate::release_fetcher::{self, ReleaseFetcher};

pub const NAME: &str = "root_supervisor";
/// Restart intensity, like OTP's `intensity`/`period`.
pub const MAX_RESTARTS: usize = 10;
pub const RESTART_PERIOD: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Child {
    Events,
    Watcher,
    Fetcher,
    Monitor(u32),
    DeployManager,
}

impl Child {
    /// The registered name of this child of `app`'s tree.
    pub fn name(self, app: &str) -> String {
        match self {
            Child::Events => crate::events::NAME.to_string(),
            Child::Watcher => otp_node_watcher::NAME.to_string(),
            Child::Fetcher => release_fetcher::name(app),
            Child::Monitor(i) => instance_monitor::name(app, i),
            Child::DeployManager => deploy_manager::name(app),
        }
    }
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
}

impl Describe for RootMsg {
    fn kind(&self) -> &'static str {
        match self {
            RootMsg::Shutdown { .. } => "Shutdown",
            RootMsg::Respawn { .. } => "Respawn",
        }
    }
    fn summary(&self) -> String {
        match self {
            RootMsg::Shutdown { stop_apps, .. } => format!("stop_apps={stop_apps}"),
            RootMsg::Respawn { child, attempt } => format!("{child:?} attempt {attempt}"),
        }
    }
}

pub struct RootSupervisor;

pub struct RootState {
    cfg: Arc<EngineConfig>,
    restarts: VecDeque<Instant>,
    shutting_down: bool,
    recorder: Recorder,
}

async fn spawn_child(
    child: Child,
    cfg: &Arc<EngineConfig>,
    supervisor: &ActorRef<RootMsg>,
) -> Result<(), ractor::SpawnErr> {
    let cell = supervisor.get_cell();
    let name = Some(child.name(&cfg.app));
    match child {
        Child::Events => {
            Actor::spawn_linked(name, crate::events::EventLog, cfg.clone(), cell).await?;
        }
        Child::Watcher => {
            Actor::spawn_linked(name, OtpNodeWatcher, cfg.clone(), cell).await?;
        }
        Child::Fetcher => {
            Actor::spawn_linked(name, ReleaseFetcher, cfg.clone(), cell).await?;
        }
        Child::Monitor(instance) => {
            let args = instance_monitor::Args {
                cfg: cfg.clone(),
                instance,
            };
            Actor::spawn_linked(name, InstanceMonitor, args, cell).await?;
        }
        Child::DeployManager => {
            Actor::spawn_linked(name, DeployManager, cfg.clone(), cell).await?;
        }
    }
    Ok(())
}

fn child_of(name: &str, app: &str, replicas: u32) -> Option<Child> {
    let all = [
        Child::Events,
        Child::Watcher,
        Child::Fetcher,
        Child::DeployManager,
    ]
    .into_iter()
    .chain((1..=replicas).map(Child::Monitor));
    all.into_iter().find(|c| c.name(app) == name)
}

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = Arc<EngineConfig>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        cfg: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let children = [Child::Events, Child::Watcher, Child::Fetcher]
            .into_iter()
            .chain((1..=cfg.replicas).map(Child::Monitor))
            .chain([Child::DeployManager]);
        for child in children {
            spawn_child(child, &cfg, &myself).await?;
        }
        Ok(RootState {
            cfg,
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
                    let waits = (1..=state.cfg.replicas).filter_map(|i| {
                        let m: ActorRef<InstanceMsg> =
                            ractor::registry::where_is(instance_monitor::name(app, i))?.into();
                        let timeout = state.cfg.stop_grace + Duration::from_secs(3);
                        Some(async move {
                            let _ = ractor::call_t!(
                                m,
                                |reply| InstanceMsg::Shutdown { reply },
                                timeout.as_millis() as u64
                            );
                        })
                    });
                    futures::future::join_all(waits).await;
                }
                myself
                    .stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
                    .await;
                let _ = reply.send(());
                myself.stop(Some("shutdown".into()));
            }
            RootMsg::Respawn { child, attempt } => {
                if state.shutting_down {
                    return Ok(());
                }
                if let Err(e) = spawn_child(child, &state.cfg, &myself).await {
                    if attempt >= 20 {
                        return Err(
                            format!("cannot restart {}: {e}", child.name(&state.cfg.app)).into(),
                        );
                    }
                    myself.send_after(Duration::from_millis(50), move || RootMsg::Respawn {
                        child,
                        attempt: attempt + 1,
                    });
                } else {
                    tracing::info!(actor = %child.name(&state.cfg.app), "actor restarted");
                    if child == Child::Watcher {
                        // A new watcher knows no node: every monitor with a
                        // running process tells it at once (not at its next
                        // 30 s reminder), so links come back within seconds.
                        for i in 1..=state.cfg.replicas {
                            if let Some(m) = ractor::registry::where_is(instance_monitor::name(
                                &state.cfg.app,
                                i,
                            )) {
                                let _ = m.send_message(InstanceMsg::WatcherRestarted);
                            }
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
        let (cell, why) = match &event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                format!("terminated: {}", reason.as_deref().unwrap_or("no reason")),
            ),
            _ => return Ok(()),
        };
        if state.shutting_down {
            return Ok(());
        }
        let name = cell.get_name().unwrap_or_default();
        let Some(child) = child_of(&name, &state.cfg.app, state.cfg.replicas) else {
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
