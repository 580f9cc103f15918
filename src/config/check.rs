//! Checks and views of a loaded configuration: the start-time check of a
//! local release store, and `check-config`'s text (secrets redacted).

use deployex_actors::StoreConfig;

use super::{Config, ConfigError};

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
    /// Every app's store is checked (`[[apps]]`: each app has its own).
    pub fn check_local_store(&self) -> Result<(), ConfigError> {
        std::iter::once(&self.engine)
            .chain(&self.extra_apps)
            .try_for_each(check_store)
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
                if self.web.enabled {
                    format!(
                        "http://{} (host {})",
                        self.web.server.bind, self.web.server.host
                    )
                } else {
                    "off".into()
                },
            ),
            ("secrets", "<redacted>".to_string()),
        ];
        for (k, v) in lines {
            out.push_str(&format!("{k:>18}: {v}\n"));
        }
        if !self.extra_apps.is_empty() {
            out.push_str("\napps:\n");
            for app in std::iter::once(e).chain(&self.extra_apps) {
                out.push_str(&super::apps::describe(app));
            }
        }
        out.push_str("\nvariables:\n");
        for (k, v) in &self.effective {
            out.push_str(&format!("  {k}={v}\n"));
        }
        out
    }
}

/// One app's local store: a folder owned by deployex's user, not writable
/// by group or others (outside `local`).
fn check_store(app: &deployex_actors::EngineConfig) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let StoreConfig::Local { root } = &app.store else {
        return Ok(());
    };
    if app.env == "local" {
        return Ok(());
    }
    let bad = |why: String| {
        ConfigError(format!(
            "invalid configuration: DEPLOYEX_RELEASE_DIR={} (app {}): {why}",
            root.display(),
            app.app
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
