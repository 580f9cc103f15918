//! `[[apps]]`: several applications in one file (issue 17).
//!
//! ```toml
//! monitored_replicas = 2          # top-level per-app keys: defaults for every app
//! [[apps]]
//! monitored_app_name = "api"
//! monitored_app_port = 4000
//! [apps.env]                      # given to this app's instances only
//! POOL_SIZE = "10"
//! [[apps]]
//! monitored_app_name = "worker"
//! monitored_app_port = 4100
//! ```
//!
//! Rules (each a [`ConfigError`], exit status 2):
//! - each `[[apps]]` table takes only the per-app keys ([`PER_APP`]) and
//!   `env`; `monitored_app_name` is required;
//! - with `[[apps]]` present, the environment variable of a per-app key is
//!   an error naming it (which app would it be for?);
//! - names are distinct; port ranges do not overlap (a `start_first` app's
//!   range includes its spare port, see `EngineConfig::port_pool`).
//!
//! Without `[[apps]]` nothing here applies: the single-app file and
//! environment work as before.

use std::collections::HashMap;
use std::path::Path;

use deployex_actors::EngineConfig;

use super::ConfigError;
use super::file::file_key;

/// The variables an `[[apps]]` table may set (and that the environment may
/// not set once `[[apps]]` is present).
pub(super) const PER_APP: &[&str] = &[
    "DEPLOYEX_MONITORED_APP_NAME",
    "DEPLOYEX_MONITORED_REPLICAS",
    "DEPLOYEX_MONITORED_APP_PORT",
    "DEPLOYEX_RELEASE_ADAPTER",
    "DEPLOYEX_RELEASE_DIR",
    "DEPLOYEX_RELEASE_BUCKET",
    "DEPLOYEX_HEALTH_PATH",
    "DEPLOYEX_MIN_READY_MS",
    "DEPLOYEX_OTP_READINESS",
    "DEPLOYEX_DEPLOY_TIMEOUT_ROLLBACK_MS",
    "DEPLOYEX_ROLLBACK_CRASHES",
    "DEPLOYEX_DEPLOY_STRATEGY",
    "DEPLOYEX_WATCHDOG_ACTION",
    "DEPLOYEX_WATCHDOG_ATOMS_PCT",
    "DEPLOYEX_WATCHDOG_MEMORY_MB",
    "DEPLOYEX_WATCHDOG_PORTS_PCT",
    "DEPLOYEX_WATCHDOG_PROCESSES_PCT",
    "DEPLOYEX_LIVENESS_FAILURES",
    "DEPLOYEX_LIVENESS_INTERVAL_MS",
];

/// One `[[apps]]` table: its keys (file-key form, as `read_file` gives
/// them) and its `[apps.env]` variables.
#[derive(Debug, Clone, Default)]
pub(super) struct AppTable {
    pub keys: HashMap<String, String>,
    pub env: Vec<(String, String)>,
}

/// The `[[apps]]` tables of `path`, in file order; `None`: the file has none.
pub(super) fn read_apps(path: &Path) -> Result<Option<Vec<AppTable>>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
    let table: toml::Table = text.parse().map_err(|e| {
        ConfigError(format!(
            "config file {} is not valid TOML: {e}",
            path.display()
        ))
    })?;
    parse_apps(&table).map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))
}

fn parse_apps(table: &toml::Table) -> Result<Option<Vec<AppTable>>, String> {
    let Some(apps) = table.get("apps") else {
        return Ok(None);
    };
    let Some(apps) = apps.as_array() else {
        return Err("apps must be [[apps]] tables".into());
    };
    if apps.is_empty() {
        return Err("[[apps]] is empty".into());
    }
    let allowed: Vec<String> = PER_APP.iter().map(|v| file_key(v)).collect();
    let mut out = Vec::new();
    for (n, app) in apps.iter().enumerate() {
        let n = n + 1;
        let Some(app) = app.as_table() else {
            return Err(format!("[[apps]] #{n} is not a table"));
        };
        let mut parsed = AppTable::default();
        for (key, value) in app {
            if key == "env" {
                let Some(env) = value.as_table() else {
                    return Err(format!("[[apps]] #{n}: env must be a table"));
                };
                for (k, v) in env {
                    let v = scalar(v)
                        .ok_or_else(|| format!("[[apps]] #{n}: env.{k} must be a string"))?;
                    parsed.env.push((k.clone(), v));
                }
                continue;
            }
            if !allowed.contains(key) {
                return Err(format!(
                    "[[apps]] #{n}: unknown key {key:?} (an app takes {} and env)",
                    allowed.join(", ")
                ));
            }
            let v = scalar(value).ok_or_else(|| {
                format!("[[apps]] #{n}: {key} must be a string, number or boolean")
            })?;
            parsed.keys.insert(key.clone(), v);
        }
        if !parsed.keys.contains_key("monitored_app_name") {
            return Err(format!("[[apps]] #{n}: monitored_app_name is required"));
        }
        out.push(parsed);
    }
    Ok(Some(out))
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

/// With `[[apps]]`, a per-app key in the environment is an error.
pub(super) fn check_env(env: &HashMap<String, String>) -> Result<(), ConfigError> {
    match PER_APP.iter().find(|v| env.contains_key(**v)) {
        Some(var) => Err(ConfigError(format!(
            "invalid configuration: {var} is set in the environment but the config file has [[apps]]: set {} in each [[apps]] table (or at the top of the file, as the default)",
            file_key(var)
        ))),
        None => Ok(()),
    }
}

/// Names distinct, port ranges apart.
pub(super) fn validate(apps: &[EngineConfig]) -> Result<(), ConfigError> {
    for (i, a) in apps.iter().enumerate() {
        for b in &apps[..i] {
            if a.app == b.app {
                return Err(ConfigError(format!(
                    "invalid configuration: [[apps]] names {:?} twice",
                    a.app
                )));
            }
            let (pa, pb) = (a.port_pool(), b.port_pool());
            if pa.start() <= pb.end() && pb.start() <= pa.end() {
                return Err(ConfigError(format!(
                    "invalid configuration: the ports of {:?} ({}..={}) overlap those of {:?} ({}..={})",
                    a.app,
                    pa.start(),
                    pa.end(),
                    b.app,
                    pb.start(),
                    pb.end()
                )));
            }
        }
    }
    Ok(())
}

/// `base` with an app's `[apps.env]` variables added (replacing a
/// variable of the same name), sorted.
pub(super) fn with_env(
    mut base: Vec<(String, String)>,
    extra: &[(String, String)],
) -> Vec<(String, String)> {
    base.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    base.extend(extra.iter().cloned());
    base.sort();
    base
}

/// One line of `check-config`'s app list.
pub(super) fn describe(e: &EngineConfig) -> String {
    let store = match &e.store {
        deployex_actors::StoreConfig::Local { root } => format!("local {}", root.display()),
        deployex_actors::StoreConfig::S3 { bucket, .. } => format!("s3 bucket={bucket}"),
    };
    format!(
        "  {}: {} replicas, ports {}..={}, {}, store {store}\n",
        e.app,
        e.replicas,
        e.port_pool().start(),
        e.port_pool().end(),
        e.deploy_strategy.as_str(),
    )
}
