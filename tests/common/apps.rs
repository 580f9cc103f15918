//! Support for the tests with several applications (`[[apps]]`): a second
//! app's releases, folders and processes on a [`Site`], and a deployex
//! started with a configuration file instead of the single-app
//! environment.
//!
//! Invariants: processes are found by the instance marker of this site's
//! own service folders (never by name); the guard kills only those.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::deployex::{Deployex, Site, deployex_bin, kill_pids};

/// Publish `app`'s fixture release `version` into the site's local store
/// (tarball first, then `current.json`, written atomically).
pub fn publish(site: &Site, app: &str, version: &str) {
    let dist = site.store().join("dist").join(app);
    std::fs::create_dir_all(&dist).unwrap();
    std::fs::copy(
        super::fixture_tarball(app, version),
        dist.join(format!("{app}-{version}.tar.gz")),
    )
    .unwrap();
    let dir = site.store().join("versions").join(app).join("local");
    std::fs::create_dir_all(&dir).unwrap();
    let current = serde_json::json!({"version": version, "hash": format!("h{version}")});
    let tmp = dir.join(".current.json.tmp");
    std::fs::write(&tmp, current.to_string()).unwrap();
    std::fs::rename(tmp, dir.join("current.json")).unwrap();
}

/// `app`'s instance `i` service folder (slot a).
pub fn service(site: &Site, app: &str, i: u32) -> PathBuf {
    site.var().join("service").join(app).join(i.to_string())
}

/// The OS pids of `app`'s instance `i`, read from the OS (the instance
/// marker of its service folder), not from deployex; sorted.
pub fn instance_pids(site: &Site, app: &str, i: u32) -> Vec<i32> {
    let mut p = deployex_actors::process::instance_pids(&service(site, app, i));
    p.sort_unstable();
    p
}

/// The pids of `app`'s instances `1..=n`, flattened and sorted.
pub fn app_pids(site: &Site, app: &str, n: u32) -> Vec<i32> {
    let mut p: Vec<i32> = (1..=n).flat_map(|i| instance_pids(site, app, i)).collect();
    p.sort_unstable();
    p
}

/// `app`'s instances `1..=n` all run (a live pid each): their pids.
pub fn running(site: &Site, app: &str, n: u32) -> Option<Vec<Vec<i32>>> {
    let p: Vec<Vec<i32>> = (1..=n).map(|i| instance_pids(site, app, i)).collect();
    p.iter().all(|x| !x.is_empty()).then_some(p)
}

/// Kills what is left of an app's instances `1..=instances` when the test
/// ends (the site's own guard covers the site's main app only).
pub struct AppGuard<'a> {
    pub site: &'a Site,
    pub app: &'static str,
    pub instances: u32,
}

impl Drop for AppGuard<'_> {
    fn drop(&mut self) {
        kill_pids(&app_pids(self.site, self.app, self.instances));
    }
}

/// Start deployex on `site`'s var dir with `config` and only host-wide
/// variables (a per-app variable next to `[[apps]]` is an error); waits
/// for `/healthz` and logs in. The cookie is the single-app sites' own, so
/// that instances a single-app deployex started can be adopted.
pub fn start_with_config(site: &Site, config: &Path) -> Deployex {
    start_with_config_env(site, config, TEST_TUNING)
}

/// The tests' tuning of deployex: quick store polling and backoff, debug
/// logs of the engine.
pub const TEST_TUNING: &[(&str, &str)] = &[
    ("DEPLOYEX_DEPLOY_SCHEDULE_INTERVAL_MS", "200"),
    ("DEPLOYEX_BACKOFF_BASE_MS", "200"),
    ("DEPLOYEX_STOP_TIMEOUT_MS", "5000"),
    ("DEPLOYEX_LOG", "info,deployex_actors=debug"),
];

/// [`start_with_config`] with `env` (host-wide variables) instead of the
/// tests' tuning: `&[("DEPLOYEX_LOG", "info")]` runs the production
/// defaults (the benchmarks).
pub fn start_with_config_env(site: &Site, config: &Path, env: &[(&str, &str)]) -> Deployex {
    std::fs::create_dir_all(site.logs()).unwrap();
    let log = site.dir.path().join("deployex.log");
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let child = Command::new(deployex_bin())
        .arg("--config")
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", site.dir.path())
        .env("DEPLOYEX_VAR_DIR", site.var())
        .env("DEPLOYEX_LOG_DIR", site.logs())
        .env("DEPLOYEX_PHX_PORT", site.api_port.to_string())
        .env("ERL_EPMD_PORT", site.epmd.port.to_string())
        .env("DEPLOYEX_ERLANG_COOKIE", "e2ecookie")
        .env(
            "DEPLOYEX_SECRET_KEY_BASE",
            "e2e-secret-key-base-0123456789-abcdefghijklmnop",
        )
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn deployex");
    let mut dx = Deployex {
        child: Some(child),
        api_port: site.api_port,
        token: None,
        log,
    };
    super::wait_until_blocking("deployex answers /healthz", Duration::from_secs(30), || {
        matches!(super::http_get(site.api_port, "/healthz"), Some((200, _))).then_some(())
    });
    dx.login();
    dx
}
