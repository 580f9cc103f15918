//! [`EpmdRegistry`]: one poller of EPMD's `NAMES` for every connector that
//! waits for its node to register.

use super::*;

/// The poller's pace while a node was started lately ([`BOOT_WINDOW`]): a
/// BEAM registers ~0.5–1 s after its start and readiness waits for it.
pub(super) const REGISTRY_POLL_FAST: Duration = Duration::from_millis(100);

/// The poller's pace otherwise.
pub(super) const REGISTRY_POLL_SLOW: Duration = Duration::from_secs(1);

/// Which nodes are registered in EPMD, for every connector waiting for its
/// node: one poller, whatever the number of nodes.
///
/// Each connector used to ask EPMD for its own node (`PORT_PLEASE2`, a TCP
/// connection each) on its own backoff clock: 200 instances without a node
/// cost 100 EPMD connections and ~300 wake-ups per second in their first
/// minute, and a node appearing after a few minutes was seen up to 30 s
/// late. Now one task asks EPMD for all names (`NAMES`) every 100 ms while
/// a node was started lately, every second otherwise, and only while some
/// connector waits; it wakes exactly the waiters whose name the answer
/// lists (and those that found EPMD down, once it answers again). A node
/// is so seen within one poll, and nodes that never come (or an EPMD that
/// is not running: a site without any BEAM) cost one EPMD query per second
/// in all.
pub struct EpmdRegistry {
    waiters: std::sync::Mutex<Waiters>,
    /// Wakes the poller: a first waiter, or [`EpmdRegistry::hurry`]. Its
    /// own `Arc`: the poller waits on it without holding the registry.
    wake: Arc<tokio::sync::Notify>,
    /// The fast pace lasts until then.
    fast_until: std::sync::Mutex<Instant>,
    poller: std::sync::Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
pub(super) struct Waiters {
    next_id: u64,
    /// id → (name, or `None` for "EPMD answers", waiting since, its
    /// wake-up).
    #[allow(clippy::type_complexity)]
    by_id: HashMap<u64, (Option<String>, Instant, Arc<tokio::sync::Notify>)>,
}

impl EpmdRegistry {
    /// A registry and its poller (aborted when the registry is dropped).
    pub fn start(dist: Arc<DistConfig>) -> Arc<EpmdRegistry> {
        let registry = Arc::new(EpmdRegistry {
            waiters: std::sync::Mutex::new(Waiters::default()),
            wake: Arc::new(tokio::sync::Notify::new()),
            fast_until: std::sync::Mutex::new(Instant::now() + BOOT_WINDOW),
            poller: std::sync::Mutex::new(None),
        });
        let task = tokio::spawn(poll_epmd(Arc::downgrade(&registry), dist));
        if let Ok(mut poller) = registry.poller.lock() {
            *poller = Some(task);
        }
        registry
    }

    /// A node was just started: poll at the fast pace for [`BOOT_WINDOW`].
    pub fn hurry(&self) {
        if let Ok(mut until) = self.fast_until.lock() {
            *until = Instant::now() + BOOT_WINDOW;
        }
        self.wake.notify_one();
    }

    /// Returns once an EPMD answer asked for after `since` lists `name`
    /// (`None`: once EPMD answers at all). The caller has just been told,
    /// at `since`, that `name` is not registered (or that EPMD did not
    /// answer): no older answer is trusted.
    pub async fn wait_registered(&self, name: Option<&str>, since: Instant) {
        let wake = Arc::new(tokio::sync::Notify::new());
        let Some((id, first)) = self.add_waiter(name, since, wake.clone()) else {
            return;
        };
        let _registered = Registered { registry: self, id };
        if first {
            self.wake.notify_one();
        }
        wake.notified().await;
    }

    /// Adds a waiter: its id and whether it is the only one.
    pub(super) fn add_waiter(
        &self,
        name: Option<&str>,
        since: Instant,
        wake: Arc<tokio::sync::Notify>,
    ) -> Option<(u64, bool)> {
        let mut waiters = self.waiters.lock().ok()?;
        let id = waiters.next_id;
        waiters.next_id += 1;
        waiters
            .by_id
            .insert(id, (name.map(str::to_owned), since, wake));
        Some((id, waiters.by_id.len() == 1))
    }

    /// How many connectors wait now.
    pub fn waiting(&self) -> usize {
        self.waiters.lock().map_or(0, |w| w.by_id.len())
    }

    pub(super) fn pace(&self) -> Duration {
        match self.fast_until.lock() {
            Ok(until) if Instant::now() < *until => REGISTRY_POLL_FAST,
            _ => REGISTRY_POLL_SLOW,
        }
    }

    /// Wakes the waiters this answer (asked for at `asked`) is for.
    pub(super) fn answered(&self, asked: Instant, names: &HashSet<String>) {
        let Ok(waiters) = self.waiters.lock() else {
            return;
        };
        for (name, since, wake) in waiters.by_id.values() {
            if asked > *since && name.as_ref().is_none_or(|name| names.contains(name)) {
                // A stored permit: a waiter not polled yet still wakes.
                wake.notify_one();
            }
        }
    }
}

impl Drop for EpmdRegistry {
    fn drop(&mut self) {
        if let Ok(mut poller) = self.poller.lock()
            && let Some(task) = poller.take()
        {
            task.abort();
        }
    }
}

/// One waiter's entry, removed however its wait ends (woken, poked,
/// aborted).
pub(super) struct Registered<'a> {
    registry: &'a EpmdRegistry,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Ok(mut waiters) = self.registry.waiters.lock() {
            waiters.by_id.remove(&self.id);
        }
    }
}

/// The poller of [`EpmdRegistry`]. It holds the registry weakly and never
/// across a wait, so dropping the registry (a stopped watcher) drops it and
/// its `Drop` aborts this task, parked or not.
pub(super) async fn poll_epmd(registry: std::sync::Weak<EpmdRegistry>, dist: Arc<DistConfig>) {
    loop {
        let Some((waiting, wake)) = registry.upgrade().map(|r| (r.waiting(), r.wake.clone()))
        else {
            return;
        };
        if waiting == 0 {
            // Until a connector waits (a stored permit counts).
            wake.notified().await;
            continue;
        }
        let asked = Instant::now();
        let query = crate::dist::epmd::names(&dist.epmd_host, dist.epmd_port);
        // EPMD down: nobody to wake (asked again at the next poll).
        let names = match tokio::time::timeout(dist.connect_timeout, query).await {
            Ok(Ok(names)) => Some(
                names
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect::<HashSet<_>>(),
            ),
            _ => None,
        };
        let Some(pace) = registry.upgrade().map(|reg| {
            if let Some(names) = &names {
                reg.answered(asked, names);
            }
            reg.pace()
        }) else {
            return;
        };
        let _ = tokio::time::timeout(pace, wake.notified()).await;
    }
}
