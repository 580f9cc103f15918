//! Live reconfiguration (issue 17, SIGHUP), end to end: the real binary
//! with an `[[apps]]` file, real releases of two differently named apps
//! (`dxtest` and `dxsmoke`), real BEAMs, one EPMD.
//!
//! - SIGHUP with the first app at 3 replicas: one new instance, nothing
//!   else restarted (every other pid unchanged);
//! - SIGHUP with a broken file: an error line in deployex's log, every pid
//!   unchanged;
//! - SIGHUP with the second app removed: its BEAMs are gone, the first
//!   app's untouched;
//! - SIGHUP with the first app back at 2 replicas: instance 3's BEAM is
//!   gone, 1 and 2 untouched;
//! - SIGHUP with the second app back: it starts and `/api/v1/apps` names
//!   it again (removed, it was 404).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::deployex::{APP, Deployex, Site, running_on};

const APP_B: &str = "dxsmoke";

use common::apps::{AppGuard, instance_pids, publish, running, start_with_config as start};

/// Every instance's pids, per (app, instance), for instances 1..=3 of both.
fn all_pids(site: &Site) -> Vec<(&'static str, u32, Vec<i32>)> {
    [APP, APP_B]
        .into_iter()
        .flat_map(|app| (1..=3).map(move |i| (app, i)))
        .map(|(app, i)| (app, i, instance_pids(site, app, i)))
        .collect()
}

/// The configuration file: A at `replicas_a`, B (unless `with_b` is false).
fn write_config(site: &Site, port_b: u16, replicas_a: u32, with_b: bool) -> PathBuf {
    let path = site.dir.path().join("deployex.toml");
    let mut text = format!(
        r#"
monitored_replicas = 2
release_dir = "{store}"
min_ready_ms = 300

[[apps]]
monitored_app_name = "{APP}"
monitored_app_port = {port_a}
monitored_replicas = {replicas_a}
"#,
        store = site.store().display(),
        port_a = site.app_port,
    );
    if with_b {
        text.push_str(&format!(
            "\n[[apps]]\nmonitored_app_name = \"{APP_B}\"\nmonitored_app_port = {port_b}\n"
        ));
    }
    let tmp = site.dir.path().join(".deployex.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, &path).unwrap();
    path
}

fn sighup(dx: &Deployex) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dx.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
}

#[test]
fn sighup_scales_refuses_a_broken_file_and_removes_an_app() {
    let site = Site::new(3);
    let port_b = common::deployex::free_port_range(2);
    let _b_guard = AppGuard {
        site: &site,
        app: APP_B,
        instances: 3,
    };
    publish(&site, APP, "0.1.0");
    publish(&site, APP_B, "0.1.0");
    let config = write_config(&site, port_b, 2, true);
    let dx = start(&site, &config);
    // Fully up (the API's view: every instance running 0.1.0), so that no
    // instance is still spawning processes when the pids are taken.
    dx.wait_status("A: 2 x 0.1.0", Duration::from_secs(90), |s| {
        running_on(s, "0.1.0")
    });
    common::wait_until_blocking("B: 2 x 0.1.0", Duration::from_secs(90), || {
        running_on(&dx.get(&format!("/api/v1/apps/{APP_B}/status")), "0.1.0").then_some(())
    });
    running(&site, APP, 2).unwrap();
    running(&site, APP_B, 2).unwrap();
    let before = all_pids(&site);
    assert!(
        instance_pids(&site, APP, 3).is_empty(),
        "no third instance yet"
    );

    // 1. A at 3 replicas: one new instance, nothing else restarted.
    write_config(&site, port_b, 3, true);
    sighup(&dx);
    // The API follows the scale: three instances, all running 0.1.0.
    let s = dx.wait_status("A: 3 x 0.1.0", Duration::from_secs(60), |s| {
        s["instances"].as_array().map(Vec::len) == Some(3) && running_on(s, "0.1.0")
    });
    let a3 = instance_pids(&site, APP, 3);
    assert!(
        a3.contains(&common::deployex::pids(&s)[2]),
        "instance 3's process: {a3:?} {s:#}"
    );
    let after: Vec<_> = all_pids(&site)
        .into_iter()
        .filter(|(app, i, _)| !(*app == APP && *i == 3))
        .collect();
    let expected: Vec<_> = before
        .iter()
        .filter(|(app, i, _)| !(*app == APP && *i == 3))
        .cloned()
        .collect();
    assert_eq!(after, expected, "every other instance untouched");
    assert!(dx.log_text().contains("app scaled"), "{}", dx.log_tail(30));
    let scaled = all_pids(&site);

    // 2. A broken file: refused, one error line, every pid unchanged.
    std::fs::write(&config, "[[apps]]\nmonitored_app_name = \n").unwrap();
    sighup(&dx);
    common::wait_until_blocking("the refusal in the log", Duration::from_secs(20), || {
        dx.log_text()
            .contains("reload refused, nothing changed")
            .then_some(())
    });
    assert_eq!(all_pids(&site), scaled, "a broken file changes nothing");
    assert!(!a3.is_empty());

    // 3. B removed: its BEAMs gone, A untouched.
    let b_pids: Vec<i32> = (1..=2)
        .flat_map(|i| instance_pids(&site, APP_B, i))
        .collect();
    assert!(
        (1..=2).all(|i| !instance_pids(&site, APP_B, i).is_empty()),
        "B runs before its removal: {b_pids:?}"
    );
    write_config(&site, port_b, 3, false);
    sighup(&dx);
    common::wait_until_blocking("B's BEAMs gone", Duration::from_secs(60), || {
        b_pids
            .iter()
            .all(|p| !common::deployex::pid_alive(*p))
            .then_some(())
    });
    let a_now: Vec<_> = all_pids(&site)
        .into_iter()
        .filter(|(app, _, _)| *app == APP)
        .collect();
    let a_scaled: Vec<_> = scaled
        .into_iter()
        .filter(|(app, _, _)| *app == APP)
        .collect();
    assert_eq!(a_now, a_scaled, "A untouched by B's removal");
    common::wait_until_blocking("removal logged", Duration::from_secs(20), || {
        dx.log_text().contains("app removed").then_some(())
    });
    // The web's list follows: B is 404, the list names A only.
    let (code, _) = common::deployex::http(
        site.api_port,
        "GET",
        &format!("/api/v1/apps/{APP_B}/status"),
        dx.token.as_deref(),
        None,
    );
    assert_eq!(code, 404, "a removed app is unknown");
    let names: Vec<String> = dx
        .get("/api/v1/apps")
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["app"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec![APP.to_string()]);

    // 4. A back to 2 replicas: the highest instance goes, 1 and 2 stay.
    write_config(&site, port_b, 2, false);
    sighup(&dx);
    common::wait_until_blocking("A's instance 3 gone", Duration::from_secs(60), || {
        a3.iter()
            .all(|p| !common::deployex::pid_alive(*p))
            .then_some(())
    });
    let a12 = |pids: &[(&str, u32, Vec<i32>)]| -> Vec<Vec<i32>> {
        pids.iter()
            .filter(|(app, i, _)| *app == APP && *i <= 2)
            .map(|(_, _, p)| p.clone())
            .collect()
    };
    assert_eq!(a12(&all_pids(&site)), a12(&a_now), "A's 1 and 2 untouched");
    let s = dx.status();
    assert_eq!(s["instances"].as_array().unwrap().len(), 2, "{s:#}");

    // 5. B added back: it starts (2 x 0.1.0) and appears in the API; A
    //    untouched.
    write_config(&site, port_b, 2, true);
    sighup(&dx);
    common::wait_until_blocking("B back: 2 x 0.1.0", Duration::from_secs(90), || {
        let (code, body) = common::deployex::http(
            site.api_port,
            "GET",
            &format!("/api/v1/apps/{APP_B}/status"),
            dx.token.as_deref(),
            None,
        );
        let s: serde_json::Value = serde_json::from_str(&body).ok()?;
        (code == 200 && s["instances"].as_array()?.len() == 2 && running_on(&s, "0.1.0"))
            .then_some(())
    });
    assert_eq!(
        a12(&all_pids(&site)),
        a12(&a_now),
        "A untouched by B's return"
    );
}
