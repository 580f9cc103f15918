//! Fleet: several deployex hosts on one release store coordinate through it,
//! without a server of their own (`DEPLOYEX_FLEET=true`).
//!
//! Objects under `fleet/{app}/{env}/` (see [`objects`] for how each store
//! makes them atomic and conditional):
//!
//! ```text
//! hosts/{host}.json            heartbeat + status, rewritten every DEPLOYEX_FLEET_HEARTBEAT_MS (5 s)
//! claims/{version}/slot-{n}    a deployment slot (n < DEPLOYEX_FLEET_MAX_PARALLEL), created
//!                              with a conditional create, renewed by its holder (lease),
//!                              deleted when released (so `claims/` lists active versions only)
//! canary/{version}.json        the first host to claim the version (created once)
//! ghosts/{version}.json        a version ghosted by one host: no host starts it; deleted by
//!                              an un-ghost on any host, which every host then applies locally
//! ```
//!
//! Invariants:
//! - A host starts deploying a version only while it holds a slot for it
//!   ([`may_deploy`], asked by the DeployManager before each deployment
//!   step). Rollbacks never wait for a slot.
//! - While the canary holds a live slot, no other host claims: the version
//!   reaches other hosts only after the canary has it ready on every
//!   instance (it then releases its slot) or after the canary's lease ran
//!   out (it died); a version the canary ghosts is written as a fleet ghost
//!   *before* its slot is released, and a host re-reads the ghost after
//!   claiming, so no host starts a version ghosted elsewhere.
//! - Leases are measured with the store's clock (S3 `LastModified`, file
//!   mtimes), never a host's: a host's "now" is the store's time of the
//!   heartbeat it just wrote.
//! - The DeployManager's handler never waits on the store: the hooks read
//!   and queue under a mutex; one task per host does the I/O and casts
//!   `Evaluate` to the DeployManager when a claim succeeds.
//! - Store outage: heartbeats and claims fail and are retried every tick;
//!   nothing running is touched, and no new deployment step starts without
//!   a claim renewed within half a lease (a host cut off from the store
//!   stops starting steps before another host can take its slot).
//! - Every app has its own fleet (`[[apps]]`): its own task, objects under
//!   `fleet/{app}/{env}/` in its own store, its own slots, canary and
//!   ghosts; the hooks name their app, so one app's versions never take
//!   another app's slots or ghost another app's version of the same name
//!   (`apps_have_their_own_fleet`). The fleets follow the app list (an
//!   app added by a reload gets one, a removed app's task stops).

pub mod objects;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::config::EngineConfig;
use objects::Objects;

mod task;

use task::Fleet;

/// The fleet settings of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// This host's name in the fleet (`DEPLOYEX_HOST_ID`, default the host name).
    pub host_id: String,
    /// Hosts deploying one version at a time (`DEPLOYEX_FLEET_MAX_PARALLEL`).
    pub max_parallel: u32,
    /// A claim not renewed for this long is free (`DEPLOYEX_FLEET_LEASE_MS`).
    pub lease: Duration,
    /// Heartbeat, renewal and claim period (`DEPLOYEX_FLEET_HEARTBEAT_MS`).
    pub heartbeat: Duration,
}

/// A slot this host holds.
#[derive(Debug, Clone)]
struct Held {
    key: String,
    etag: String,
    /// The last successful claim or renewal (this host's monotonic clock,
    /// only compared with itself).
    renewed: Instant,
}

/// What the hooks and the fleet task share.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// The lease: a slot not renewed for half of it is not used to start a
    /// step (another host may take it once the lease has run out).
    lease: Duration,
    /// The version the DeployManager asked to deploy and may not yet.
    want: Option<String>,
    held: HashMap<String, Held>,
    /// Held versions to release at the next tick (rolled out or ghosted).
    release: BTreeSet<String>,
    to_ghost: Vec<(String, String)>,
    to_unghost: Vec<String>,
    /// Fleet ghosts, as last read (plus those queued here).
    ghosts: BTreeSet<String>,
    /// Fleet ghosts as last read from the store (`None` before the first
    /// read): one that disappears was un-ghosted on another host.
    read_ghosts: Option<BTreeSet<String>>,
    view: Option<Value>,
    /// When `view` was read from the store.
    view_at: Option<Instant>,
    heartbeat: Duration,
    /// When the view was last asked for: the whole fleet is read only
    /// while someone looks (store requests cost money).
    view_asked: Option<Instant>,
    last_error: Option<String>,
}

/// The whole fleet is read every heartbeat for this long after the view
/// was last asked for.
const VIEW_INTEREST: Duration = Duration::from_secs(60);

/// Each app's fleet state, by app; an app without an entry has no fleet.
static FLEETS: OnceLock<Mutex<HashMap<String, Arc<Mutex<Shared>>>>> = OnceLock::new();
/// Wakes the askers of [`view`] when a fleet task has read a new view.
static VIEW_READ: tokio::sync::Notify = tokio::sync::Notify::const_new();

fn fleets() -> MutexGuard<'static, HashMap<String, Arc<Mutex<Shared>>>> {
    FLEETS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `app`'s fleet state; `None` when `app` has no fleet.
fn state_of(app: &str) -> Option<Arc<Mutex<Shared>>> {
    fleets().get(app).cloned()
}

fn lock(state: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether this host may start a deployment step of `version` now. Without
/// a fleet: always. Otherwise only while it holds a slot; else the wish is
/// queued for the fleet task, which claims a slot and re-evaluates.
pub fn may_deploy(app: &str, version: &str) -> bool {
    let Some(state) = state_of(app) else {
        return true;
    };
    let mut s = lock(&state);
    if s.ghosts.contains(version) {
        return false;
    }
    if let Some(h) = s.held.get(version)
        && !s.release.contains(version)
    {
        // Cut off from the store for half a lease: the slot may be someone
        // else's soon; wait until a renewal succeeds again.
        if h.renewed.elapsed() < s.lease / 2 {
            return true;
        }
        return false;
    }
    if s.want.as_deref() != Some(version) {
        tracing::info!(%version, "fleet: waiting for a deployment slot");
        s.want = Some(version.to_owned());
    }
    false
}

/// Every instance of this host runs `version` and is ready: its slot goes.
pub fn rolled_out(app: &str, version: &str) {
    let Some(state) = state_of(app) else {
        return;
    };
    let mut s = lock(&state);
    if s.want.as_deref() == Some(version) {
        s.want = None;
    }
    if s.held.contains_key(version) && s.release.insert(version.to_owned()) {
        tracing::info!(%version, "fleet: rolled out here, releasing the slot");
    }
}

/// This host ghosted `version`: the fleet ghosts it, the slot goes.
pub fn ghosted(app: &str, version: &str, why: &str) {
    let Some(state) = state_of(app) else {
        return;
    };
    let mut s = lock(&state);
    if s.ghosts.insert(version.to_owned()) {
        s.to_ghost.push((version.to_owned(), why.to_owned()));
    }
    if s.held.contains_key(version) {
        s.release.insert(version.to_owned());
    }
}

/// An operator un-ghosted `version` here: cleared fleet-wide. Returns
/// whether the fleet had it ghosted.
pub fn unghosted(app: &str, version: &str) -> bool {
    let Some(state) = state_of(app) else {
        return false;
    };
    let mut s = lock(&state);
    let knew = s.ghosts.remove(version);
    s.to_unghost.push(version.to_owned());
    knew
}

/// The fleet as last read by this host (`GET /api/v1/fleet`); `None`
/// without a fleet. Asking keeps the view fresh (read every heartbeat) for
/// [`VIEW_INTEREST`]; after a quiet period the first ask waits for the next
/// read (at most two heartbeats and 5 s; `store_time` says how old).
pub async fn view(app: &str) -> Option<Value> {
    let state = state_of(app)?;
    let (fresh, heartbeat) = {
        let mut s = lock(&state);
        s.view_asked = Some(Instant::now());
        let fresh = s.view_at.is_some_and(|t| t.elapsed() < s.heartbeat * 2);
        (fresh, s.heartbeat)
    };
    if !fresh {
        // Nobody looked for a while: the fleet task reads the fleet at its
        // next heartbeat; wait for that (bounded), else answer what we have.
        let _ = tokio::time::timeout(heartbeat * 2 + Duration::from_secs(5), VIEW_READ.notified())
            .await;
    }
    let s = lock(&state);
    let mut view = s
        .view
        .clone()
        .unwrap_or_else(|| json!({"hosts": [], "claims": [], "ghosts": []}));
    // The error is the latest tick's, even when that tick could not
    // refresh the rest.
    if let Some(map) = view.as_object_mut() {
        map.insert("last_error".into(), json!(s.last_error));
    }
    Some(view)
}

/// Runs every app's fleet task while the tree runs: one per app of the
/// root's current list (`apps`), started for an app a reload adds and
/// stopped (its state dropped) for an app a reload removes. Ends, with
/// every fleet task, when the list's sender is gone.
pub fn spawn_all(
    mut apps: tokio::sync::watch::Receiver<crate::root::Apps>,
    fleet: FleetConfig,
    root: ractor::ActorRef<crate::root::RootMsg>,
    started: Instant,
) -> tokio::task::JoinHandle<()> {
    tracing::info!(host = %fleet.host_id, max_parallel = fleet.max_parallel, lease = ?fleet.lease, "fleet mode");
    tokio::spawn(async move {
        // By name: a reload that only scales an app keeps its fleet task
        // (its handle reads the live replica count), held slots included.
        // Dropping an entry (a removed app, or this task aborted with the
        // tree) stops that app's fleet task and drops its state.
        let mut running: HashMap<String, AppFleet> = HashMap::new();
        loop {
            let list = apps.borrow_and_update().clone();
            running.retain(|app, _| list.iter().any(|c| c.app == *app));
            for cfg in list.iter() {
                if !running.contains_key(&cfg.app) {
                    let engine = crate::EngineHandle::new(cfg.clone(), root.clone(), started);
                    let task = spawn(cfg.clone(), fleet.clone(), engine);
                    running.insert(
                        cfg.app.clone(),
                        AppFleet {
                            app: cfg.app.clone(),
                            task,
                        },
                    );
                }
            }
            if apps.changed().await.is_err() {
                break;
            }
        }
    })
}

/// One app's running fleet task; dropped: the task stops and the app has
/// no fleet any more (its hooks see none).
struct AppFleet {
    app: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AppFleet {
    fn drop(&mut self) {
        self.task.abort();
        fleets().remove(&self.app);
    }
}

/// Starts `cfg`'s app's fleet task.
fn spawn(
    cfg: Arc<EngineConfig>,
    fleet: FleetConfig,
    engine: crate::EngineHandle,
) -> tokio::task::JoinHandle<()> {
    let state = Arc::new(Mutex::new(Shared {
        lease: fleet.lease,
        heartbeat: fleet.heartbeat,
        ..Shared::default()
    }));
    fleets().insert(cfg.app.clone(), state.clone());
    tokio::spawn(async move {
        let store = loop {
            match crate::release_fetcher::make_store(&cfg).await {
                Ok(s) => break s,
                Err(e) => {
                    record_error(
                        &state,
                        format!("fleet store: {}", crate::release_fetcher::error_chain(&e)),
                    );
                    tokio::time::sleep(fleet.heartbeat).await;
                }
            }
        };
        let task = Fleet {
            prefix: format!("fleet/{}/{}/", cfg.app, cfg.env),
            objects: Objects::from_store(&store),
            cfg: fleet,
            engine,
            state: state.clone(),
        };
        let mut every = tokio::time::interval(task.cfg.heartbeat);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match task.tick().await {
                Ok(()) => {
                    if lock(&state).last_error.take().is_some() {
                        tracing::info!(app = %cfg.app, "fleet: store reachable again");
                    }
                }
                Err(e) => record_error(&state, crate::release_fetcher::error_chain(&e)),
            }
        }
    })
}

/// Keeps `error` as the fleet's last error, logged once per change.
fn record_error(state: &Mutex<Shared>, error: String) {
    let mut s = lock(state);
    if s.last_error.as_deref() != Some(error.as_str()) {
        tracing::error!(%error, "fleet");
        s.last_error = Some(error);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Each app has its own fleet: one app's wish, slots and ghosts never
    /// touch another's, even for a version of the same name; an app
    /// without a fleet deploys freely.
    #[test]
    fn apps_have_their_own_fleet() {
        for app in ["api", "worker"] {
            fleets().insert(
                app.into(),
                Arc::new(Mutex::new(Shared {
                    lease: Duration::from_secs(30),
                    heartbeat: Duration::from_secs(5),
                    ..Shared::default()
                })),
            );
        }
        let get = |app: &str| state_of(app).unwrap();
        assert!(!may_deploy("api", "1.0.0"), "api waits for a slot");
        assert!(!may_deploy("worker", "2.0.0"), "worker waits for its own");
        assert_eq!(lock(&get("api")).want.as_deref(), Some("1.0.0"));
        assert_eq!(lock(&get("worker")).want.as_deref(), Some("2.0.0"));
        assert!(may_deploy("nofleet", "1.0.0"), "an app without a fleet");
        ghosted("worker", "1.0.0", "crash loop");
        assert!(lock(&get("worker")).ghosts.contains("1.0.0"));
        assert!(
            lock(&get("api")).ghosts.is_empty(),
            "api's 1.0.0 is its own"
        );
        assert!(!may_deploy("worker", "1.0.0"));
        assert!(!unghosted("api", "1.0.0"), "api never had it ghosted");
        assert!(lock(&get("worker")).ghosts.contains("1.0.0"));
        assert!(unghosted("worker", "1.0.0"));
        rolled_out("api", "1.0.0");
        assert_eq!(lock(&get("api")).want, None);
        assert_eq!(lock(&get("worker")).want.as_deref(), Some("2.0.0"));
    }

    /// Stands in for the root (a fleet task's engine handle needs one).
    struct NoRoot;
    impl ractor::Actor for NoRoot {
        type Msg = crate::root::RootMsg;
        type State = ();
        type Arguments = ();
        async fn pre_start(
            &self,
            _: ractor::ActorRef<Self::Msg>,
            _: (),
        ) -> Result<(), ractor::ActorProcessingErr> {
            Ok(())
        }
    }

    /// `spawn_all` follows the root's app list: an app a reload adds gets
    /// a fleet, a removed app's fleet is gone (its hooks see none), and
    /// every fleet goes with the list's sender (the tree).
    #[tokio::test]
    async fn fleets_follow_the_app_list() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = |app: &str| Arc::new(EngineConfig::with_defaults(app, dir.path()));
        let (a, b) = (cfg("fleet_a"), cfg("fleet_b"));
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(vec![a.clone()]));
        let (root, _) = ractor::Actor::spawn(None, NoRoot, ()).await.unwrap();
        let fleet = FleetConfig {
            host_id: "h1".into(),
            max_parallel: 1,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
        };
        let task = spawn_all(rx, fleet, root.clone(), Instant::now());
        let has = |app: &'static str, want: bool| async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while state_of(app).is_some() != want {
                assert!(
                    Instant::now() < deadline,
                    "{app} has a fleet: expected {want}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        has("fleet_a", true).await;
        has("fleet_b", false).await;
        tx.send(Arc::new(vec![a.clone(), b.clone()])).unwrap();
        has("fleet_b", true).await;
        tx.send(Arc::new(vec![a.clone()])).unwrap();
        has("fleet_b", false).await;
        assert!(
            may_deploy("fleet_b", "1.0.0"),
            "a removed app's hooks see no fleet"
        );
        has("fleet_a", true).await;
        drop(tx);
        has("fleet_a", false).await;
        assert!(task.await.is_ok(), "ends with the list");
        root.stop(None);
    }
}
