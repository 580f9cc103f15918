//! Moving a single-app install to an `[[apps]]` file (issue 17,
//! acceptance): a deployex configured by the environment runs a real
//! release at 2 replicas and stops leaving them running; a new deployex
//! started with an equivalent `[[apps]]` file (same app, same ports, same
//! var dir) adopts the same OS processes and keeps the deployment history,
//! while a second app added by the same file starts next to it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::deployex::{APP, Deployex, Site, deployex_bin, pid_alive, pids, running_on};
use nix::sys::signal::Signal;
use serde_json::Value;

const APP_B: &str = "dxsmoke";

fn b_pids(site: &Site) -> Vec<i32> {
    (1..=2)
        .flat_map(|i| {
            deployex_actors::process::instance_pids(
                &site.var().join("service").join(APP_B).join(i.to_string()),
            )
        })
        .collect()
}

/// Kills app B's instances when the test ends (the site's guard covers
/// app A's folders only). Only this site's folders.
struct BGuard<'a>(&'a Site);

impl Drop for BGuard<'_> {
    fn drop(&mut self) {
        common::deployex::kill_pids(&b_pids(self.0));
    }
}

/// Publish app B's fixture release `version` (tarball, then current.json).
fn publish_b(site: &Site, version: &str) {
    let dist = site.store().join("dist").join(APP_B);
    std::fs::create_dir_all(&dist).unwrap();
    std::fs::copy(
        common::fixture_tarball(APP_B, version),
        dist.join(format!("{APP_B}-{version}.tar.gz")),
    )
    .unwrap();
    let dir = site.store().join("versions").join(APP_B).join("local");
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = dir.join(".current.json.tmp");
    std::fs::write(&tmp, format!(r#"{{"version":"{version}"}}"#)).unwrap();
    std::fs::rename(tmp, dir.join("current.json")).unwrap();
}

/// The `[[apps]]` file equivalent to `Site::spawn_with`'s environment.
fn config_file(site: &Site, port_b: u16) -> PathBuf {
    let path = site.dir.path().join("deployex.toml");
    let text = format!(
        r#"
min_ready_ms = 300

[[apps]]
monitored_app_name = "{APP}"
monitored_replicas = {replicas}
monitored_app_port = {port}
release_dir = "{store}"

[[apps]]
monitored_app_name = "{APP_B}"
monitored_replicas = 2
monitored_app_port = {port_b}
release_dir = "{store}"
"#,
        replicas = site.replicas,
        port = site.app_port,
        store = site.store().display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Start deployex on `site`'s var dir with `config` and only the host-wide
/// variables (a per-app variable next to `[[apps]]` is an error).
fn start_with_file(site: &Site, config: &Path) -> Deployex {
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
        .env("DEPLOYEX_DEPLOY_SCHEDULE_INTERVAL_MS", "200")
        .env("DEPLOYEX_STOP_TIMEOUT_MS", "5000")
        .env("DEPLOYEX_LOG", "info,deployex_actors=debug")
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
    common::wait_until_blocking("deployex answers /healthz", Duration::from_secs(20), || {
        matches!(common::http_get(site.api_port, "/healthz"), Some((200, _))).then_some(())
    });
    dx.login();
    dx
}

/// The deployment history at `path` (a JSON list).
fn versions(dx: &Deployex, path: &str) -> Vec<Value> {
    dx.get(path).as_array().expect("versions is a list").clone()
}

#[test]
fn a_single_app_install_moved_to_an_apps_file_is_adopted_with_its_history() {
    let site = Site::new(2).env("DEPLOYEX_STOP_APPS_ON_EXIT", "false");
    let _b_guard = BGuard(&site);
    site.publish("0.1.0", &[]);
    publish_b(&site, "0.1.0");
    let port_b = common::deployex::free_port_range(2);

    // 1. Single-app deployex (environment), 2 replicas, one deployment.
    let mut dx = site.start();
    let s = dx.wait_status("2 x 0.1.0", Duration::from_secs(90), |s| {
        running_on(s, "0.1.0")
    });
    let before = pids(&s);
    assert_eq!(before.len(), 2);
    let history = common::wait_until_blocking(
        "the deployment is in the history",
        Duration::from_secs(20),
        || {
            let v = versions(&dx, "/api/v1/versions");
            v.iter().any(|d| d["version"] == "0.1.0").then_some(v)
        },
    );
    let code = dx.stop_with(Signal::SIGTERM, Duration::from_secs(15));
    assert_eq!(code, Some(0));
    assert!(
        before.iter().all(|&p| pid_alive(p)),
        "the instances outlive deployex (DEPLOYEX_STOP_APPS_ON_EXIT=false)"
    );

    // 2. The same install, now from an `[[apps]]` file.
    let config = config_file(&site, port_b);
    let dx = start_with_file(&site, &config);
    let s = dx.wait_status("adopted, 2 x 0.1.0", Duration::from_secs(30), |s| {
        running_on(s, "0.1.0")
    });
    assert_eq!(s["app"], APP);
    assert_eq!(
        pids(&s),
        before,
        "the same OS processes, adopted: {s:#}\n{}",
        dx.log_tail(40)
    );
    assert_eq!(s["instances"][0]["crash_restarts"], 0, "{s:#}");
    let per_app = dx.get(&format!("/api/v1/apps/{APP}/status"));
    assert_eq!(pids(&per_app), before, "{per_app:#}");

    // The history is kept, on the per-app route and the un-prefixed one.
    let kept = versions(&dx, &format!("/api/v1/apps/{APP}/versions"));
    assert_eq!(kept, history, "history kept");
    assert_eq!(versions(&dx, "/api/v1/versions"), history);

    // The second app of the file starts next to the adopted one.
    common::wait_until_blocking("B: 2 x 0.1.0", Duration::from_secs(90), || {
        let sb = dx.get(&format!("/api/v1/apps/{APP_B}/status"));
        running_on(&sb, "0.1.0").then_some(())
    });
    for i in 1..=2 {
        let dir = site.var().join("service").join(APP_B).join(i.to_string());
        assert!(
            !deployex_actors::process::instance_pids(&dir).is_empty(),
            "B's instance {i} runs"
        );
    }
    // No redeploy of A happened meanwhile: still the same processes.
    assert_eq!(pids(&dx.status()), before);
    assert_eq!(
        versions(&dx, &format!("/api/v1/apps/{APP}/versions")),
        history
    );
}
