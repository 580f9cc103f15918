//! The TOML file: keys are the variable names of `settings::SETTINGS` in
//! lower case without `DEPLOYEX_`; unknown keys and tables are errors (a
//! typo must not be silently ignored).

use std::collections::HashMap;
use std::path::Path;

use super::ConfigError;
use super::settings::SETTINGS;
pub(super) use super::settings::file_key;

pub(super) fn read_file(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
    let table: toml::Table = text.parse().map_err(|e| {
        ConfigError(format!(
            "config file {} is not valid TOML: {e}",
            path.display()
        ))
    })?;
    let known: Vec<String> = SETTINGS.iter().map(|s| s.key()).collect();
    let mut out = HashMap::new();
    for (key, value) in table {
        if key == "apps" {
            // `[[apps]]` tables: read by `apps::read_apps`.
            continue;
        }
        if !known.contains(&key) {
            return Err(ConfigError(format!(
                "config file {}: unknown key {key:?} (keys are the variable names in lower case without DEPLOYEX_, e.g. monitored_replicas)",
                path.display()
            )));
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(f) => f.to_string(),
            other => {
                return Err(ConfigError(format!(
                    "config file {}: {key} must be a string, number or boolean, not {}",
                    path.display(),
                    other.type_str()
                )));
            }
        };
        out.insert(key, value);
    }
    Ok(out)
}
