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

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use deployex_actors::{EngineConfig, StoreConfig};

/// Every variable deployex reads, in documentation order.
pub const VARIABLES: &[(&str, &str)] = &[
    (
        "DEPLOYEX_MONITORED_APP_NAME",
        "release name {app} (myphoenixapp)",
    ),
    (
        "DEPLOYEX_CLOUD_ENVIRONMENT",
        "{env} in store paths; `local` = dev defaults (local)",
    ),
    (
        "DEPLOYEX_RELEASE_ADAPTER",
        "local | s3 (local; s3 when env is not local)",
    ),
    (
        "DEPLOYEX_RELEASE_BUCKET",
        "S3 bucket ({app}-{env}-distribution)",
    ),
    (
        "DEPLOYEX_RELEASE_DIR",
        "root of the local store (/tmp/{app})",
    ),
    ("AWS_REGION", "S3 / Secrets Manager region"),
    (
        "AWS_ENDPOINT_URL",
        "S3 and Secrets Manager endpoint override (e.g. a local moto_server)",
    ),
    ("DEPLOYEX_MONITORED_REPLICAS", "number of instances (3)"),
    (
        "DEPLOYEX_MONITORED_APP_PORT",
        "PORT of instance 1; instance i gets base+i-1 (4000)",
    ),
    (
        "DEPLOYEX_DEPLOY_TIMEOUT_ROLLBACK_MS",
        "rollback an instance not ready within (600000)",
    ),
    (
        "DEPLOYEX_DEPLOY_SCHEDULE_INTERVAL_MS",
        "store polling interval (5000)",
    ),
    ("DEPLOYEX_PHX_HOST", "dashboard host name (localhost)"),
    ("DEPLOYEX_PHX_PORT", "dashboard port (5001)"),
    ("DEPLOYEX_PHX_SERVER", "dashboard on/off (true)"),
    ("DEPLOYEX_BIND_ADDR", "dashboard listen address (127.0.0.1)"),
    (
        "DEPLOYEX_SECRET_KEY_BASE",
        "signs session tokens (random per start in local)",
    ),
    (
        "DEPLOYEX_ERLANG_COOKIE",
        "distribution cookie (cookie in local)",
    ),
    (
        "DEPLOYEX_ADMIN_HASHED_PASSWORD",
        "bcrypt hash of the admin password (deployex in local)",
    ),
    (
        "DEPLOYEX_OTP_TLS_CERT_PATH",
        "folder with ca.crt, deployex.crt, deployex.key: mTLS",
    ),
    (
        "DEPLOYEX_VAR_DIR",
        "service folders and state (/tmp/deployex/varlib; prod /var/lib/deployex)",
    ),
    (
        "DEPLOYEX_LOG_DIR",
        "instance logs (/tmp/{app}/{app}; prod /var/log/{app})",
    ),
    (
        "DEPLOYEX_OTP_READINESS",
        "readiness needs the node over distribution (true)",
    ),
    (
        "DEPLOYEX_MIN_READY_MS",
        "an instance is ready after staying up this long (5000)",
    ),
    ("ERL_EPMD_PORT", "EPMD port (4369)"),
    (
        "DEPLOYEX_BEAM_SAMPLE_MS",
        "BEAM telemetry sampling period per instance; 0 = off (5000)",
    ),
    (
        "DEPLOYEX_HEALTH_PATH",
        "HTTP path that must answer 2xx for readiness (unset)",
    ),
    (
        "DEPLOYEX_ROLLBACK_CRASHES",
        "crashes after a deploy that trigger a rollback at once (5)",
    ),
    (
        "DEPLOYEX_STOP_APPS_ON_EXIT",
        "stop the instances when deployex stops (true)",
    ),
    (
        "DEPLOYEX_STOP_TIMEOUT_MS",
        "SIGTERM to SIGKILL grace when stopping an instance (10000)",
    ),
    (
        "DEPLOYEX_BACKOFF_BASE_MS",
        "first crash-restart delay after the immediate one (1000)",
    ),
    ("DEPLOYEX_BACKOFF_MAX_MS", "crash-restart delay cap (60000)"),
    (
        "DEPLOYEX_BACKOFF_RESET_MS",
        "ready this long resets the crash backoff (60000)",
    ),
    (
        "DEPLOYEX_DEPLOY_STRATEGY",
        "stop_first (stop the old instance, then start the new) or start_first (new one on the spare port, old stopped once it is ready) (stop_first)",
    ),
    (
        "DEPLOYEX_START_COMMAND",
        "bin/{app} arguments that start an instance (mix: start, relx: foreground)",
    ),
    (
        "DEPLOYEX_APP_USER",
        "user the instances, pre-commands and terminals run as; deployex must be root (unset: deployex's own user)",
    ),
    // Fleet mode: see README "Running a fleet".
    (
        "DEPLOYEX_FLEET",
        "coordinate with the other hosts on the same store (false)",
    ),
    (
        "DEPLOYEX_HOST_ID",
        "this host's name in the fleet (host name)",
    ),
    (
        "DEPLOYEX_FLEET_MAX_PARALLEL",
        "hosts deploying one version at a time (1)",
    ),
    (
        "DEPLOYEX_FLEET_LEASE_MS",
        "a deployment slot not renewed for this long is free (900000)",
    ),
    (
        "DEPLOYEX_FLEET_HEARTBEAT_MS",
        "fleet heartbeat, lease renewal and claim period (5000)",
    ),
    (
        "DEPLOYEX_PRE_COMMAND_TIMEOUT_MS",
        "a pre-command running longer is killed (300000)",
    ),
    (
        "DEPLOYEX_LOG_MAX_BYTES",
        "rotate an instance log file above this size (104857600)",
    ),
    ("DEPLOYEX_LOG_KEEP", "rotated log files kept (5)"),
    (
        "DEPLOYEX_SECURE_COOKIE",
        "Secure + __Host- session cookie: unset = when the public origin is https; true/false force it",
    ),
    (
        "DEPLOYEX_SESSION_TTL_S",
        "session lifetime in seconds (43200)",
    ),
    (
        "DEPLOYEX_METRICS_TOKEN",
        "bearer token accepted by /metrics (unset)",
    ),
    (
        "DEPLOYEX_TERMINAL_IDLE_MS",
        "close an idle IEx terminal after (300000)",
    ),
    // Health: liveness, watchdog, events.
    (
        "DEPLOYEX_LIVENESS_INTERVAL_MS",
        "liveness check period of a running instance; 0 = off (5000)",
    ),
    (
        "DEPLOYEX_LIVENESS_FAILURES",
        "failed liveness checks in a row that kill and restart an instance (3)",
    ),
    (
        "DEPLOYEX_WATCHDOG_MEMORY_MB",
        "restart an instance whose resident memory stays above this (unset = off)",
    ),
    (
        "DEPLOYEX_WATCHDOG_ATOMS_PCT",
        "warn when a node uses more than this share of its atom limit (90)",
    ),
    (
        "DEPLOYEX_WATCHDOG_PROCESSES_PCT",
        "warn when a node uses more than this share of its process limit (90)",
    ),
    (
        "DEPLOYEX_WATCHDOG_PORTS_PCT",
        "warn when a node uses more than this share of its port limit (90)",
    ),
    (
        "DEPLOYEX_WATCHDOG_ACTION",
        "warn or restart (unset: restart for memory, warn for BEAM limits)",
    ),
    (
        "DEPLOYEX_WEBHOOK_URL",
        "every event is POSTed here as JSON with a text field (unset = off)",
    ),
    (
        "DEPLOYEX_WEBHOOK_SECRET",
        "signs webhook bodies: X-Deployex-Signature: sha256=<hex HMAC> (unset)",
    ),
    // -- web hardening --
    (
        "DEPLOYEX_TRUSTED_PROXIES",
        "comma-separated CIDRs whose X-Forwarded-For is believed (unset)",
    ),
    (
        "DEPLOYEX_PUBLIC_URL",
        "the dashboard's public origin (https://{PHX_HOST}, or http://{PHX_HOST}:{PHX_PORT} on localhost)",
    ),
    (
        "DEPLOYEX_MAX_CONNECTIONS",
        "open HTTP connections at most (512)",
    ),
];

const SECRETS: &[&str] = &[
    "DEPLOYEX_SECRET_KEY_BASE",
    "DEPLOYEX_ERLANG_COOKIE",
    "DEPLOYEX_ADMIN_HASHED_PASSWORD",
    "DEPLOYEX_METRICS_TOKEN",
    "DEPLOYEX_WEBHOOK_SECRET",
];

/// Secrets the AWS secret may carry besides the required ones; taken from
/// it when not set (same list as `secrets::OPTIONAL`).
pub(crate) const OPTIONAL_SECRETS: &[&str] = &["DEPLOYEX_METRICS_TOKEN"];

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
    pub engine: EngineConfig,
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

/// The secrets a [`SecretsFetcher`] is asked for.
const FETCHED_SECRETS: &[&str] = &[
    "DEPLOYEX_SECRET_KEY_BASE",
    "DEPLOYEX_ERLANG_COOKIE",
    "DEPLOYEX_ADMIN_HASHED_PASSWORD",
];

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

/// Where values come from: environment first, then the file, then the
/// fetched secrets.
struct Source {
    env: HashMap<String, String>,
    file: HashMap<String, String>,
    file_name: Option<PathBuf>,
    fetched: HashMap<String, String>,
}

impl Source {
    fn get(&self, var: &str) -> Option<String> {
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

    fn origin(&self, var: &str) -> String {
        if self.env.contains_key(var) {
            var.to_string()
        } else {
            match &self.file_name {
                Some(f) => format!("{} in {}", file_key(var), f.display()),
                None => var.to_string(),
            }
        }
    }

    fn invalid(&self, var: &str, value: &str, expected: &str) -> ConfigError {
        ConfigError(format!(
            "invalid configuration: {}={value:?}: {expected}",
            self.origin(var)
        ))
    }

    fn string(&self, var: &str, default: &str) -> String {
        self.get(var)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_string())
    }

    fn opt(&self, var: &str) -> Option<String> {
        self.get(var).filter(|v| !v.is_empty())
    }

    fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
        &self,
        var: &str,
        default: T,
        min: T,
        max: T,
    ) -> Result<T, ConfigError> {
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

    fn millis(&self, var: &str, default: u64, min: u64, max: u64) -> Result<Duration, ConfigError> {
        self.number(var, default, min, max)
            .map(Duration::from_millis)
    }

    fn boolean(&self, var: &str, default: bool) -> Result<bool, ConfigError> {
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

/// `DEPLOYEX_MONITORED_REPLICAS` → `monitored_replicas`.
fn file_key(var: &str) -> String {
    var.strip_prefix("DEPLOYEX_")
        .unwrap_or(var)
        .to_ascii_lowercase()
}

fn read_file(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
    let table: toml::Table = text.parse().map_err(|e| {
        ConfigError(format!(
            "config file {} is not valid TOML: {e}",
            path.display()
        ))
    })?;
    let known: Vec<String> = VARIABLES.iter().map(|(v, _)| file_key(v)).collect();
    let mut out = HashMap::new();
    for (key, value) in table {
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

fn valid_app_name(app: &str) -> bool {
    !app.is_empty()
        && app.len() <= 64
        && app.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && app
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn short_hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    name.split('.').next().unwrap_or("localhost").to_string()
}

/// Load from `env` and an optional file without a secrets fetcher: outside
/// `local`, every secret must be set (the binary uses [`load_with_secrets`]).
#[cfg(test)]
pub fn load(
    env: impl IntoIterator<Item = (String, String)>,
    file: Option<&Path>,
) -> Result<Config, ConfigError> {
    load_inner(env, file, None::<NoFetcher>)
}

#[cfg(test)]
type NoFetcher = fn(&SecretsRequest) -> Result<HashMap<String, String>, String>;

/// Load from `env` (normally `std::env::vars()`) and an optional file;
/// outside `local`, the secrets missing from `env` and the
/// file are asked of `fetch` (at most one call; its error is one line for
/// the operator). Values already set win over fetched ones.
pub fn load_with_secrets(
    env: impl IntoIterator<Item = (String, String)>,
    file: Option<&Path>,
    fetch: impl FnOnce(&SecretsRequest) -> Result<HashMap<String, String>, String>,
) -> Result<Config, ConfigError> {
    load_inner(env, file, Some(fetch))
}

fn load_inner(
    env: impl IntoIterator<Item = (String, String)>,
    file: Option<&Path>,
    fetch: Option<impl FnOnce(&SecretsRequest) -> Result<HashMap<String, String>, String>>,
) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env.into_iter().collect();
    let mut src = Source {
        file: match file {
            Some(f) => read_file(f)?,
            None => HashMap::new(),
        },
        file_name: file.map(Path::to_path_buf),
        env: env.clone(),
        fetched: HashMap::new(),
    };

    let app = src.string("DEPLOYEX_MONITORED_APP_NAME", "myphoenixapp");
    if !valid_app_name(&app) {
        return Err(src.invalid(
            "DEPLOYEX_MONITORED_APP_NAME",
            &app,
            "expected a release name: lower-case letters, digits and _, starting with a letter",
        ));
    }
    let cloud_env = src.string("DEPLOYEX_CLOUD_ENVIRONMENT", "local");
    if !cloud_env
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(src.invalid(
            "DEPLOYEX_CLOUD_ENVIRONMENT",
            &cloud_env,
            "expected letters, digits, - and _",
        ));
    }
    let local = cloud_env == "local";

    let adapter = src.string(
        "DEPLOYEX_RELEASE_ADAPTER",
        if local { "local" } else { "s3" },
    );
    let store = match adapter.as_str() {
        "local" => StoreConfig::Local {
            root: PathBuf::from(src.string("DEPLOYEX_RELEASE_DIR", &format!("/tmp/{app}"))),
        },
        "s3" => StoreConfig::S3 {
            bucket: src.string(
                "DEPLOYEX_RELEASE_BUCKET",
                &format!("{app}-{cloud_env}-distribution"),
            ),
            region: src.opt("AWS_REGION"),
            endpoint: src.opt("AWS_ENDPOINT_URL"),
        },
        other => {
            return Err(src.invalid("DEPLOYEX_RELEASE_ADAPTER", other, "expected local or s3"));
        }
    };
    // -- web hardening: a production local store is never a default path
    // (the default, /tmp/{app}, is writable by anyone: a planted tarball
    // would run as the apps).
    if !local
        && matches!(store, StoreConfig::Local { .. })
        && src.opt("DEPLOYEX_RELEASE_DIR").is_none()
    {
        return Err(ConfigError(format!(
            "invalid configuration: DEPLOYEX_RELEASE_DIR must be set when DEPLOYEX_RELEASE_ADAPTER=local and DEPLOYEX_CLOUD_ENVIRONMENT={cloud_env}"
        )));
    }
    let secret_name = format!("deployex-{app}-{cloud_env}-secrets");
    let missing: Vec<&'static str> = FETCHED_SECRETS
        .iter()
        .copied()
        .filter(|var| src.opt(var).is_none())
        .collect();
    if !local
        && !missing.is_empty()
        && let Some(fetch) = fetch
    {
        let request = SecretsRequest {
            app: app.clone(),
            env: cloud_env.clone(),
            region: src.opt("AWS_REGION"),
            endpoint: src.opt("AWS_ENDPOINT_URL"),
            missing: missing.clone(),
        };
        let fetched = fetch(&request).map_err(|e| {
            ConfigError(format!(
                "cannot read {} from AWS Secrets Manager: {e}",
                missing.join(", ")
            ))
        })?;
        // Only the secrets asked for (and the optional ones not set): a
        // secret cannot override settings.
        let optional_unset: Vec<&str> = OPTIONAL_SECRETS
            .iter()
            .copied()
            .filter(|var| src.opt(var).is_none())
            .collect();
        src.fetched = fetched
            .into_iter()
            .filter(|(k, _)| missing.contains(&k.as_str()) || optional_unset.contains(&k.as_str()))
            .collect();
    }

    let replicas: u32 = src.number("DEPLOYEX_MONITORED_REPLICAS", 3, 1, 1000)?;
    let app_port_base: u16 = src.number("DEPLOYEX_MONITORED_APP_PORT", 4000, 1, 65535)?;
    let deploy_strategy = match src.opt("DEPLOYEX_DEPLOY_STRATEGY") {
        None => deployex_actors::DeployStrategy::StopFirst,
        Some(text) => deployex_actors::DeployStrategy::parse(&text).ok_or_else(|| {
            src.invalid(
                "DEPLOYEX_DEPLOY_STRATEGY",
                &text,
                "expected stop_first or start_first",
            )
        })?,
    };
    // start_first keeps one spare port past the replicas' own.
    let spare = u32::from(deploy_strategy == deployex_actors::DeployStrategy::StartFirst);
    if u32::from(app_port_base) + replicas - 1 + spare > 65535 {
        return Err(src.invalid(
            "DEPLOYEX_MONITORED_APP_PORT",
            &app_port_base.to_string(),
            &format!("base port + {replicas} replicas goes past 65535"),
        ));
    }
    let epmd_port: u16 = src.number("ERL_EPMD_PORT", 4369, 1, 65535)?;

    let var_default = if local {
        "/tmp/deployex/varlib".to_string()
    } else {
        "/var/lib/deployex".to_string()
    };
    let log_default = if local {
        format!("/tmp/{app}/{app}")
    } else {
        format!("/var/log/{app}")
    };

    let secret = |var: &str, local_default: Option<String>| -> Result<String, ConfigError> {
        match src.opt(var) {
            Some(v) => Ok(v),
            None if local => Ok(local_default.unwrap_or_default()),
            None => Err(ConfigError(format!(
                "missing {var}: required when DEPLOYEX_CLOUD_ENVIRONMENT={cloud_env} (set it in the environment or in the AWS Secrets Manager secret {secret_name})"
            ))),
        }
    };
    let secret_key_base = secret("DEPLOYEX_SECRET_KEY_BASE", Some(random_secret()))?;
    if secret_key_base.len() < 32 {
        return Err(ConfigError(
            "invalid configuration: DEPLOYEX_SECRET_KEY_BASE is too short: expected at least 32 characters".to_string(),
        ));
    }
    let cookie = secret("DEPLOYEX_ERLANG_COOKIE", Some("cookie".to_string()))?;
    if cookie.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError(
            "invalid configuration: DEPLOYEX_ERLANG_COOKIE contains white space or control characters".to_string(),
        ));
    }
    let admin_hashed_password = secret(
        "DEPLOYEX_ADMIN_HASHED_PASSWORD",
        Some(LOCAL_ADMIN_HASH.to_string()),
    )?;
    if !(admin_hashed_password.starts_with("$2b$")
        || admin_hashed_password.starts_with("$2a$")
        || admin_hashed_password.starts_with("$2y$"))
        || admin_hashed_password.len() != 60
    {
        return Err(ConfigError(
            "invalid configuration: DEPLOYEX_ADMIN_HASHED_PASSWORD is not a bcrypt hash ($2b$..., 60 characters); make one with `deployex hash-password`".to_string(),
        ));
    }
    // -- web hardening: a cheap hash falls to an offline guess in minutes.
    let cost = admin_hashed_password
        .get(4..6)
        .and_then(|c| c.parse::<u32>().ok())
        .unwrap_or(0);
    if cost < MIN_BCRYPT_COST {
        return Err(ConfigError(format!(
            "invalid configuration: DEPLOYEX_ADMIN_HASHED_PASSWORD has bcrypt cost {cost}: expected at least {MIN_BCRYPT_COST}; make one with `deployex hash-password`"
        )));
    }

    let bind_ip = src.string("DEPLOYEX_BIND_ADDR", "127.0.0.1");
    let bind_ip: IpAddr = bind_ip
        .parse()
        .map_err(|_| src.invalid("DEPLOYEX_BIND_ADDR", &bind_ip, "expected an IP address"))?;
    let phx_port: u16 = src.number("DEPLOYEX_PHX_PORT", 5001, 0, 65535)?;
    let health_path = src.opt("DEPLOYEX_HEALTH_PATH");
    if let Some(p) = &health_path
        && (!p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(src.invalid("DEPLOYEX_HEALTH_PATH", p, "expected a path starting with /"));
    }
    let tls_cert_path = src.opt("DEPLOYEX_OTP_TLS_CERT_PATH").map(PathBuf::from);
    if let Some(dir) = &tls_cert_path {
        for f in ["ca.crt", "deployex.crt", "deployex.key"] {
            if !dir.join(f).is_file() {
                return Err(src.invalid(
                    "DEPLOYEX_OTP_TLS_CERT_PATH",
                    &dir.display().to_string(),
                    &format!("{f} is missing in that folder"),
                ));
            }
        }
    }

    let mut engine = EngineConfig::with_defaults(&app, Path::new("/tmp"));
    engine.env = cloud_env.clone();
    engine.store = store;
    engine.replicas = replicas;
    engine.app_port_base = app_port_base;
    engine.var_dir = PathBuf::from(src.string("DEPLOYEX_VAR_DIR", &var_default));
    engine.log_dir = PathBuf::from(src.string("DEPLOYEX_LOG_DIR", &log_default));
    engine.schedule_interval =
        src.millis("DEPLOYEX_DEPLOY_SCHEDULE_INTERVAL_MS", 5000, 50, 86_400_000)?;
    engine.rollback_timeout = src.millis(
        "DEPLOYEX_DEPLOY_TIMEOUT_ROLLBACK_MS",
        600_000,
        100,
        86_400_000,
    )?;
    engine.rollback_crashes = src.number("DEPLOYEX_ROLLBACK_CRASHES", 5, 1, 1000)?;
    engine.cookie = cookie;
    engine.otp_readiness = src.boolean("DEPLOYEX_OTP_READINESS", true)?;
    engine.min_ready = src.millis("DEPLOYEX_MIN_READY_MS", 5000, 0, 3_600_000)?;
    engine.health_path = health_path;
    engine.stop_apps_on_exit = src.boolean("DEPLOYEX_STOP_APPS_ON_EXIT", true)?;
    engine.stop_grace = src.millis("DEPLOYEX_STOP_TIMEOUT_MS", 10_000, 100, 600_000)?;
    engine.backoff_base = src.millis("DEPLOYEX_BACKOFF_BASE_MS", 1000, 1, 3_600_000)?;
    engine.backoff_max = src.millis("DEPLOYEX_BACKOFF_MAX_MS", 60_000, 1, 86_400_000)?;
    engine.backoff_reset_after = src.millis("DEPLOYEX_BACKOFF_RESET_MS", 60_000, 1, 86_400_000)?;
    engine.pre_command_timeout =
        src.millis("DEPLOYEX_PRE_COMMAND_TIMEOUT_MS", 300_000, 100, 86_400_000)?;
    engine.start_command = src.opt("DEPLOYEX_START_COMMAND");
    engine.app_user = match src.opt("DEPLOYEX_APP_USER") {
        None => None,
        Some(name) => {
            let user = deployex_actors::app_user::AppUser::lookup(name.trim())
                .map_err(|e| src.invalid("DEPLOYEX_APP_USER", &name, &e.to_string()))?;
            // deployex's own user: nothing to switch.
            user.is_other().then_some(user)
        }
    };
    engine.deploy_strategy = deploy_strategy;
    engine.epmd_port = epmd_port;
    engine.hostname = short_hostname();
    engine.tls_cert_path = tls_cert_path;
    engine.beam_sample_interval = src.millis("DEPLOYEX_BEAM_SAMPLE_MS", 5000, 0, 3_600_000)?;
    let sample_ms = engine.beam_sample_interval.as_millis();
    if (1..100).contains(&sample_ms) {
        // Sampling faster than this costs the nodes more than it tells.
        return Err(src.invalid(
            "DEPLOYEX_BEAM_SAMPLE_MS",
            &sample_ms.to_string(),
            "expected 0 (off) or a whole number from 100 to 3600000",
        ));
    }
    engine.log_max_bytes =
        src.number("DEPLOYEX_LOG_MAX_BYTES", 100 * 1024 * 1024, 4096, u64::MAX)?;
    engine.log_keep = src.number("DEPLOYEX_LOG_KEEP", 5, 0, 1000)?;
    engine.liveness_interval = src.millis("DEPLOYEX_LIVENESS_INTERVAL_MS", 5000, 0, 3_600_000)?;
    if (1..100).contains(&engine.liveness_interval.as_millis()) {
        return Err(src.invalid(
            "DEPLOYEX_LIVENESS_INTERVAL_MS",
            &engine.liveness_interval.as_millis().to_string(),
            "expected 0 (off) or a whole number from 100 to 3600000",
        ));
    }
    engine.liveness_failures = src.number("DEPLOYEX_LIVENESS_FAILURES", 3, 1, 1000)?;
    engine.watchdog = deployex_actors::WatchdogConfig {
        memory_bytes: match src.opt("DEPLOYEX_WATCHDOG_MEMORY_MB") {
            None => None,
            Some(_) => {
                Some(src.number::<u64>("DEPLOYEX_WATCHDOG_MEMORY_MB", 0, 1, 1 << 30)? * 1024 * 1024)
            }
        },
        atoms_pct: src.number("DEPLOYEX_WATCHDOG_ATOMS_PCT", 90, 1, 100)?,
        processes_pct: src.number("DEPLOYEX_WATCHDOG_PROCESSES_PCT", 90, 1, 100)?,
        ports_pct: src.number("DEPLOYEX_WATCHDOG_PORTS_PCT", 90, 1, 100)?,
        action: match src.opt("DEPLOYEX_WATCHDOG_ACTION").as_deref() {
            None => None,
            Some("warn") => Some(deployex_actors::WatchdogAction::Warn),
            Some("restart") => Some(deployex_actors::WatchdogAction::Restart),
            Some(other) => {
                return Err(src.invalid(
                    "DEPLOYEX_WATCHDOG_ACTION",
                    other,
                    "expected warn or restart",
                ));
            }
        },
    };
    engine.webhook = match src.opt("DEPLOYEX_WEBHOOK_URL") {
        None => None,
        Some(url) => {
            if !deployex_actors::events::valid_webhook_url(&url) {
                return Err(src.invalid(
                    "DEPLOYEX_WEBHOOK_URL",
                    &url,
                    "expected an http:// or https:// URL",
                ));
            }
            Some(deployex_actors::WebhookConfig {
                url,
                secret: src.opt("DEPLOYEX_WEBHOOK_SECRET"),
            })
        }
    };
    engine.fleet = fleet_config(&src, &engine.hostname)?;
    // -- web hardening: no secret of deployex reaches an app, a pre-command
    // or a terminal (every name in SECRETS, present and future).
    engine.base_env = env
        .into_iter()
        .filter(|(k, _)| !SECRETS.contains(&k.as_str()))
        .collect();
    engine.base_env.sort();

    // -- web hardening --
    let trusted_proxies = match src.opt("DEPLOYEX_TRUSTED_PROXIES") {
        None => Vec::new(),
        Some(v) => v
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| {
                c.parse::<ipnet::IpNet>()
                    .or_else(|_| c.parse::<IpAddr>().map(ipnet::IpNet::from))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                src.invalid(
                    "DEPLOYEX_TRUSTED_PROXIES",
                    &v,
                    "expected comma-separated CIDRs (10.0.0.0/8, ::1/128) or addresses",
                )
            })?,
    };
    let phx_host = src.string("DEPLOYEX_PHX_HOST", "localhost");
    let public_url = src.opt("DEPLOYEX_PUBLIC_URL");
    let public_origins =
        deployex_web::auth::public_origins(public_url.as_deref(), &phx_host, phx_port).map_err(
            |e| {
                src.invalid(
                    "DEPLOYEX_PUBLIC_URL",
                    public_url.as_deref().unwrap_or(""),
                    &e,
                )
            },
        )?;
    let secure_cookie = match src.opt("DEPLOYEX_SECURE_COOKIE") {
        None => public_origins.iter().any(|o| o.starts_with("https://")),
        Some(_) => src.boolean("DEPLOYEX_SECURE_COOKIE", false)?,
    };
    let max_connections: usize = src.number("DEPLOYEX_MAX_CONNECTIONS", 512, 8, 1_000_000)?;

    let mut effective = BTreeMap::new();
    for (var, _) in VARIABLES {
        let value = if SECRETS.contains(var) {
            if src.fetched.contains_key(*var) {
                "<redacted, from AWS Secrets Manager>".to_string()
            } else if src.opt(var).is_some() {
                "<redacted>".to_string()
            } else {
                "<default>".to_string()
            }
        } else {
            src.opt(var).unwrap_or_else(|| "<default>".to_string())
        };
        effective.insert((*var).to_string(), value);
    }

    Ok(Config {
        web_enabled: src.boolean("DEPLOYEX_PHX_SERVER", true)?,
        bind: SocketAddr::new(bind_ip, phx_port),
        host: phx_host,
        secret_key_base,
        admin_hashed_password,
        secure_cookie,
        session_ttl: Duration::from_secs(src.number(
            "DEPLOYEX_SESSION_TTL_S",
            43_200,
            60,
            31_536_000,
        )?),
        metrics_token: src.opt("DEPLOYEX_METRICS_TOKEN"),
        terminal_idle: src.millis("DEPLOYEX_TERMINAL_IDLE_MS", 300_000, 1000, 86_400_000)?,
        engine,
        effective,
        trusted_proxies,
        public_origins,
        max_connections,
    })
}

/// `DEPLOYEX_FLEET` and its settings; `None` when fleet mode is off.
fn fleet_config(
    src: &Source,
    hostname: &str,
) -> Result<Option<deployex_actors::fleet::FleetConfig>, ConfigError> {
    if !src.boolean("DEPLOYEX_FLEET", false)? {
        return Ok(None);
    }
    let host_id = src.string("DEPLOYEX_HOST_ID", hostname);
    if host_id.starts_with('.')
        || host_id.len() > 128
        || !host_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(src.invalid(
            "DEPLOYEX_HOST_ID",
            &host_id,
            "expected letters, digits, . _ and -, not starting with .",
        ));
    }
    let lease = src.millis("DEPLOYEX_FLEET_LEASE_MS", 900_000, 1000, 86_400_000)?;
    let heartbeat = src.millis("DEPLOYEX_FLEET_HEARTBEAT_MS", 5000, 50, 60_000)?;
    if lease < heartbeat * 4 {
        return Err(src.invalid(
            "DEPLOYEX_FLEET_LEASE_MS",
            &lease.as_millis().to_string(),
            "expected at least 4 heartbeats (DEPLOYEX_FLEET_HEARTBEAT_MS): a slot is renewed once per heartbeat",
        ));
    }
    Ok(Some(deployex_actors::fleet::FleetConfig {
        host_id,
        max_parallel: src.number("DEPLOYEX_FLEET_MAX_PARALLEL", 1, 1, 1000)?,
        lease,
        heartbeat,
    }))
}

fn random_secret() -> String {
    let bytes: [u8; 48] = rand::random();
    hex::encode(bytes)
}

impl Config {
    /// With `DEPLOYEX_APP_USER`, deployex must be able to switch to that
    /// user (root, or the capabilities of `AppUser::check_privileges`).
    /// Checked at start (not by `check-config`, which the installer runs
    /// as root).
    pub fn check_app_user(&self) -> Result<(), ConfigError> {
        match &self.engine.app_user {
            None => Ok(()),
            Some(user) => user.check_privileges().map_err(|e| {
                ConfigError(format!(
                    "invalid configuration: DEPLOYEX_APP_USER={:?}: {e}",
                    user.name
                ))
            }),
        }
    }

    /// Outside `local`, a local release store must be a folder owned by
    /// deployex's user and not writable by group or others: whoever can
    /// write it chooses the code the apps run. Checked at start (not by
    /// `check-config`, which the installer runs as root).
    pub fn check_local_store(&self) -> Result<(), ConfigError> {
        use std::os::unix::fs::MetadataExt;
        let StoreConfig::Local { root } = &self.engine.store else {
            return Ok(());
        };
        if self.engine.env == "local" {
            return Ok(());
        }
        let bad = |why: String| {
            ConfigError(format!(
                "invalid configuration: DEPLOYEX_RELEASE_DIR={}: {why}",
                root.display()
            ))
        };
        let meta = std::fs::metadata(root).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let me = nix::unistd::geteuid().as_raw();
        if !meta.is_dir() {
            return Err(bad("not a folder".into()));
        }
        if meta.uid() != me {
            return Err(bad(format!(
                "owned by uid {}, expected deployex's uid {me}",
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(bad(format!(
                "mode {:o} is writable by group or others, expected at most 755",
                meta.mode() & 0o7777
            )));
        }
        Ok(())
    }

    /// The effective configuration as text, secrets redacted.
    pub fn describe(&self) -> String {
        let e = &self.engine;
        let mut out = String::new();
        let store = match &e.store {
            StoreConfig::Local { root } => format!("local {}", root.display()),
            StoreConfig::S3 {
                bucket,
                region,
                endpoint,
            } => format!(
                "s3 bucket={bucket} region={} endpoint={}",
                region.as_deref().unwrap_or("-"),
                endpoint.as_deref().unwrap_or("-")
            ),
        };
        let lines = [
            ("app", e.app.clone()),
            ("environment", e.env.clone()),
            ("release store", store),
            ("replicas", e.replicas.to_string()),
            ("deploy strategy", e.deploy_strategy.as_str().to_string()),
            (
                "ports",
                format!("{}..={}", e.port_pool().start(), e.port_pool().end()),
            ),
            (
                "nodes",
                format!("{} .. {}", e.node_name(1), e.node_name(e.replicas)),
            ),
            ("var dir", e.var_dir.display().to_string()),
            ("log dir", e.log_dir.display().to_string()),
            ("schedule interval", format!("{:?}", e.schedule_interval)),
            ("rollback timeout", format!("{:?}", e.rollback_timeout)),
            ("rollback crashes", e.rollback_crashes.to_string()),
            ("min ready", format!("{:?}", e.min_ready)),
            ("otp readiness", e.otp_readiness.to_string()),
            (
                "health path",
                e.health_path.clone().unwrap_or_else(|| "-".into()),
            ),
            ("epmd port", e.epmd_port.to_string()),
            (
                "mTLS certs",
                e.tls_cert_path
                    .as_ref()
                    .map_or("-".into(), |p| p.display().to_string()),
            ),
            ("stop apps on exit", e.stop_apps_on_exit.to_string()),
            (
                "app user",
                e.app_user
                    .as_ref()
                    .map_or("- (deployex's own)".into(), |u| {
                        format!("{} (uid {}, gid {})", u.name, u.uid, u.gid)
                    }),
            ),
            (
                "beam sampling",
                if e.beam_sample_interval.is_zero() {
                    "off".into()
                } else {
                    format!("every {:?}", e.beam_sample_interval)
                },
            ),
            (
                "dashboard",
                if self.web_enabled {
                    format!("http://{} (host {})", self.bind, self.host)
                } else {
                    "off".into()
                },
            ),
            ("secrets", "<redacted>".to_string()),
        ];
        for (k, v) in lines {
            out.push_str(&format!("{k:>18}: {v}\n"));
        }
        out.push_str("\nvariables:\n");
        for (k, v) in &self.effective {
            out.push_str(&format!("  {k}={v}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_for_local() {
        let c = load(env(&[]), None).unwrap();
        assert_eq!(c.engine.app, "myphoenixapp");
        assert_eq!(c.engine.replicas, 3);
        assert_eq!(c.engine.port(3), 4002);
        assert_eq!(c.bind.port(), 5001);
        assert_eq!(c.engine.var_dir, PathBuf::from("/tmp/deployex/varlib"));
        assert_eq!(
            c.engine.log_dir,
            PathBuf::from("/tmp/myphoenixapp/myphoenixapp")
        );
        assert_eq!(
            c.engine.store,
            StoreConfig::Local {
                root: PathBuf::from("/tmp/myphoenixapp")
            }
        );
        assert!(bcrypt::verify("deployex", &c.admin_hashed_password).unwrap());
        assert_eq!(c.engine.beam_sample_interval, Duration::from_millis(5000));
    }

    #[test]
    fn app_user_must_exist() {
        let err = load(env(&[("DEPLOYEX_APP_USER", "no-such-user-dx")]), None).unwrap_err();
        assert!(
            err.0
                .contains("DEPLOYEX_APP_USER=\"no-such-user-dx\": no such user"),
            "{err}"
        );
        let c = load(env(&[("DEPLOYEX_APP_USER", "nobody")]), None).unwrap();
        if nix::unistd::Uid::effective().as_raw() == 65534 {
            assert_eq!(c.engine.app_user, None, "deployex's own user: no switch");
        } else {
            let user = c.engine.app_user.clone().unwrap();
            assert_eq!((user.name.as_str(), user.uid), ("nobody", 65534));
            assert!(c.describe().contains("app user: nobody (uid 65534"));
        }
        let c = load(env(&[]), None).unwrap();
        assert_eq!(c.engine.app_user, None);
    }

    #[test]
    fn beam_sampling_period_is_off_or_at_least_100_ms() {
        let c = load(env(&[("DEPLOYEX_BEAM_SAMPLE_MS", "0")]), None).unwrap();
        assert!(c.engine.beam_sample_interval.is_zero());
        assert!(
            c.describe().contains("beam sampling: off"),
            "{}",
            c.describe()
        );
        let c = load(env(&[("DEPLOYEX_BEAM_SAMPLE_MS", "300")]), None).unwrap();
        assert_eq!(c.engine.beam_sample_interval, Duration::from_millis(300));
        let e = load(env(&[("DEPLOYEX_BEAM_SAMPLE_MS", "50")]), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid configuration: DEPLOYEX_BEAM_SAMPLE_MS=\"50\": expected 0 (off) or a whole number from 100 to 3600000"
        );
        let e = load(env(&[("DEPLOYEX_BEAM_SAMPLE_MS", "-1")]), None).unwrap_err();
        assert!(e.to_string().contains("DEPLOYEX_BEAM_SAMPLE_MS"), "{e}");
    }

    #[test]
    fn invalid_values_name_the_variable_and_value() {
        let e = load(env(&[("DEPLOYEX_MONITORED_REPLICAS", "many")]), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid configuration: DEPLOYEX_MONITORED_REPLICAS=\"many\": expected a whole number from 1 to 1000"
        );
        let e = load(env(&[("DEPLOYEX_OTP_READINESS", "maybe")]), None).unwrap_err();
        assert!(
            e.to_string().contains("DEPLOYEX_OTP_READINESS=\"maybe\""),
            "{e}"
        );
        let e = load(
            env(&[
                ("DEPLOYEX_MONITORED_APP_PORT", "65535"),
                ("DEPLOYEX_MONITORED_REPLICAS", "2"),
            ]),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("past 65535"), "{e}");
    }

    #[test]
    fn production_requires_secrets() {
        let e = load(
            env(&[
                ("DEPLOYEX_CLOUD_ENVIRONMENT", "prod"),
                ("DEPLOYEX_RELEASE_ADAPTER", "local"),
                ("DEPLOYEX_RELEASE_DIR", "/srv/deployex/store"),
            ]),
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("missing DEPLOYEX_SECRET_KEY_BASE"),
            "{e}"
        );
    }

    fn prod_secrets() -> HashMap<String, String> {
        [
            ("DEPLOYEX_SECRET_KEY_BASE", "f".repeat(64)),
            ("DEPLOYEX_ERLANG_COOKIE", "fetchedcookie".to_string()),
            (
                "DEPLOYEX_ADMIN_HASHED_PASSWORD",
                LOCAL_ADMIN_HASH.to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    #[test]
    fn s3_and_secrets_outside_local() {
        let mut asked = None;
        let c = load_with_secrets(
            env(&[
                ("DEPLOYEX_CLOUD_ENVIRONMENT", "prod"),
                ("DEPLOYEX_MONITORED_APP_NAME", "shop"),
                ("DEPLOYEX_ERLANG_COOKIE", "envcookie"),
                ("DEPLOYEX_ADMIN_HASHED_PASSWORD", ""),
                ("AWS_REGION", "eu-west-1"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ]),
            None,
            |req| {
                asked = Some(req.clone());
                let mut s = prod_secrets();
                s.insert("DEPLOYEX_METRICS_TOKEN".into(), "fetched-metrics".into());
                s.insert("DEPLOYEX_PHX_PORT".into(), "1".into());
                Ok(s)
            },
        )
        .unwrap();
        // The optional secret is taken; a setting in the secret is not.
        assert_eq!(c.metrics_token.as_deref(), Some("fetched-metrics"));
        assert_ne!(c.bind.port(), 1);
        let req = asked.unwrap();
        assert_eq!(
            req,
            SecretsRequest {
                app: "shop".into(),
                env: "prod".into(),
                region: Some("eu-west-1".into()),
                endpoint: Some("http://127.0.0.1:9".into()),
                missing: vec!["DEPLOYEX_SECRET_KEY_BASE", "DEPLOYEX_ADMIN_HASHED_PASSWORD"],
            }
        );
        // The environment wins over the secret.
        assert_eq!(c.engine.cookie, "envcookie");
        assert_eq!(c.secret_key_base, "f".repeat(64));
        assert_eq!(
            c.engine.store,
            StoreConfig::S3 {
                bucket: "shop-prod-distribution".into(),
                region: Some("eu-west-1".into()),
                endpoint: Some("http://127.0.0.1:9".into()),
            }
        );
        // Fetched secrets stay out of the instances' environment and the text.
        assert!(
            !c.engine
                .base_env
                .iter()
                .any(|(k, _)| k == "DEPLOYEX_SECRET_KEY_BASE")
        );
        let text = c.describe();
        assert!(!text.contains(&"f".repeat(64)), "{text}");
        assert!(
            text.contains("DEPLOYEX_SECRET_KEY_BASE=<redacted, from AWS Secrets Manager>"),
            "{text}"
        );
        assert!(
            text.contains("DEPLOYEX_ERLANG_COOKIE=<redacted>\n"),
            "{text}"
        );
    }

    #[test]
    fn secrets_fetch_failures_are_fatal_and_named() {
        let prod = env(&[("DEPLOYEX_CLOUD_ENVIRONMENT", "prod")]);
        let e = load_with_secrets(prod.clone(), None, |_| {
            Err("AWS Secrets Manager has no secret deployex-myphoenixapp-prod-secrets".into())
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("cannot read DEPLOYEX_SECRET_KEY_BASE, DEPLOYEX_ERLANG_COOKIE, DEPLOYEX_ADMIN_HASHED_PASSWORD from AWS Secrets Manager: "),
            "{e}"
        );
        assert!(e.contains("deployex-myphoenixapp-prod-secrets"), "{e}");
        // A fetcher that comes back without one of them: named, no default.
        let e = load_with_secrets(prod, None, |_| {
            let mut s = prod_secrets();
            s.remove("DEPLOYEX_ERLANG_COOKIE");
            Ok(s)
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("missing DEPLOYEX_ERLANG_COOKIE"), "{e}");
        assert!(e.contains("deployex-myphoenixapp-prod-secrets"), "{e}");
    }

    #[test]
    fn no_fetch_in_local_or_when_everything_is_set() {
        let never = |_: &SecretsRequest| -> Result<HashMap<String, String>, String> {
            panic!("fetcher must not be called")
        };
        load_with_secrets(env(&[]), None, never).unwrap();
        let mut all: Vec<(String, String)> = prod_secrets().into_iter().collect();
        all.push(("DEPLOYEX_CLOUD_ENVIRONMENT".into(), "prod".into()));
        let c = load_with_secrets(all, None, never).unwrap();
        assert_eq!(c.engine.cookie, "fetchedcookie");
    }

    #[test]
    fn file_values_are_overridden_by_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "monitored_replicas = 5\nmonitored_app_name = \"shop\"\n",
        )
        .unwrap();
        let c = load(env(&[("DEPLOYEX_MONITORED_REPLICAS", "2")]), Some(&f)).unwrap();
        assert_eq!(c.engine.replicas, 2);
        assert_eq!(c.engine.app, "shop");
        std::fs::write(&f, "monitored_replica = 5\n").unwrap();
        let e = load(env(&[]), Some(&f)).unwrap_err();
        assert!(
            e.to_string().contains("unknown key \"monitored_replica\""),
            "{e}"
        );
        std::fs::write(&f, "monitored_replicas = \"x\"\n").unwrap();
        let e = load(env(&[]), Some(&f)).unwrap_err();
        assert!(e.to_string().contains("monitored_replicas in"), "{e}");
    }

    #[test]
    fn describe_redacts_secrets() {
        let c = load(
            env(&[
                ("DEPLOYEX_ERLANG_COOKIE", "supersecretcookie"),
                ("DEPLOYEX_SECRET_KEY_BASE", "k".repeat(64).as_str()),
            ]),
            None,
        )
        .unwrap();
        let text = c.describe();
        assert!(!text.contains("supersecretcookie"));
        assert!(!text.contains(&"k".repeat(64)));
        assert!(text.contains("DEPLOYEX_ERLANG_COOKIE=<redacted>"));
    }

    // -- web hardening --
    #[test]
    fn public_origin_secure_cookie_and_proxies() {
        let c = load(env(&[]), None).unwrap();
        assert_eq!(
            c.public_origins,
            vec!["http://localhost:5001", "http://127.0.0.1:5001"]
        );
        assert!(!c.secure_cookie);
        let c = load(env(&[("DEPLOYEX_PHX_HOST", "deploy.example.com")]), None).unwrap();
        assert_eq!(c.public_origins, vec!["https://deploy.example.com"]);
        assert!(c.secure_cookie, "https origin: Secure by default");
        let c = load(
            env(&[
                ("DEPLOYEX_PHX_HOST", "deploy.example.com"),
                ("DEPLOYEX_SECURE_COOKIE", "false"),
            ]),
            None,
        )
        .unwrap();
        assert!(!c.secure_cookie, "false forces it off");
        let c = load(
            env(&[("DEPLOYEX_PUBLIC_URL", "http://10.0.0.5:8080/")]),
            None,
        )
        .unwrap();
        assert_eq!(c.public_origins, vec!["http://10.0.0.5:8080"]);
        let e = load(env(&[("DEPLOYEX_PUBLIC_URL", "deploy.example.com")]), None).unwrap_err();
        assert!(e.0.contains("DEPLOYEX_PUBLIC_URL"), "{e}");
        let c = load(
            env(&[("DEPLOYEX_TRUSTED_PROXIES", "127.0.0.1/32, ::1, 10.0.0.0/8")]),
            None,
        )
        .unwrap();
        assert_eq!(c.trusted_proxies.len(), 3);
        let e = load(env(&[("DEPLOYEX_TRUSTED_PROXIES", "10.0.0.0/33")]), None).unwrap_err();
        assert!(e.0.contains("DEPLOYEX_TRUSTED_PROXIES"), "{e}");
        assert_eq!(c.max_connections, 512);
    }

    #[test]
    fn a_cheap_admin_hash_is_refused() {
        let cheap = bcrypt::hash("pw", 4).unwrap();
        let e = load(
            env(&[("DEPLOYEX_ADMIN_HASHED_PASSWORD", cheap.as_str())]),
            None,
        )
        .unwrap_err();
        assert!(e.0.contains("DEPLOYEX_ADMIN_HASHED_PASSWORD"), "{e}");
        assert!(e.0.contains("cost 4"), "{e}");
        assert!(!e.0.contains(&cheap), "the hash is not echoed");
        assert!(!e.0.contains('\n'));
    }

    #[test]
    fn no_secret_reaches_the_apps_environment() {
        let c = load(
            env(&[
                ("DEPLOYEX_METRICS_TOKEN", "metrics-secret"),
                ("DEPLOYEX_SECRET_KEY_BASE", "k".repeat(64).as_str()),
                ("DEPLOYEX_ERLANG_COOKIE", "cookie-secret"),
                ("DEPLOYEX_ADMIN_HASHED_PASSWORD", LOCAL_ADMIN_HASH),
                ("PATH", "/usr/bin"),
            ]),
            None,
        )
        .unwrap();
        for secret in SECRETS {
            assert!(
                !c.engine.base_env.iter().any(|(k, _)| k == secret),
                "{secret} in the apps' environment"
            );
        }
        assert!(c.engine.base_env.iter().any(|(k, _)| k == "PATH"));
    }

    #[test]
    fn a_production_local_store_is_explicit_owned_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let prod = |extra: &[(&str, &str)]| {
            let mut e = prod_secrets();
            e.insert("DEPLOYEX_CLOUD_ENVIRONMENT".into(), "prod".into());
            e.insert("DEPLOYEX_RELEASE_ADAPTER".into(), "local".into());
            for (k, v) in extra {
                e.insert((*k).into(), (*v).into());
            }
            load(e, None)
        };
        let e = prod(&[]).unwrap_err();
        assert!(e.0.contains("DEPLOYEX_RELEASE_DIR must be set"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let root = store.to_str().unwrap();
        let c = prod(&[("DEPLOYEX_RELEASE_DIR", root)]).unwrap();
        let e = c.check_local_store().unwrap_err();
        assert!(e.0.contains("cannot read"), "{e}");
        std::fs::create_dir(&store).unwrap();
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = c.check_local_store().unwrap_err();
        assert!(e.0.contains("writable by group or others"), "{e}");
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(c.check_local_store().is_ok());
        // In local, anything goes (the dev default is /tmp/{app}).
        assert!(load(env(&[]), None).unwrap().check_local_store().is_ok());
    }

    #[test]
    fn fleet_mode_settings() {
        assert_eq!(load(env(&[]), None).unwrap().engine.fleet, None);
        let c = load(env(&[("DEPLOYEX_FLEET", "true")]), None).unwrap();
        let f = c.engine.fleet.unwrap();
        assert_eq!(f.host_id, c.engine.hostname, "the host name by default");
        assert_eq!(f.max_parallel, 1);
        assert_eq!(f.lease, Duration::from_secs(900));
        assert_eq!(f.heartbeat, Duration::from_secs(5));
        let c = load(
            env(&[
                ("DEPLOYEX_FLEET", "true"),
                ("DEPLOYEX_HOST_ID", "web-2"),
                ("DEPLOYEX_FLEET_MAX_PARALLEL", "3"),
                ("DEPLOYEX_FLEET_LEASE_MS", "60000"),
            ]),
            None,
        )
        .unwrap();
        let f = c.engine.fleet.unwrap();
        assert_eq!((f.host_id.as_str(), f.max_parallel), ("web-2", 3));
        let bad = |pairs: &[(&str, &str)]| {
            let mut all = vec![("DEPLOYEX_FLEET", "true")];
            all.extend_from_slice(pairs);
            load(env(&all), None).unwrap_err().to_string()
        };
        assert!(bad(&[("DEPLOYEX_HOST_ID", "../x")]).contains("DEPLOYEX_HOST_ID"));
        assert!(bad(&[("DEPLOYEX_HOST_ID", "a/b")]).contains("DEPLOYEX_HOST_ID"));
        assert!(bad(&[("DEPLOYEX_FLEET_MAX_PARALLEL", "0")]).contains("MAX_PARALLEL"));
        let e = bad(&[("DEPLOYEX_FLEET_LEASE_MS", "2000")]);
        assert!(e.contains("at least 4 heartbeats"), "{e}");
    }
}
