//! Live reconfiguration (SIGHUP): what changes between the running
//! applications and a newly loaded list.
//!
//! Invariants:
//! - Apps are matched by name. An app only in the new list is added, an
//!   app only in the old list is removed (its instances stopped, its
//!   subtree removed), an app in both whose replica count changed is
//!   scaled (highest instance numbers go first when scaling down); every
//!   other app is untouched.
//! - Any other change of an existing app's settings (host-wide settings
//!   included: they are part of every app's configuration) is not applied:
//!   it is reported as needing a restart of deployex, and the running
//!   settings stay.
//! - The replica count each app runs now is kept here
//!   ([`live_replicas`]), so that the handles the web holds follow a scale.
//! - The plan is pure (no actor, no I/O): the RootSupervisor applies it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::EngineConfig;

/// The replica count each running app's AppSupervisor runs now (it may
/// differ from the count an `EngineHandle` was made with, after a
/// reload): set by the AppSupervisor at its start and when it scales.
static LIVE_REPLICAS: std::sync::LazyLock<std::sync::Mutex<HashMap<String, u32>>> =
    std::sync::LazyLock::new(Default::default);

/// Records that `app` runs `replicas` instances now.
pub fn set_live_replicas(app: &str, replicas: u32) {
    if let Ok(mut m) = LIVE_REPLICAS.lock() {
        m.insert(app.to_string(), replicas);
    }
}

/// The replica count `app` runs now, if its AppSupervisor ever started.
pub fn live_replicas(app: &str) -> Option<u32> {
    LIVE_REPLICAS.lock().ok()?.get(app).copied()
}

/// What a reload changes, by app name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Apps to start, in the new list's order.
    pub added: Vec<String>,
    /// Apps to stop and remove.
    pub removed: Vec<String>,
    /// Apps whose replica count changes: (app, from, to).
    pub scaled: Vec<(String, u32, u32)>,
    /// Apps whose other settings changed: kept as running, restart needed.
    pub needs_restart: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.scaled.is_empty()
            && self.needs_restart.is_empty()
    }
}

/// The settings of `cfg` other than its replica count, for comparison
/// only (in memory, never logged: it holds the cookie).
fn settings_but_replicas(cfg: &EngineConfig) -> String {
    let mut c = cfg.clone();
    c.replicas = 0;
    format!("{c:?}")
}

/// Compares the running apps with the new list.
pub fn plan(old: &[Arc<EngineConfig>], new: &[EngineConfig]) -> Plan {
    let mut p = Plan::default();
    for n in new {
        match old.iter().find(|o| o.app == n.app) {
            None => p.added.push(n.app.clone()),
            Some(o) => {
                if o.replicas != n.replicas {
                    p.scaled.push((n.app.clone(), o.replicas, n.replicas));
                }
                if settings_but_replicas(o) != settings_but_replicas(n) {
                    p.needs_restart.push(n.app.clone());
                }
            }
        }
    }
    for o in old {
        if !new.iter().any(|n| n.app == o.app) {
            p.removed.push(o.app.clone());
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, replicas: u32) -> EngineConfig {
        let mut c = EngineConfig::with_defaults(name, std::path::Path::new("/nonexistent"));
        c.replicas = replicas;
        c
    }

    #[test]
    fn same_list_changes_nothing() {
        let old = vec![Arc::new(app("a", 2)), Arc::new(app("b", 2))];
        assert!(plan(&old, &[app("a", 2), app("b", 2)]).is_empty());
    }

    #[test]
    fn added_removed_scaled_by_name() {
        let old = vec![Arc::new(app("a", 2)), Arc::new(app("b", 2))];
        let p = plan(&old, &[app("a", 3), app("c", 1)]);
        assert_eq!(p.added, vec!["c".to_string()]);
        assert_eq!(p.removed, vec!["b".to_string()]);
        assert_eq!(p.scaled, vec![("a".to_string(), 2, 3)]);
        assert!(p.needs_restart.is_empty());
    }

    #[test]
    fn other_settings_need_a_restart() {
        let old = vec![Arc::new(app("a", 2))];
        let mut changed = app("a", 1);
        changed.app_port_base += 100;
        let p = plan(&old, &[changed]);
        assert_eq!(p.scaled, vec![("a".to_string(), 2, 1)]);
        assert_eq!(p.needs_restart, vec!["a".to_string()]);
    }
}
