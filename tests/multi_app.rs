//! Several applications from one configuration file (issue 17), end to
//! end: the real binary with an `[[apps]]` file, real releases of two
//! differently named apps (`dxtest` and `dxsmoke`), real BEAMs, one EPMD.
//!
//! - both apps × 2 replicas come up;
//! - a new version of app A rolls A while B's OS pids never change;
//! - a crash-looping version of A is rolled back and ghosted, B untouched;
//! - `/api/v1/apps` and B's per-app routes answer for B;
//! - events carry their app: B's deployment events are labelled B.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::deployex::{APP, Site, pids, running_on};
use serde_json::Value;

const APP_B: &str = "dxsmoke";

use common::apps::{AppGuard, publish, start_with_config as start};

/// The OS pids of app B's instances, read from the OS, not from deployex.
fn b_pids(site: &Site) -> Vec<i32> {
    common::apps::app_pids(site, APP_B, 2)
}

/// Both of B's instances run (a live pid each): B's pids.
fn b_running(site: &Site) -> Option<Vec<i32>> {
    common::apps::running(site, APP_B, 2).map(|_| b_pids(site))
}

fn config_file(site: &Site, port_b: u16) -> PathBuf {
    let path = site.dir.path().join("deployex.toml");
    let text = format!(
        r#"
monitored_replicas = 2
release_dir = "{store}"
min_ready_ms = 300
rollback_crashes = 2

[[apps]]
monitored_app_name = "{APP}"
monitored_app_port = {port_a}
# The crash-at-boot release dies 4-5 s after its start: min_ready covers it.
min_ready_ms = 6000

[[apps]]
monitored_app_name = "{APP_B}"
monitored_app_port = {port_b}
[apps.env]
DX_ONLY_B = "yes"
"#,
        store = site.store().display(),
        port_a = site.app_port,
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn two_apps_from_one_file_deploy_and_fail_independently() {
    let site = Site::new(2);
    let port_b = common::deployex::free_port_range(2);
    let _b_guard = AppGuard {
        site: &site,
        app: APP_B,
        instances: 2,
    };
    publish(&site, APP, "0.1.0");
    publish(&site, APP_B, "0.1.0");
    let config = config_file(&site, port_b);
    let dx = start(&site, &config);

    // 1. Both apps × 2 replicas.
    let s = dx.wait_status("A: 2 x 0.1.0", Duration::from_secs(90), |s| {
        running_on(s, "0.1.0")
    });
    assert_eq!(
        s["app"], APP,
        "the un-prefixed routes answer for the first app"
    );
    let b = common::wait_until_blocking("B: 2 instances", Duration::from_secs(90), || {
        b_running(&site)
    });
    let a_first = pids(&s);
    assert!(
        a_first.iter().all(|p| !b.contains(p)),
        "distinct processes: A {a_first:?}, B {b:?}"
    );
    // [apps.env] reached B's instances only.
    let env_of = |pid: i32| std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let has_b_var = |pid: i32| {
        env_of(pid)
            .split(|c| *c == 0)
            .any(|kv| kv == b"DX_ONLY_B=yes")
    };
    assert!(
        b.iter().any(|p| has_b_var(*p)),
        "B's instances get [apps.env]"
    );
    assert!(!a_first.iter().any(|p| has_b_var(*p)), "A's do not");

    // The API: one status per app, per-app routes, unknown app 404.
    let list = dx.get("/api/v1/apps");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["app"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec![APP, APP_B], "configuration order");
    let sb = dx.get(&format!("/api/v1/apps/{APP_B}/status"));
    let api_b = pids(&sb);
    assert!(
        api_b.len() == 2 && api_b.iter().all(|p| b.contains(p)),
        "B's status names B's processes: {api_b:?} among {b:?}"
    );
    assert!(running_on(&sb, "0.1.0"), "{sb:#}");
    assert!(dx.get(&format!("/api/v1/apps/{APP_B}/versions")).is_array());
    let (code, _) = common::deployex::http(
        site.api_port,
        "GET",
        &format!("/api/v1/apps/{APP_B}/instances/1/logs/stdout"),
        dx.token.as_deref(),
        None,
    );
    assert_eq!(code, 200, "B's instance log");
    let (code, _) = common::deployex::http(
        site.api_port,
        "GET",
        "/api/v1/apps/nope/status",
        dx.token.as_deref(),
        None,
    );
    assert_eq!(code, 404, "unknown app");

    // Each event carries the app that emitted it: B's deployment is B's.
    let deploy_events_of = |events: &Value, app: &str| -> usize {
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["app"] == app && e["event"] == "deploy_finished")
            .count()
    };
    common::wait_until_blocking(
        "both apps' deployments in the events",
        Duration::from_secs(20),
        || {
            let events = dx.get("/api/v1/events?limit=500");
            (deploy_events_of(&events, APP) >= 2 && deploy_events_of(&events, APP_B) >= 2)
                .then_some(())
        },
    );

    // 2. A new version of A rolls A; B's pids never change.
    publish(&site, APP, "0.1.1");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = dx.status();
        assert_eq!(b_pids(&site), b, "B untouched while A rolls");
        if running_on(&s, "0.1.1") {
            break;
        }
        assert!(Instant::now() < deadline, "A never rolled: {s:#}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // 3. A crash-looping version of A: rolled back and ghosted; B untouched.
    publish(&site, APP, "0.2.0");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s: Value = dx.status();
        assert_eq!(b_pids(&site), b, "B untouched by A's crash loop");
        let ghosted = s["ghosted_versions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "0.2.0");
        if ghosted && running_on(&s, "0.1.1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no rollback: {s:#}\n{}",
            dx.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(b_pids(&site), b, "B's pids at the end");
    let sb = dx.get(&format!("/api/v1/apps/{APP_B}/status"));
    assert!(running_on(&sb, "0.1.0"), "B still on 0.1.0: {sb:#}");
    assert_eq!(
        sb["ghosted_versions"],
        serde_json::json!([]),
        "nothing ghosted for B"
    );
}
