//! Where a value comes from: the environment first, then the file, then
//! the fetched secrets. The typed readers (`number`, `millis`, `boolean`,
//! `opt`, `string`) treat an empty value as unset and name the variable,
//! where it was set and the bad value in their errors.
//!
//! In tests every reader also checks itself against `settings::SETTINGS`:
//! the variable is in the table, a number's range and default and a
//! boolean's default are the table's (so the table users read cannot drift
//! from what the code does; every test that loads a configuration checks
//! the readers it runs, and `doc_tests::every_setting_has_a_reader` runs
//! them all and fails on a row nothing reads).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ConfigError;
use super::file::{file_key, read_file};

pub(super) struct Source {
    env: HashMap<String, String>,
    file: HashMap<String, String>,
    file_name: Option<PathBuf>,
    /// Filled once, after the settings that say where to fetch from.
    pub(super) fetched: HashMap<String, String>,
}

impl Source {
    /// Reads the file now: a bad file is the first error.
    pub(super) fn new(
        env: HashMap<String, String>,
        file: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        Ok(Source {
            file: match file {
                Some(f) => read_file(f)?,
                None => HashMap::new(),
            },
            file_name: file.map(Path::to_path_buf),
            env,
            fetched: HashMap::new(),
        })
    }

    /// The same source with `keys` (file-key form, an `[[apps]]` table's)
    /// over the file's top-level keys.
    pub(super) fn overlaid(&self, keys: &HashMap<String, String>) -> Source {
        let mut file = self.file.clone();
        file.extend(keys.iter().map(|(k, v)| (k.clone(), v.clone())));
        Source {
            env: self.env.clone(),
            file,
            file_name: self.file_name.clone(),
            fetched: self.fetched.clone(),
        }
    }

    pub(super) fn get(&self, var: &str) -> Option<String> {
        #[cfg(test)]
        table_row(var);
        let set = match self.env.get(var) {
            Some(v) => Some(v.clone()),
            None => self.file.get(&file_key(var)).cloned(),
        };
        match set {
            Some(v) if !v.is_empty() => Some(v),
            // Empty counts as unset (see `opt`): a fetched value fills it.
            other => self.fetched.get(var).cloned().or(other),
        }
    }

    pub(super) fn origin(&self, var: &str) -> String {
        if self.env.contains_key(var) {
            var.to_string()
        } else {
            match &self.file_name {
                Some(f) => format!("{} in {}", file_key(var), f.display()),
                None => var.to_string(),
            }
        }
    }

    pub(super) fn invalid(&self, var: &str, value: &str, expected: &str) -> ConfigError {
        ConfigError(format!(
            "invalid configuration: {}={value:?}: {expected}",
            self.origin(var)
        ))
    }

    pub(super) fn string(&self, var: &str, default: &str) -> String {
        #[cfg(test)]
        note_read(var);
        self.get(var)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_string())
    }

    pub(super) fn opt(&self, var: &str) -> Option<String> {
        #[cfg(test)]
        note_read(var);
        self.get(var).filter(|v| !v.is_empty())
    }

    pub(super) fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
        &self,
        var: &str,
        default: T,
        min: T,
        max: T,
    ) -> Result<T, ConfigError> {
        #[cfg(test)]
        {
            let row = table_row(var);
            let range = match row.range {
                super::settings::Range::Int { min, max } => (min.to_string(), max.to_string()),
                other => panic!("{var} is read as a number but the settings table says {other}"),
            };
            assert_eq!(
                range,
                (min.to_string(), max.to_string()),
                "{var}: the reader's range differs from the settings table's"
            );
            if row.default.parse::<u64>().is_ok() {
                assert_eq!(
                    row.default,
                    default.to_string(),
                    "{var}: the reader's default differs from the settings table's"
                );
            }
        }
        match self.opt(var) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<T>() {
                Ok(n) if n >= min && n <= max => Ok(n),
                _ => Err(self.invalid(
                    var,
                    &v,
                    &format!("expected a whole number from {min} to {max}"),
                )),
            },
        }
    }

    pub(super) fn millis(
        &self,
        var: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<Duration, ConfigError> {
        self.number(var, default, min, max)
            .map(Duration::from_millis)
    }

    pub(super) fn boolean(&self, var: &str, default: bool) -> Result<bool, ConfigError> {
        #[cfg(test)]
        {
            let row = table_row(var);
            assert_eq!(
                row.range,
                super::settings::Range::Bool,
                "{var} is read as a boolean"
            );
            if matches!(row.default, "true" | "false") {
                assert_eq!(
                    row.default,
                    default.to_string(),
                    "{var}: the reader's default differs from the settings table's"
                );
            }
        }
        match self.opt(var) {
            None => Ok(default),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(self.invalid(var, &v, "expected true or false")),
            },
        }
    }
}

/// The table's row of a variable a reader reads; a variable missing from
/// the table is a bug the tests catch here.
#[cfg(test)]
fn table_row(var: &str) -> &'static super::settings::Setting {
    super::settings::setting(var)
        .unwrap_or_else(|| panic!("{var} is read but missing from settings::SETTINGS"))
}

#[cfg(test)]
thread_local! {
    /// The variables the typed readers read on this thread (tests only).
    pub(super) static READ: std::cell::RefCell<std::collections::BTreeSet<String>> =
        const { std::cell::RefCell::new(std::collections::BTreeSet::new()) };
}

#[cfg(test)]
fn note_read(var: &str) {
    READ.with(|r| r.borrow_mut().insert(var.to_string()));
}
