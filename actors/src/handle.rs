//! `EngineHandle`: the real `Engine`. Every call becomes actor queries with
//! timeouts; an actor that does not answer in time shows as `stale` instead
//! of hanging the caller.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorRef};

use crate::config::EngineConfig;
use crate::deploy_manager::{self, DeployMsg};
use crate::engine::Engine;
use crate::instance_monitor::{self, InstanceMsg};
use crate::model::{
    ActionError, ActorInfo, DeployexStatus, HistoryEntry, InstanceStatus, LogStream, Mode,
    ShellCommand, Status,
};
use crate::otp_node_watcher::{self, WatcherMsg};
use crate::recorder::Recorder;
use crate::release_fetcher::{self, FetcherMsg};
use crate::root::{self, RootMsg, RootSupervisor};

/// How long a status query waits for one actor.
const QUERY_MS: u64 = 1000;

#[derive(Clone)]
pub struct EngineHandle {
    cfg: Arc<EngineConfig>,
    root: ActorRef<RootMsg>,
    started: Instant,
}

/// A running engine: a handle per app and the root's completion.
pub struct Running {
    /// The first configured app's handle (the single-app engine's only one).
    pub handle: EngineHandle,
    /// One handle per app, in configuration order (`apps[0]` is `handle`).
    pub apps: Vec<EngineHandle>,
    pub join: tokio::task::JoinHandle<()>,
}

/// Why the engine did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no application configured")]
    NoApps,
    #[error("application {0:?} configured twice")]
    DuplicateApp(String),
    #[error("cannot start the actor tree")]
    Spawn(#[source] ractor::SpawnErr),
}

/// Start the actor tree for one app.
pub async fn start(cfg: EngineConfig) -> Result<Running, StartError> {
    start_apps(vec![cfg]).await
}

/// Start the actor tree for every app (configuration order; the first
/// app's host-wide settings serve the shared actors, the metrics
/// history's sampling period and fleet mode; the history samples every
/// app).
pub async fn start_apps(apps: Vec<EngineConfig>) -> Result<Running, StartError> {
    let apps: Vec<Arc<EngineConfig>> = apps.into_iter().map(Arc::new).collect();
    let Some(cfg) = apps.first().cloned() else {
        return Err(StartError::NoApps);
    };
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = apps.iter().find(|c| !seen.insert(c.app.as_str())) {
        return Err(StartError::DuplicateApp(dup.app.clone()));
    }
    let list: root::Apps = Arc::new(apps.clone());
    // The root publishes its current app list here (start, reloads).
    let (current, following) = tokio::sync::watch::channel(list.clone());
    let (root, join) = Actor::spawn(
        Some(root::NAME.to_string()),
        RootSupervisor,
        root::RootArgs {
            apps: list,
            current,
        },
    )
    .await
    .map_err(StartError::Spawn)?;
    // Metrics history (history.rs): the host and process-group sampler
    // runs as long as the actor tree, over every app the tree runs now
    // (it follows reloads); the first app's period.
    let period = crate::history::period_of(&cfg);
    crate::history::global().set_period(period);
    let started = Instant::now();
    // Fleet mode: one fleet per app, following the list like the sampler.
    let fleets = cfg
        .fleet
        .clone()
        .map(|fleet| crate::fleet::spawn_all(following.clone(), fleet, root.clone(), started));
    let sampler = crate::history::spawn_sampler(following, period);
    let join = tokio::spawn(async move {
        let _ = join.await;
        sampler.abort();
        if let Some(f) = fleets {
            f.abort();
        }
    });
    let handles: Vec<EngineHandle> = apps
        .iter()
        .map(|cfg| EngineHandle {
            cfg: cfg.clone(),
            root: root.clone(),
            started,
        })
        .collect();
    let handle = handles[0].clone();
    Ok(Running {
        handle,
        apps: handles,
        join,
    })
}

fn actor<M: ractor::Message>(name: &str) -> Option<ActorRef<M>> {
    ractor::registry::where_is(name).map(Into::into)
}

impl EngineHandle {
    pub(crate) fn new(cfg: Arc<EngineConfig>, root: ActorRef<RootMsg>, started: Instant) -> Self {
        Self { cfg, root, started }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// A handle on the same tree for `cfg`'s app (one a reload added).
    pub fn for_app(&self, cfg: EngineConfig) -> EngineHandle {
        EngineHandle {
            cfg: Arc::new(cfg),
            root: self.root.clone(),
            started: self.started,
        }
    }

    /// The replica count this app runs now (a reload may have scaled it).
    pub fn replicas(&self) -> u32 {
        crate::reconfigure::live_replicas(&self.cfg.app).unwrap_or(self.cfg.replicas)
    }

    /// Live reconfiguration (SIGHUP): apply a new, validated app list to
    /// the running tree (see `reconfigure`); returns what was applied, or
    /// `None` when the tree did not answer in time.
    pub async fn reconfigure(&self, apps: Vec<EngineConfig>) -> Option<crate::reconfigure::Plan> {
        // Removals, then scale-downs, stop instances one after another.
        let timeout = apps.iter().map(|c| c.stop_grace).max().unwrap_or_default() * 4
            + Duration::from_secs(60);
        ractor::call_t!(
            self.root,
            |reply| RootMsg::Reconfigure { apps, reply },
            timeout.as_millis() as u64
        )
        .ok()
    }

    /// Stop the instances (when `stop_apps`) and the actor tree.
    pub async fn shutdown(&self, stop_apps: bool) {
        let timeout = self.cfg.stop_grace + Duration::from_secs(4);
        let _ = ractor::call_t!(
            self.root,
            |reply| RootMsg::Shutdown { stop_apps, reply },
            timeout.as_millis() as u64
        );
        self.root.stop(Some("shutdown".into()));
    }

    async fn instance_status(&self, instance: u32) -> InstanceStatus {
        let answer = match actor::<InstanceMsg>(&instance_monitor::name(&self.cfg.app, instance)) {
            Some(m) => ractor::call_t!(m, |reply| InstanceMsg::Status { reply }, QUERY_MS).ok(),
            None => None,
        };
        answer.unwrap_or_else(|| {
            InstanceStatus::stale(
                instance,
                self.cfg.port(instance),
                self.cfg.node_name(instance),
            )
        })
    }

    /// The status of every actor in the tree, rooted at the RootSupervisor.
    fn actor_info(cell: &ActorCell) -> ActorInfo {
        let name = cell.get_name().unwrap_or_else(|| "(unnamed)".to_string());
        let recorder = Recorder::get(&name);
        let mut children: Vec<ActorInfo> =
            cell.get_children().iter().map(Self::actor_info).collect();
        children.sort_by(|a, b| a.name.cmp(&b.name));
        ActorInfo {
            id: cell.get_id().to_string(),
            status: format!("{:?}", cell.get_status()),
            children,
            restarts: recorder.as_ref().map_or(0, |r| r.restarts()),
            in_flight: recorder.as_ref().and_then(|r| r.in_flight()),
            messages: recorder.map(|r| r.messages()).unwrap_or_default(),
            name,
        }
    }
}

impl Engine for EngineHandle {
    fn fleet(&self) -> BoxFuture<'_, Option<serde_json::Value>> {
        Box::pin(crate::fleet::view(&self.cfg.app))
    }

    fn instance_history(
        &self,
        instance: u32,
        since: Option<u64>,
    ) -> BoxFuture<'_, Option<crate::history::Series>> {
        Box::pin(async move {
            if instance == 0 || instance > self.replicas() {
                return None;
            }
            // This app's rings only (another app has its own instance 1).
            let mut series =
                crate::history::global().instance_series(&self.cfg.app, instance, since);
            // Deployment markers from the deployment history, within the
            // time the rings keep.
            let from = since.unwrap_or_else(|| {
                crate::history::unix_ms_now()
                    .saturating_sub(crate::history::KEEP.as_millis() as u64)
            });
            let mut deploys: Vec<(u64, String)> = self
                .versions(Some(instance))
                .await
                .into_iter()
                .filter_map(|e| Some((crate::history::rfc3339_ms(&e.inserted_at)?, e.version)))
                .filter(|(t, _)| *t > from)
                .collect();
            deploys.sort();
            series.deploys = deploys;
            Some(series)
        })
    }

    fn host_history(&self, since: Option<u64>) -> BoxFuture<'_, crate::history::Series> {
        Box::pin(async move { crate::history::global().host_series(since) })
    }

    /// The host and this app's instances only (the web renders
    /// `/metrics` per app).
    fn history_latest(&self) -> crate::history::Latest {
        crate::history::global().latest(&self.cfg.app)
    }

    fn observe(
        &self,
        instance: u32,
        request: crate::observer::ObserveRequest,
    ) -> BoxFuture<'_, Result<crate::observer::Observed, crate::observer::ObserverError>> {
        Box::pin(async move {
            if instance == 0 || instance > self.replicas() {
                return Err(crate::observer::ObserverError::NoSuchInstance(instance));
            }
            // The node moves between slots with start-first deployments.
            let node = self.instance_status(instance).await.node;
            crate::observer::observe(&node, &request).await
        })
    }

    fn events(&self, limit: usize) -> BoxFuture<'_, Vec<crate::events::Event>> {
        Box::pin(async move {
            let Some(log) = actor::<crate::events::EventMsg>(crate::events::NAME) else {
                return Vec::new();
            };
            ractor::call_t!(
                log,
                |reply| crate::events::EventMsg::Recent { limit, reply },
                QUERY_MS
            )
            .unwrap_or_default()
        })
    }

    fn status(&self) -> BoxFuture<'_, Status> {
        Box::pin(async move {
            let dm = async {
                let m = actor::<DeployMsg>(&deploy_manager::name(&self.cfg.app))?;
                ractor::call_t!(m, |reply| DeployMsg::Status { reply }, QUERY_MS).ok()
            };
            let fetcher = async {
                let m = actor::<FetcherMsg>(&release_fetcher::name(&self.cfg.app))?;
                ractor::call_t!(m, |reply| FetcherMsg::Status { reply }, QUERY_MS).ok()
            };
            let nodes = async {
                let m = actor::<WatcherMsg>(otp_node_watcher::NAME)?;
                ractor::call_t!(m, |reply| WatcherMsg::Snapshot { reply }, QUERY_MS).ok()
            };
            let instances =
                futures::future::join_all((1..=self.replicas()).map(|i| self.instance_status(i)));
            let (dm, fetcher, nodes, mut instances) = futures::join!(dm, fetcher, nodes, instances);
            if let Some(nodes) = &nodes {
                for inst in instances.iter_mut() {
                    let node = nodes.get(&inst.node);
                    inst.otp_connected = inst.os_pid.is_some() && node.is_some_and(|n| n.connected);
                    inst.tls = inst.otp_connected && node.is_some_and(|n| n.tls);
                    // Only the current process's node: never a sample
                    // left from before a crash.
                    inst.beam = node
                        .and_then(|n| n.beam.clone())
                        .filter(|_| inst.otp_connected);
                    if inst.os_pid.is_some() && !inst.otp_connected && inst.last_error.is_none() {
                        inst.last_error = node.and_then(|n| n.last_error.clone());
                    }
                }
            }
            let stale = dm.is_none()
                || fetcher.is_none()
                || nodes.is_none()
                || instances.iter().any(|i| i.stale);
            let dm = dm.unwrap_or_default();
            let (mode, manual_version) = match &dm.mode {
                Mode::Automatic => ("automatic".to_string(), None),
                Mode::Manual { version } => ("manual".to_string(), Some(version.clone())),
            };
            let last_error = fetcher
                .as_ref()
                .and_then(|f| f.last_error.clone())
                .or(dm.last_error.clone());
            Status {
                app: self.cfg.app.clone(),
                mode,
                manual_version,
                desired_version: dm.desired_version,
                ghosted_versions: dm.ghosted,
                last_error,
                deploying: dm.deploying,
                instances,
                deployex: DeployexStatus {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    tls: self.cfg.tls_cert_path.is_some(),
                    uptime_s: self.started.elapsed().as_secs(),
                    os_pid: std::process::id(),
                },
                stale,
                deploy_durations: dm.deploy_durations,
            }
        })
    }

    fn versions(&self, instance: Option<u32>) -> BoxFuture<'_, Vec<HistoryEntry>> {
        Box::pin(async move {
            let Some(m) = actor::<DeployMsg>(&deploy_manager::name(&self.cfg.app)) else {
                return Vec::new();
            };
            ractor::call_t!(m, |reply| DeployMsg::Versions { instance, reply }, QUERY_MS)
                .unwrap_or_default()
        })
    }

    fn restart(&self, instance: u32) -> BoxFuture<'_, Result<(), ActionError>> {
        Box::pin(async move {
            if instance == 0 || instance > self.replicas() {
                return Err(ActionError::NoSuchInstance(instance));
            }
            let m = actor::<DeployMsg>(&deploy_manager::name(&self.cfg.app)).ok_or_else(|| {
                ActionError::Unavailable("the deployment manager is restarting".into())
            })?;
            match ractor::call_t!(m, |reply| DeployMsg::Restart { instance, reply }, 5000) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ActionError::Timeout),
            }
        })
    }

    fn set_mode(&self, mode: Mode) -> BoxFuture<'_, Result<(), ActionError>> {
        Box::pin(async move {
            let m = actor::<DeployMsg>(&deploy_manager::name(&self.cfg.app)).ok_or_else(|| {
                ActionError::Unavailable("the deployment manager is restarting".into())
            })?;
            match ractor::call_t!(m, |reply| DeployMsg::SetMode { mode, reply }, 5000) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ActionError::Timeout),
            }
        })
    }

    fn unghost(&self, version: String) -> BoxFuture<'_, Result<(), ActionError>> {
        Box::pin(async move {
            let m = actor::<DeployMsg>(&deploy_manager::name(&self.cfg.app)).ok_or_else(|| {
                ActionError::Unavailable("the deployment manager is restarting".into())
            })?;
            match ractor::call_t!(m, |reply| DeployMsg::Unghost { version, reply }, 5000) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ActionError::Timeout),
            }
        })
    }

    fn log_file(&self, instance: u32, stream: LogStream) -> Option<PathBuf> {
        if instance == 0 {
            return self
                .cfg
                .own_log_dir
                .as_ref()
                .map(|d| d.join(format!("deployex-{}.log", stream.as_str())));
        }
        (instance <= self.replicas()).then(|| self.cfg.log_file(instance, stream))
    }

    fn remote_shell(&self, instance: u32) -> BoxFuture<'_, Result<ShellCommand, ActionError>> {
        Box::pin(async move {
            if instance == 0 || instance > self.replicas() {
                return Err(ActionError::NoSuchInstance(instance));
            }
            let status = self.instance_status(instance).await;
            if status.os_pid.is_none() {
                return Err(ActionError::Invalid(format!(
                    "instance {instance} is not running"
                )));
            }
            // The slot the current process runs from (start-first
            // deployments alternate between two).
            let slot = status.slot;
            let service = self.cfg.slot_service_dir(instance, slot);
            let current = service.join("current");
            let mut overrides = vec![
                (
                    "RELEASE_NODE_SUFFIX".to_string(),
                    format!("-{instance}{}", slot.suffix()),
                ),
                (
                    "RELEASE_NODE".to_string(),
                    self.cfg.slot_node_basename(instance, slot),
                ),
                ("RELX_REPLACE_OS_VARS".to_string(), "true".to_string()),
                ("RELEASE_DISTRIBUTION".to_string(), "sname".to_string()),
                ("RELEASE_COOKIE".to_string(), self.cfg.cookie.clone()),
                ("ERL_EPMD_PORT".to_string(), self.cfg.epmd_port.to_string()),
                ("TERM".to_string(), "xterm-256color".to_string()),
            ];
            if let Some(user) = &self.cfg.app_user {
                overrides.extend(user.env(&service));
            }
            Ok(ShellCommand {
                program: current.join("bin").join(&self.cfg.app),
                args: vec![crate::release_kind::remote_shell_arg(status.release_kind).to_string()],
                env: crate::process::instance_env(self.cfg.base_env.iter().cloned(), &overrides),
                cwd: current,
                user: self.cfg.app_user.clone(),
            })
        })
    }

    fn actors(&self) -> BoxFuture<'_, ActorInfo> {
        Box::pin(async move { Self::actor_info(&self.root.get_cell()) })
    }
}
