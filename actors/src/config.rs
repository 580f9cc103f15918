//! The engine's configuration: every knob the actor tree reads, already
//! validated. Loading it (environment, TOML file, defaults, secrets) is the
//! binary's job (`src/config.rs`); the engine only consumes it.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where releases come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// `{root}/versions/{app}/{env}/current.json`, `{root}/dist/{app}/...`.
    Local { root: PathBuf },
    /// The same keys in an S3 bucket.
    S3 {
        bucket: String,
        region: Option<String>,
        endpoint: Option<String>,
    },
}

/// Everything the engine needs, with defaults applied.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The release name `{app}`.
    pub app: String,
    /// `{env}` in store paths.
    pub env: String,
    pub store: StoreConfig,
    pub replicas: u32,
    /// Instance `i` listens on `app_port_base + i - 1`.
    pub app_port_base: u16,
    /// Service folders and state live below this.
    pub var_dir: PathBuf,
    /// Instance log files live here.
    pub log_dir: PathBuf,
    pub schedule_interval: Duration,
    pub rollback_timeout: Duration,
    pub rollback_crashes: u32,
    /// Distribution cookie (secret): reaches instances only as `RELEASE_COOKIE`.
    pub cookie: String,
    pub otp_readiness: bool,
    pub min_ready: Duration,
    pub health_path: Option<String>,
    pub stop_apps_on_exit: bool,
    /// SIGTERM → SIGKILL grace when stopping an instance.
    pub stop_grace: Duration,
    /// First delay of the crash backoff (the very first restart is immediate).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Ready this long → the consecutive-crash counter resets.
    pub backoff_reset_after: Duration,
    pub pre_command_timeout: Duration,
    pub epmd_port: u16,
    /// Short host name: the host part of every node name.
    pub hostname: String,
    pub tls_cert_path: Option<PathBuf>,
    /// How often each connected node's BEAM telemetry is sampled; zero: off.
    pub beam_sample_interval: Duration,
    pub log_max_bytes: u64,
    pub log_keep: usize,
    /// Where deployex's own log files are (`deployex-{stdout,stderr}.log`), when it logs to files.
    pub own_log_dir: Option<PathBuf>,
    /// deployex's own environment, the base of every instance's environment
    /// (secrets and `RELEASE_*` are removed before use).
    pub base_env: Vec<(String, String)>,
    /// Liveness check period while an instance runs (an RPC round trip over
    /// its link, plus the health path when set); zero: off.
    pub liveness_interval: Duration,
    /// Consecutive failed liveness checks that get an instance killed and
    /// restarted.
    pub liveness_failures: u32,
    pub watchdog: WatchdogConfig,
    /// Where events are POSTed, if anywhere.
    pub webhook: Option<WebhookConfig>,
    /// `DEPLOYEX_START_COMMAND`: the `bin/{app}` arguments that start an
    /// instance, instead of the release flavour's own (`start` for mix,
    /// `foreground` for relx; see [`crate::release_kind`]).
    pub start_command: Option<String>,
    /// Fleet mode (`DEPLOYEX_FLEET=true`): see [`crate::fleet`].
    pub fleet: Option<crate::fleet::FleetConfig>,
    /// How a full deployment replaces an instance (`DEPLOYEX_DEPLOY_STRATEGY`).
    pub deploy_strategy: DeployStrategy,
    /// `DEPLOYEX_APP_USER`: instances, pre-commands and terminals run as
    /// this user (see [`crate::app_user`]). `None`: as deployex's own user.
    pub app_user: Option<crate::app_user::AppUser>,
}

/// How a full deployment replaces a running instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeployStrategy {
    /// Stop the old process, then start the new one in its place (the
    /// seed's behaviour): same node, port and folder.
    #[default]
    StopFirst,
    /// Start the new version beside the old one (the other slot: its own
    /// folder, node and the spare port of the pool), stop the old one only
    /// once the new one is ready. See [`Slot`].
    StartFirst,
}

impl DeployStrategy {
    pub fn parse(text: &str) -> Option<DeployStrategy> {
        match text {
            "stop_first" => Some(DeployStrategy::StopFirst),
            "start_first" => Some(DeployStrategy::StartFirst),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeployStrategy::StopFirst => "stop_first",
            DeployStrategy::StartFirst => "start_first",
        }
    }
}

/// Where an instance's process lives. Every instance has two: slot `a` is
/// the stop-first layout (folder `service/{app}/{i}`, node `{app}-{i}`);
/// slot `b` (folder `service/{app}/{i}b`, node `{app}-{i}b`) is where a
/// start-first deployment starts the new version while the old one still
/// serves from slot `a`, and the other way round at the next deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    #[default]
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `""` for `a`, `"b"` for `b`: appended to the instance number in
    /// folder and node names.
    pub fn suffix(self) -> &'static str {
        match self {
            Slot::A => "",
            Slot::B => "b",
        }
    }
}

/// What the resource watchdog does when a limit is crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogAction {
    /// Record a `watchdog_warning` event only.
    Warn,
    /// Restart the instance (graceful stop, then start).
    Restart,
}

/// The resource watchdog (PM2's `max_memory_restart`, upstream's watchdog).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogConfig {
    /// Resident memory of an instance's process group above which it is
    /// restarted (two consecutive samples); `None`: off.
    pub memory_bytes: Option<u64>,
    /// Share of the BEAM's limits above which a warning is raised.
    pub atoms_pct: u8,
    pub processes_pct: u8,
    pub ports_pct: u8,
    /// `None`: restart for memory, warn for the BEAM limits.
    pub action: Option<WatchdogAction>,
}

impl WatchdogConfig {
    pub fn memory_action(&self) -> WatchdogAction {
        self.action.unwrap_or(WatchdogAction::Restart)
    }
    pub fn limits_action(&self) -> WatchdogAction {
        self.action.unwrap_or(WatchdogAction::Warn)
    }
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            memory_bytes: None,
            atoms_pct: 90,
            processes_pct: 90,
            ports_pct: 90,
            action: None,
        }
    }
}

/// Event delivery to an HTTP receiver (Slack/Mattermost incoming webhooks
/// work as they are).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: String,
    /// Signs each body (`X-Deployex-Signature: sha256=<hex HMAC>`). Secret.
    pub secret: Option<String>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl EngineConfig {
    /// A configuration with the documented defaults for `app`, rooted in
    /// `base` (used by tests and as the base of the loader).
    pub fn with_defaults(app: &str, base: &Path) -> EngineConfig {
        EngineConfig {
            app: app.to_string(),
            env: "local".to_string(),
            store: StoreConfig::Local {
                root: base.join("store"),
            },
            replicas: 3,
            app_port_base: 4000,
            var_dir: base.join("varlib"),
            log_dir: base.join("log"),
            schedule_interval: Duration::from_millis(5000),
            rollback_timeout: Duration::from_millis(600_000),
            rollback_crashes: 5,
            cookie: "cookie".to_string(),
            otp_readiness: true,
            min_ready: Duration::from_millis(5000),
            health_path: None,
            stop_apps_on_exit: true,
            stop_grace: Duration::from_secs(10),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            backoff_reset_after: Duration::from_secs(60),
            pre_command_timeout: Duration::from_secs(300),
            epmd_port: 4369,
            hostname: "localhost".to_string(),
            tls_cert_path: None,
            beam_sample_interval: Duration::from_millis(5000),
            log_max_bytes: 100 * 1024 * 1024,
            log_keep: 5,
            own_log_dir: None,
            base_env: Vec::new(),
            liveness_interval: Duration::from_millis(5000),
            liveness_failures: 3,
            watchdog: WatchdogConfig::default(),
            webhook: None,
            start_command: None,
            fleet: None,
            deploy_strategy: DeployStrategy::StopFirst,
            app_user: None,
        }
    }

    /// `{var}/service/{app}/{i}`.
    pub fn service_dir(&self, instance: u32) -> PathBuf {
        self.var_dir
            .join("service")
            .join(&self.app)
            .join(instance.to_string())
    }

    /// `{var}/storage/{app}`.
    pub fn storage_dir(&self) -> PathBuf {
        self.var_dir.join("storage").join(&self.app)
    }

    /// `{var}/cache/{app}`: downloaded, verified tarballs.
    pub fn cache_dir(&self) -> PathBuf {
        self.var_dir.join("cache").join(&self.app)
    }

    pub fn port(&self, instance: u32) -> u16 {
        // Validated at load time: base + replicas - 1 fits in u16.
        self.app_port_base
            .saturating_add(u16::try_from(instance.saturating_sub(1)).unwrap_or(u16::MAX))
    }

    /// `{app}-{i}@{host}`.
    pub fn node_name(&self, instance: u32) -> String {
        format!("{}-{}@{}", self.app, instance, self.hostname)
    }

    /// The service folder of `instance` in `slot`: `{var}/service/{app}/{i}`
    /// (slot `a`) or `.../{i}b` (slot `b`).
    pub fn slot_service_dir(&self, instance: u32, slot: Slot) -> PathBuf {
        self.var_dir
            .join("service")
            .join(&self.app)
            .join(format!("{instance}{}", slot.suffix()))
    }

    /// `{app}-{i}` or `{app}-{i}b` (`RELEASE_NODE`).
    pub fn slot_node_basename(&self, instance: u32, slot: Slot) -> String {
        format!("{}-{instance}{}", self.app, slot.suffix())
    }

    /// `{app}-{i}[b]@{host}`.
    pub fn slot_node_name(&self, instance: u32, slot: Slot) -> String {
        format!(
            "{}@{}",
            self.slot_node_basename(instance, slot),
            self.hostname
        )
    }

    /// Where an instance's slot and port are recorded (start-first
    /// deployments move them): `{var}/service/{app}/slots/{i}.json`.
    pub fn slot_record(&self, instance: u32) -> PathBuf {
        self.var_dir
            .join("service")
            .join(&self.app)
            .join("slots")
            .join(format!("{instance}.json"))
    }

    /// The ports instances may use: `base .. base + replicas - 1`, and with
    /// `start_first` one more (the spare, where the next new version starts).
    pub fn port_pool(&self) -> std::ops::RangeInclusive<u16> {
        let extra = u32::from(self.deploy_strategy == DeployStrategy::StartFirst);
        let last = u32::from(self.app_port_base) + self.replicas.saturating_sub(1) + extra;
        self.app_port_base..=u16::try_from(last).unwrap_or(u16::MAX)
    }

    pub fn log_file(&self, instance: u32, stream: crate::model::LogStream) -> PathBuf {
        self.log_dir
            .join(format!("{}-{}-{}.log", self.app, instance, stream.as_str()))
    }
}
