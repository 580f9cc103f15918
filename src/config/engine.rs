//! The engine's settings (`EngineConfig`): instances, ports, deploys,
//! health, watchdog, events, fleet. Adding one: a row in
//! `settings::SETTINGS` and a line here with the same default and range
//! (the tests check they agree).

use std::path::{Path, PathBuf};

use deployex_actors::{EngineConfig, StoreConfig};

use super::ConfigError;
use super::load::Identity;
use super::source::Source;

/// Every engine setting but the cookie and the base environment (the
/// loader fills those: they are secrets' business).
pub(super) fn settings(
    src: &Source,
    id: &Identity,
    store: StoreConfig,
) -> Result<EngineConfig, ConfigError> {
    let Identity {
        app,
        cloud_env,
        local,
    } = id;
    let local = *local;
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

    let mut engine = EngineConfig::with_defaults(app, Path::new("/tmp"));
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
    engine.fleet = fleet_config(src, &engine.hostname)?;
    Ok(engine)
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

fn short_hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    name.split('.').next().unwrap_or("localhost").to_string()
}
