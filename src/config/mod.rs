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
//! - `settings`: every variable deployex reads (name and one-line doc, for
//!   `check-config` and the TOML file's keys), and which ones are secrets;
//! - `source`: where a value comes from (environment, then file, then the
//!   fetched secrets) and the typed readers that name the variable and the
//!   value in their errors; `file`: the TOML file;
//! - `load`: the order of loading (identity, store, secrets) and the
//!   effective values; `engine` and `web`: the settings of each half;
//! - `check`: the start-time check of a local store and `check-config`'s
//!   text.

use std::collections::BTreeMap;
use std::net::SocketAddr;
#[cfg(test)]
use std::path::Path;
use std::time::Duration;

use deployex_actors::EngineConfig;

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

/// The whole effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The (first) application: `[[apps]]` #1, or the single-app keys.
    pub engine: EngineConfig,
    /// `[[apps]]` #2 and on (empty without `[[apps]]`); see `apps.rs`.
    pub extra_apps: Vec<EngineConfig>,
    pub web_enabled: bool,
    pub bind: SocketAddr,
    pub host: String,
    pub secret_key_base: String,
    pub admin_hashed_password: String,
    pub secure_cookie: bool,
    pub session_ttl: Duration,
    pub metrics_token: Option<String>,
    pub terminal_idle: Duration,
    /// Effective values by variable, for `check-config` (secrets redacted).
    pub effective: BTreeMap<String, String>,
    // -- web hardening --
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Origins a browser may send state changes from (exact match).
    pub public_origins: Vec<String>,
    pub max_connections: usize,
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
mod tests;

#[cfg(test)]
mod apps_tests;
