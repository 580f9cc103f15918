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
//! - One app takes part: the first configured one (`[[apps]]`). The hooks
//!   name their app; another app's calls see no fleet (it deploys on its
//!   own on each host), so its versions never take the fleet app's slots
//!   or ghost the fleet app's versions of the same name
//!   (`another_apps_hooks_see_no_fleet`).

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
struct Shared {
    /// The app whose deployments the fleet coordinates.
    app: String,
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

static SHARED: OnceLock<Mutex<Shared>> = OnceLock::new();
/// Wakes the askers of [`view`] when the fleet task has read a new view.
static VIEW_READ: tokio::sync::Notify = tokio::sync::Notify::const_new();

fn shared() -> Option<MutexGuard<'static, Shared>> {
    SHARED
        .get()
        .map(|m| m.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// The shared state when `app` is the fleet's app; `None` (no fleet) for
/// any other app.
fn shared_for(app: &str) -> Option<MutexGuard<'static, Shared>> {
    shared().filter(|s| s.app == app)
}

/// Whether this host may start a deployment step of `version` now. Without
/// a fleet: always. Otherwise only while it holds a slot; else the wish is
/// queued for the fleet task, which claims a slot and re-evaluates.
pub fn may_deploy(app: &str, version: &str) -> bool {
    let Some(mut s) = shared_for(app) else {
        return true;
    };
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
    let Some(mut s) = shared_for(app) else {
        return;
    };
    if s.want.as_deref() == Some(version) {
        s.want = None;
    }
    if s.held.contains_key(version) && s.release.insert(version.to_owned()) {
        tracing::info!(%version, "fleet: rolled out here, releasing the slot");
    }
}

/// This host ghosted `version`: the fleet ghosts it, the slot goes.
pub fn ghosted(app: &str, version: &str, why: &str) {
    let Some(mut s) = shared_for(app) else {
        return;
    };
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
    let Some(mut s) = shared_for(app) else {
        return false;
    };
    let knew = s.ghosts.remove(version);
    s.to_unghost.push(version.to_owned());
    knew
}

/// The fleet as last read by this host (`GET /api/v1/fleet`); `None`
/// without a fleet. Asking keeps the view fresh (read every heartbeat) for
/// [`VIEW_INTEREST`]; after a quiet period the first ask waits for the next
/// read (at most two heartbeats and 5 s; `store_time` says how old).
pub async fn view(app: &str) -> Option<Value> {
    let (fresh, heartbeat) = {
        let mut s = shared_for(app)?;
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
    let s = shared()?;
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

/// Starts this host's fleet task (once per process).
pub fn spawn(cfg: Arc<EngineConfig>, fleet: FleetConfig, engine: crate::EngineHandle) {
    let shared_state = Shared {
        app: cfg.app.clone(),
        lease: fleet.lease,
        heartbeat: fleet.heartbeat,
        ..Shared::default()
    };
    if SHARED.set(Mutex::new(shared_state)).is_err() {
        tracing::error!("fleet task already running");
        return;
    }
    tracing::info!(host = %fleet.host_id, max_parallel = fleet.max_parallel, lease = ?fleet.lease, "fleet mode");
    tokio::spawn(async move {
        let store = loop {
            match crate::release_fetcher::make_store(&cfg).await {
                Ok(s) => break s,
                Err(e) => {
                    record_error(format!(
                        "fleet store: {}",
                        crate::release_fetcher::error_chain(&e)
                    ));
                    tokio::time::sleep(fleet.heartbeat).await;
                }
            }
        };
        let task = Fleet {
            prefix: format!("fleet/{}/{}/", cfg.app, cfg.env),
            objects: Objects::from_store(&store),
            cfg: fleet,
            engine,
        };
        let mut every = tokio::time::interval(task.cfg.heartbeat);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match task.tick().await {
                Ok(()) => {
                    if let Some(mut s) = shared()
                        && s.last_error.take().is_some()
                    {
                        tracing::info!("fleet: store reachable again");
                    }
                }
                Err(e) => record_error(crate::release_fetcher::error_chain(&e)),
            }
        }
    });
}

/// Keeps `error` as the fleet's last error, logged once per change.
fn record_error(error: String) {
    if let Some(mut s) = shared()
        && s.last_error.as_deref() != Some(error.as_str())
    {
        tracing::error!(%error, "fleet");
        s.last_error = Some(error);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// With several apps, only the fleet's app takes part: another app's
    /// hooks neither wait for slots, nor take the fleet app's wish, nor
    /// ghost (or un-ghost) the fleet app's version of the same name.
    #[test]
    fn another_apps_hooks_see_no_fleet() {
        let _ = SHARED.set(Mutex::new(Shared {
            app: "api".into(),
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            ..Shared::default()
        }));
        assert!(
            !may_deploy("api", "1.0.0"),
            "the fleet's app waits for a slot"
        );
        assert!(may_deploy("worker", "1.0.0"), "another app: no fleet");
        assert!(may_deploy("worker", "2.0.0"));
        ghosted("worker", "1.0.0", "crash loop");
        rolled_out("worker", "1.0.0");
        assert!(!unghosted("worker", "1.0.0"));
        {
            let s = shared().unwrap();
            assert_eq!(s.want.as_deref(), Some("1.0.0"), "api's wish kept");
            assert!(s.ghosts.is_empty() && s.to_ghost.is_empty());
            assert!(s.to_unghost.is_empty());
        }
        ghosted("api", "1.0.0", "crash loop");
        assert!(!may_deploy("api", "1.0.0"), "ghosted in the fleet");
        assert!(may_deploy("worker", "1.0.0"), "worker's 1.0.0 is its own");
        assert!(unghosted("api", "1.0.0"));
    }
}
