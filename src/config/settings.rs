//! Every variable deployex reads, and which of them are secrets. The TOML
//! file accepts exactly these names (lower case, without `DEPLOYEX_`);
//! `check-config` lists them in this order.

/// Every variable deployex reads, in documentation order.
pub(crate) const VARIABLES: &[(&str, &str)] = &[
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

/// Values never shown (`check-config` redacts them) and never passed to an
/// app, a pre-command or a terminal.
pub(crate) const SECRETS: &[&str] = &[
    "DEPLOYEX_SECRET_KEY_BASE",
    "DEPLOYEX_ERLANG_COOKIE",
    "DEPLOYEX_ADMIN_HASHED_PASSWORD",
    "DEPLOYEX_METRICS_TOKEN",
    "DEPLOYEX_WEBHOOK_SECRET",
];

/// Secrets the AWS secret may carry besides the required ones; taken from
/// it when not set (same list as `secrets::OPTIONAL`).
pub(crate) const OPTIONAL_SECRETS: &[&str] = &["DEPLOYEX_METRICS_TOKEN"];

/// The secrets the fetcher is asked for (outside `local`, when unset).
pub(super) const FETCHED_SECRETS: &[&str] = &[
    "DEPLOYEX_SECRET_KEY_BASE",
    "DEPLOYEX_ERLANG_COOKIE",
    "DEPLOYEX_ADMIN_HASHED_PASSWORD",
];
