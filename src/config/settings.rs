//! The table of settings: the one place that says which variables
//! deployex reads, with their default as shown to users, their range or
//! allowed values, a one-line doc, whether they are secrets, and their
//! scope. Everything else is produced from it or checked against it:
//!
//! - the TOML file accepts exactly these keys ([`Setting::key`]);
//! - `check-config` lists them in this order, secrets redacted;
//! - the typed readers in `source` check (in tests) that every variable
//!   they read is here and that the default and range they are given
//!   equal this table's;
//! - a unit test (`config::doc_tests`) fails when the README's
//!   configuration table or `config/deployex.example.toml` misses a
//!   setting, shows one that no longer exists, or shows another default.
//!
//! Invariants: names are unique; the TOML key is derived, never written;
//! [`Scope::App`] marks the settings each application will have its own
//! value of (several apps per VM), [`Scope::Host`] the rest.

/// Whose setting it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// One value per monitored application.
    App,
    /// One value for deployex on this host.
    Host,
}

impl Scope {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scope::App => "app",
            Scope::Host => "host",
        }
    }
}

/// The values a setting accepts (beyond "unset").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Range {
    /// Free text (checked by its reader where it has a shape).
    Text,
    /// A whole number in `min..=max`.
    Int { min: u64, max: u64 },
    /// `true`/`false` (also 1/0, yes/no, on/off).
    Bool,
    /// Exactly one of these words.
    OneOf(&'static [&'static str]),
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Range::Text => f.write_str("text"),
            Range::Int { min, max } => write!(f, "{min}..={max}"),
            Range::Bool => f.write_str("true|false"),
            Range::OneOf(words) => f.write_str(&words.join("|")),
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setting {
    /// The environment variable.
    pub name: &'static str,
    /// The default as users see it (README, example file): a literal
    /// value, `{app}`/`{env}` templates, or words (`unset`, `automatic`).
    pub default: &'static str,
    pub range: Range,
    pub doc: &'static str,
    /// Never shown, never passed to an app, a pre-command or a terminal.
    pub secret: bool,
    pub scope: Scope,
}

impl Setting {
    /// The TOML key: `DEPLOYEX_MONITORED_REPLICAS` → `monitored_replicas`.
    pub(crate) fn key(&self) -> String {
        file_key(self.name)
    }
}

/// `DEPLOYEX_MONITORED_REPLICAS` → `monitored_replicas`.
pub(crate) fn file_key(var: &str) -> String {
    var.strip_prefix("DEPLOYEX_")
        .unwrap_or(var)
        .to_ascii_lowercase()
}

const fn row(
    name: &'static str,
    default: &'static str,
    range: Range,
    scope: Scope,
    doc: &'static str,
) -> Setting {
    Setting {
        name,
        default,
        range,
        doc,
        secret: false,
        scope,
    }
}

const fn secret(name: &'static str, default: &'static str, doc: &'static str) -> Setting {
    Setting {
        name,
        default,
        range: Range::Text,
        doc,
        secret: true,
        scope: Scope::Host,
    }
}

const fn int(min: u64, max: u64) -> Range {
    Range::Int { min, max }
}

/// Milliseconds up to a day.
const DAY_MS: u64 = 86_400_000;
const HOUR_MS: u64 = 3_600_000;

use Range::{Bool, OneOf, Text};
use Scope::{App, Host};

/// Every setting deployex reads, in documentation order.
#[rustfmt::skip]
pub(crate) const SETTINGS: &[Setting] = &[
    row("DEPLOYEX_MONITORED_APP_NAME", "myphoenixapp", Text, App, "release name {app}"),
    row("DEPLOYEX_CLOUD_ENVIRONMENT", "local", Text, Host, "{env} in store paths; `local` = dev defaults"),
    row("DEPLOYEX_RELEASE_ADAPTER", "local", OneOf(&["local", "s3"]), App, "release store (s3 when env is not local)"),
    row("DEPLOYEX_RELEASE_BUCKET", "{app}-{env}-distribution", Text, App, "S3 bucket"),
    row("DEPLOYEX_RELEASE_DIR", "/tmp/{app}", Text, App, "root of the local store"),
    row("AWS_REGION", "unset", Text, Host, "S3 / Secrets Manager region"),
    row("AWS_ENDPOINT_URL", "unset", Text, Host, "S3 and Secrets Manager endpoint override (e.g. a local moto_server)"),
    row("DEPLOYEX_MONITORED_REPLICAS", "3", int(1, 1000), App, "number of instances"),
    row("DEPLOYEX_MONITORED_APP_PORT", "4000", int(1, 65535), App, "PORT of instance 1; instance i gets base+i-1"),
    row("DEPLOYEX_DEPLOY_STRATEGY", "stop_first", OneOf(&["stop_first", "start_first"]), App, "stop the old instance first, or start the new one on the spare port first"),
    row("DEPLOYEX_DEPLOY_TIMEOUT_ROLLBACK_MS", "600000", int(100, DAY_MS), App, "rollback an instance not ready within"),
    row("DEPLOYEX_DEPLOY_SCHEDULE_INTERVAL_MS", "5000", int(50, DAY_MS), Host, "store polling interval"),
    row("DEPLOYEX_ROLLBACK_CRASHES", "5", int(1, 1000), App, "crashes after a deploy that trigger a rollback at once"),
    row("DEPLOYEX_MIN_READY_MS", "5000", int(0, HOUR_MS), App, "an instance is ready after staying up this long"),
    row("DEPLOYEX_OTP_READINESS", "true", Bool, App, "readiness needs the node over distribution"),
    row("DEPLOYEX_HEALTH_PATH", "unset", Text, App, "HTTP path that must answer 2xx for readiness"),
    row("DEPLOYEX_PHX_HOST", "localhost", Text, Host, "dashboard host name"),
    row("DEPLOYEX_PHX_PORT", "5001", int(0, 65535), Host, "dashboard port"),
    row("DEPLOYEX_PHX_SERVER", "true", Bool, Host, "dashboard on/off"),
    row("DEPLOYEX_BIND_ADDR", "127.0.0.1", Text, Host, "dashboard listen address"),
    secret("DEPLOYEX_SECRET_KEY_BASE", "random per start (local)", "signs session tokens"),
    secret("DEPLOYEX_ERLANG_COOKIE", "cookie (local)", "distribution cookie"),
    secret("DEPLOYEX_ADMIN_HASHED_PASSWORD", "bcrypt of deployex (local)", "bcrypt hash of the admin password"),
    row("DEPLOYEX_OTP_TLS_CERT_PATH", "unset", Text, Host, "folder with ca.crt, deployex.crt, deployex.key: mTLS"),
    row("DEPLOYEX_VAR_DIR", "/tmp/deployex/varlib", Text, Host, "service folders and state (prod /var/lib/deployex)"),
    row("DEPLOYEX_LOG_DIR", "/tmp/{app}/{app}", Text, Host, "instance logs (prod /var/log/{app})"),
    row("DEPLOYEX_STOP_APPS_ON_EXIT", "true", Bool, Host, "stop the instances when deployex stops"),
    row("DEPLOYEX_APP_USER", "unset", Text, Host, "user the instances, pre-commands and terminals run as"),
    row("ERL_EPMD_PORT", "4369", int(1, 65535), Host, "EPMD port"),
    row("DEPLOYEX_STOP_TIMEOUT_MS", "10000", int(100, 600_000), Host, "SIGTERM to SIGKILL grace when stopping an instance"),
    row("DEPLOYEX_BACKOFF_BASE_MS", "1000", int(1, HOUR_MS), Host, "first crash-restart delay after the immediate one"),
    row("DEPLOYEX_BACKOFF_MAX_MS", "60000", int(1, DAY_MS), Host, "crash-restart delay cap"),
    row("DEPLOYEX_BACKOFF_RESET_MS", "60000", int(1, DAY_MS), Host, "ready this long resets the crash backoff"),
    row("DEPLOYEX_START_COMMAND", "start (mix), foreground (relx)", Text, Host, "bin/{app} arguments that start an instance"),
    row("DEPLOYEX_PRE_COMMAND_TIMEOUT_MS", "300000", int(100, DAY_MS), Host, "a pre-command running longer is killed"),
    row("DEPLOYEX_LOG_MAX_BYTES", "104857600", int(4096, u64::MAX), Host, "rotate an instance log file above this size"),
    row("DEPLOYEX_LOG_KEEP", "5", int(0, 1000), Host, "rotated log files kept"),
    // Fleet mode: see README "Running a fleet".
    row("DEPLOYEX_FLEET", "false", Bool, Host, "coordinate with the other hosts on the same store"),
    row("DEPLOYEX_HOST_ID", "host name", Text, Host, "this host's name in the fleet"),
    row("DEPLOYEX_FLEET_MAX_PARALLEL", "1", int(1, 1000), Host, "hosts deploying one version at a time"),
    row("DEPLOYEX_FLEET_LEASE_MS", "900000", int(1000, DAY_MS), Host, "a deployment slot not renewed for this long is free"),
    row("DEPLOYEX_FLEET_HEARTBEAT_MS", "5000", int(50, 60_000), Host, "fleet heartbeat, lease renewal and claim period"),
    // -- web hardening --
    row("DEPLOYEX_SECURE_COOKIE", "automatic", Bool, Host, "Secure + __Host- session cookie (unset: when the public origin is https)"),
    row("DEPLOYEX_PUBLIC_URL", "from PHX_HOST", Text, Host, "the dashboard's public origin"),
    row("DEPLOYEX_MAX_CONNECTIONS", "512", int(8, 1_000_000), Host, "open HTTP connections at most"),
    row("DEPLOYEX_TRUSTED_PROXIES", "unset", Text, Host, "comma-separated CIDRs whose X-Forwarded-For is believed"),
    row("DEPLOYEX_SESSION_TTL_S", "43200", int(60, 31_536_000), Host, "session lifetime in seconds"),
    secret("DEPLOYEX_METRICS_TOKEN", "unset", "bearer token accepted by /metrics"),
    row("DEPLOYEX_TERMINAL_IDLE_MS", "300000", int(1000, DAY_MS), Host, "close an idle IEx terminal after"),
    // Health: sampling, liveness, watchdog, events.
    row("DEPLOYEX_BEAM_SAMPLE_MS", "5000", int(0, HOUR_MS), Host, "BEAM telemetry sampling period per instance; 0 = off, else at least 100"),
    row("DEPLOYEX_LIVENESS_INTERVAL_MS", "5000", int(0, HOUR_MS), App, "liveness check period; 0 = off, else at least 100"),
    row("DEPLOYEX_LIVENESS_FAILURES", "3", int(1, 1000), App, "failed liveness checks in a row that kill and restart an instance"),
    row("DEPLOYEX_WATCHDOG_MEMORY_MB", "unset (off)", int(1, 1 << 30), App, "restart an instance whose resident memory stays above this"),
    row("DEPLOYEX_WATCHDOG_ATOMS_PCT", "90", int(1, 100), App, "warn above this share of the atom limit"),
    row("DEPLOYEX_WATCHDOG_PROCESSES_PCT", "90", int(1, 100), App, "warn above this share of the process limit"),
    row("DEPLOYEX_WATCHDOG_PORTS_PCT", "90", int(1, 100), App, "warn above this share of the port limit"),
    row("DEPLOYEX_WATCHDOG_ACTION", "unset", OneOf(&["warn", "restart"]), App, "unset: restart for memory, warn for BEAM limits"),
    row("DEPLOYEX_WEBHOOK_URL", "unset (off)", Text, Host, "every event is POSTed here as JSON with a text field"),
    secret("DEPLOYEX_WEBHOOK_SECRET", "unset", "signs webhook bodies: X-Deployex-Signature: sha256=<hex HMAC>"),
];

/// The table as `deployex settings` prints it: one block per setting.
pub(crate) fn reference() -> String {
    let mut out = String::new();
    for s in SETTINGS {
        out.push_str(&format!(
            "{} (file key {}; {} setting{})\n    default: {}; values: {}\n    {}\n",
            s.name,
            s.key(),
            s.scope.as_str(),
            if s.secret { ", secret" } else { "" },
            s.default,
            s.range,
            s.doc
        ));
    }
    out
}

/// The row of `name`, if deployex reads it.
pub(crate) fn setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// Whether `name` is a secret: never shown (`check-config` redacts it)
/// and never passed to an app, a pre-command or a terminal.
pub(crate) fn is_secret(name: &str) -> bool {
    setting(name).is_some_and(|s| s.secret)
}

/// Every secret's name.
#[cfg(test)]
pub(crate) fn secrets() -> impl Iterator<Item = &'static str> {
    SETTINGS.iter().filter(|s| s.secret).map(|s| s.name)
}

/// Secrets the AWS secret may carry besides the required ones; taken from
/// it when not set (same list as `secrets::OPTIONAL`).
pub(crate) const OPTIONAL_SECRETS: &[&str] = &["DEPLOYEX_METRICS_TOKEN"];

/// The secrets the fetcher is asked for (outside `local`, when unset).
pub(super) const FETCHED_SECRETS: &[&str] = &[
    "DEPLOYEX_SECRET_KEY_BASE",
    "DEPLOYEX_ERLANG_COOKIE",
    "DEPLOYEX_ADMIN_HASHED_PASSWORD",
];
