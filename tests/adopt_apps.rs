//! Moving a single-app install to an `[[apps]]` file (issue 17,
//! acceptance): a deployex configured by the environment runs a real
//! release at 2 replicas and stops leaving them running; a new deployex
//! started with an equivalent `[[apps]]` file (same app, same ports, same
//! var dir) adopts the same OS processes and keeps the deployment history,
//! while a second app added by the same file starts next to it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::deployex::{APP, Deployex, Site, pid_alive, pids, running_on};
use nix::sys::signal::Signal;
use serde_json::Value;

const APP_B: &str = "dxsmoke";

use common::apps::{AppGuard, publish, start_with_config};

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

/// The deployment history at `path` (a JSON list).
fn versions(dx: &Deployex, path: &str) -> Vec<Value> {
    dx.get(path).as_array().expect("versions is a list").clone()
}

#[test]
fn a_single_app_install_moved_to_an_apps_file_is_adopted_with_its_history() {
    let site = Site::new(2).env("DEPLOYEX_STOP_APPS_ON_EXIT", "false");
    let _b_guard = AppGuard {
        site: &site,
        app: APP_B,
        instances: 2,
    };
    site.publish("0.1.0", &[]);
    publish(&site, APP_B, "0.1.0");
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
    let dx = start_with_config(&site, &config);
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
