//! Configuration loading: defaults, then an optional TOML file, then the
//! environment (which wins). Every value is validated here; a bad one is a
//! single clear line naming the variable and the value (exit status 2).
//!
//! The TOML file uses the environment variable names in lower case, without
//! the `DEPLOYEX_` prefix: `monitored_replicas = 3`, `erl_epmd_port = 4369`,
//! `aws_region = "us-east-2"`. Unknown keys are an error (typos must not be
//! silently ignored).
//!
//! Outside the `local` environment the three secrets (key base, cookie,
//! admin hash) that neither the environment nor the file sets come from a
//! fetcher (AWS Secrets Manager in the binary, see `secrets.rs`); a secret
//! the fetcher cannot supply is an error, never a default. Secret values
//! never appear in messages or in `describe`.
//!
//! Where things are:
//!
//! - `settings`: the table of every variable deployex reads (name,
//!   default, range, doc, secret, scope): the TOML file's keys,
//!   `check-config`'s list and redaction, and what the README table and
//!   the example file are checked against (`doc_tests`);
//! - `source`: where a value comes from (environment, then file, then the
//!   fetched secrets) and the typed readers that name the variable and the
//!   value in their errors; `file`: the TOML file;
//! - `load`: the order of loading (identity, store, secrets) and the
//!   effective values; `engine` and `web`: the settings of each half;
//! - `check`: the start-time check of a local store and `check-config`'s
//!   text.

#[cfg(test)]
use std::path::Path;

use deployex_actors::EngineConfig;
use deployex_web::WebConfig;

mod apps;
mod check;
mod engine;
mod file;
mod load;
pub(crate) mod settings;
mod source;
mod web;

pub use load::load_with_secrets;

/// The lowest bcrypt cost accepted for the admin hash.
pub const MIN_BCRYPT_COST: u32 = 10;

/// bcrypt of `deployex` (cost 12): the local-environment admin password.
pub const LOCAL_ADMIN_HASH: &str = "$2b$12$oTpgs.Vc4nxDsEB8MBkB.Obs9rCf4wB4WvKYErfgcY9BEFaYp48Rq";

/// A configuration error: one line, naming the variable and the value.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The whole effective configuration: the engine's half, the web
/// server's half, and what `check-config` prints.
#[derive(Debug, Clone)]
pub struct Config {
    /// The (first) application: `[[apps]]` #1, or the single-app keys.
    pub engine: EngineConfig,
    /// `[[apps]]` #2 and on (empty without `[[apps]]`); see `apps.rs`.
    pub extra_apps: Vec<EngineConfig>,
    pub web: WebSettings,
    /// Every variable's effective value in the settings table's order, for
    /// `check-config` (secrets redacted).
    pub effective: Vec<(&'static str, String)>,
}

/// The web server's half: whether it runs, and its whole configuration
/// (the binary only adds its own log, `own_log`, before serving).
#[derive(Debug, Clone)]
pub struct WebSettings {
    /// `DEPLOYEX_PHX_SERVER`.
    pub enabled: bool,
    pub server: WebConfig,
}

/// What the secrets fetcher needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretsRequest {
    pub app: String,
    pub env: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    /// The secrets neither the environment nor the file set.
    pub missing: Vec<&'static str>,
}

/// Load from `env` and an optional file without a secrets fetcher: outside
/// `local`, every secret must be set (the binary uses [`load_with_secrets`]).
#[cfg(test)]
pub fn load(
    env: impl IntoIterator<Item = (String, String)>,
    file: Option<&Path>,
) -> Result<Config, ConfigError> {
    load::load_inner(env, file, None::<NoFetcher>)
}

#[cfg(test)]
type NoFetcher = fn(&SecretsRequest) -> Result<std::collections::HashMap<String, String>, String>;

#[cfg(test)]
mod doc_tests;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod apps_tests;
