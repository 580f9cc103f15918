//! End-to-end tests of the core engine: the real `deployex` binary, real
//! `mix release` tarballs, real OS processes, real EPMD and distribution.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::deployex::{APP, Site, app_version, kill_pids, pid_alive, pid_exists, pids};
use nix::sys::signal::Signal;
use serde_json::Value;

fn states(status: &Value) -> Vec<String> {
    status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["state"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn all_running(status: &Value, version: &str) -> bool {
    status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["state"] == "running" && i["version"] == version && i["otp_connected"] == true)
}

fn start_erl_version(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("releases/start_erl.data"))
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string()
}

/// The web server runs on its own threads at nice 10, the engine's at the
/// process's own priority (main.rs `web_runtime`): under a CPU shortage a
/// request flood slows the dashboard, not supervision.
#[test]
fn the_web_server_threads_are_niced_and_the_engines_are_not() {
    let site = Site::new(1);
    let dx = site.start();
    let task_dir = format!("/proc/{}/task", dx.pid());
    let threads: Vec<(String, i64)> = std::fs::read_dir(&task_dir)
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?.path();
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            let nice = nice_of(t.join("stat").to_str()?);
            Some((comm.trim().to_owned(), nice))
        })
        .collect();
    let of = |name: &str| -> Vec<i64> {
        threads
            .iter()
            .filter(|(comm, _)| comm == name)
            .map(|(_, nice)| *nice)
            .collect()
    };
    // Workers and blocking-pool threads share their runtime's name.
    let (web, engine) = (of("deployex-web"), of("deployex-engine"));
    assert!(
        web.len() >= 2 && web.iter().all(|n| *n == 10),
        "{threads:?}"
    );
    assert!(
        engine.len() >= 2 && engine.iter().all(|n| *n == 0),
        "{threads:?}"
    );
    // And the niced threads do serve.
    assert_eq!(
        common::deployex::http(dx.api_port, "GET", "/healthz", None, None),
        (200, "ok".to_string())
    );
}

/// Field 19 of a `/proc/…/stat` file: the nice value.
fn nice_of(stat_path: &str) -> i64 {
    let stat = std::fs::read_to_string(stat_path).unwrap();
    // `pid (comm) state …`: comm may hold spaces, so split after its ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(16).unwrap().parse().unwrap()
}

#[test]
fn replicas_come_up_restart_after_kill_and_roll_to_the_next_version() {
    let site = Site::new(3);
    let marker = site.dir.path().join("migrations.txt");
    let site = site.env("FIXTURE_MARKER", marker.to_str().unwrap());
    site.publish("0.1.0", &[]);
    let dx = site.start();

    let status = dx.wait_status(
        "3 replicas of 0.1.0 running",
        Duration::from_secs(60),
        |s| all_running(s, "0.1.0"),
    );
    let first_pids = pids(&status);
    for i in 1..=3u32 {
        let inst = &status["instances"][(i - 1) as usize];
        let port = inst["port"].as_u64().unwrap() as u16;
        assert_eq!(port, site.app_port + (i as u16) - 1);
        let (version, _) = app_version(port).expect("instance answers on its PORT");
        assert_eq!(version, "0.1.0");
        let pid = first_pids[(i - 1) as usize];
        // Its own process group.
        let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).unwrap();
        assert_eq!(pgid.as_raw(), pid, "instance {i} leads its process group");
        // Started by the engine, not the (niced) web server's threads.
        assert_eq!(
            nice_of(&format!("/proc/{pid}/stat")),
            0,
            "instance {i}'s nice"
        );
        assert_eq!(
            inst["node"],
            format!("{APP}-{i}@{}", common::short_hostname())
        );
    }
    // Logs fill (the fixture prints a heartbeat every second).
    common::wait_until_blocking(
        "stdout logs of every instance fill",
        Duration::from_secs(10),
        || {
            (1..=3)
                .all(|i| std::fs::metadata(site.log_file(i, "stdout")).is_ok_and(|m| m.len() > 0))
                .then_some(())
        },
    );

    // kill -9 one instance: a new process at once, crash_restarts = 1.
    let victim = first_pids[1];
    let killed_at = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    let status = dx.wait_status("instance 2 respawned", Duration::from_secs(10), |s| {
        let p = s["instances"][1]["os_pid"].as_i64().unwrap_or(0) as i32;
        p != 0 && p != victim
    });
    let respawn = killed_at.elapsed();
    // deployex reaped its child: no zombie left behind.
    assert!(!pid_exists(victim), "killed instance reaped, no zombie");
    assert_eq!(status["instances"][1]["crash_restarts"], 1);
    assert!(
        respawn < Duration::from_secs(2),
        "first restart is immediate, took {respawn:?}"
    );
    dx.wait_status("instance 2 running again", Duration::from_secs(30), |s| {
        all_running(s, "0.1.0")
    });

    // Publish 0.1.1 with a pre-command; watch the rollout.
    site.publish("0.1.1", &["eval Fixture.Migrator.migrate"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut max_down = 0;
    loop {
        let s = dx.status();
        let down = states(&s)
            .iter()
            .filter(|st| st.as_str() != "running")
            .count();
        max_down = max_down.max(down);
        if all_running(&s, "0.1.1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rollout to 0.1.1 did not finish: {s:#}\n{}",
            dx.log_text()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(
        max_down <= 1,
        "never two instances down at once (saw {max_down})"
    );
    for i in 1..=3 {
        assert_eq!(start_erl_version(&site.service(i).join("current")), "0.1.1");
        assert_eq!(
            start_erl_version(&site.service(i).join("previous")),
            "0.1.0"
        );
        assert!(!site.service(i).join("new").exists());
        let port = site.app_port + i as u16 - 1;
        assert_eq!(app_version(port).unwrap().0, "0.1.1");
    }
    // History: each step recorded, newest first.
    let history = dx.get("/api/v1/versions");
    let rows = history.as_array().unwrap();
    let v011: Vec<u64> = rows
        .iter()
        .filter(|r| r["version"] == "0.1.1")
        .map(|r| r["instance"].as_u64().unwrap())
        .collect();
    assert_eq!(v011, vec![3, 2, 1], "newest first: {history:#}");
    assert!(rows.iter().all(|r| r["deployment"] == "full_deployment"));
    assert_eq!(rows.iter().filter(|r| r["version"] == "0.1.0").count(), 3);
    let only_2 = dx.get("/api/v1/versions?instance=2");
    assert!(
        only_2
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["instance"] == 2)
    );
    // Pre-commands ran once per instance, in order.
    let lines: Vec<String> = std::fs::read_to_string(&marker)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines,
        vec!["migrate 0.1.1 -1", "migrate 0.1.1 -2", "migrate 0.1.1 -3"]
    );
}

#[test]
fn a_failing_pre_command_keeps_the_old_version_running() {
    let site = Site::new(1);
    site.publish("0.1.0", &[]);
    let dx = site.start();
    let s = dx.wait_status("0.1.0 running", Duration::from_secs(60), |s| {
        all_running(s, "0.1.0")
    });
    let pid = pids(&s)[0];
    site.publish("0.1.1", &["eval Fixture.Migrator.fail"]);
    let s = dx.wait_status("pre_commands_failed", Duration::from_secs(60), |s| {
        s["instances"][0]["state"] == "pre_commands_failed"
    });
    assert_eq!(s["instances"][0]["version"], "0.1.0");
    assert_eq!(pids(&s)[0], pid, "the old process keeps running");
    assert!(pid_alive(pid));
    let err = s["last_error"].as_str().unwrap_or("");
    assert!(
        err.contains("pre-command"),
        "last_error names the pre-command: {s:#}"
    );
    assert_eq!(app_version(site.app_port).unwrap().0, "0.1.0");
}

#[test]
fn a_version_crashing_at_boot_is_restarted_with_growing_intervals() {
    let site = Site::new(1)
        .env("DEPLOYEX_BACKOFF_BASE_MS", "300")
        .env("DEPLOYEX_ROLLBACK_CRASHES", "1000");
    site.publish("0.2.0", &[]);
    let dx = site.start();
    let s = dx.wait_status("5 crash restarts", Duration::from_secs(90), |s| {
        s["instances"][0]["restart_times"]
            .as_array()
            .is_some_and(|a| a.len() >= 5)
    });
    let parse = |key: &str| -> Vec<time::OffsetDateTime> {
        s["instances"][0][key]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                time::OffsetDateTime::parse(
                    t.as_str().unwrap(),
                    &time::format_description::well_known::Rfc3339,
                )
                .unwrap()
            })
            .collect()
    };
    let crashes = parse("crash_times");
    let restarts = parse("restart_times");
    assert!(restarts.len() >= 5, "{s:#}");
    // The delay deployex waited before each restart: 0, 0.3, 0.6, 1.2 s...
    let delays: Vec<f64> = crashes
        .iter()
        .zip(&restarts)
        .map(|(c, r)| (*r - *c).as_seconds_f64())
        .collect();
    assert!(delays[0] < 0.1, "first restart immediate: {delays:?}");
    let expected = [0.0, 0.3, 0.6, 1.2, 2.4];
    // Each restart waits at least its backoff delay (0.3, 0.6, 1.2, 2.4 s:
    // the lower bounds prove the exponential growth); the upper bound only
    // catches a runaway (a loaded machine can add a second of scheduling).
    for (i, d) in delays.iter().take(5).enumerate() {
        assert!(
            *d >= expected[i] - 0.01 && *d < expected[i] + 1.5,
            "restart {i} waited {d:.3}s, expected ~{}s: {delays:?}",
            expected[i]
        );
    }
}

#[test]
fn malformed_releases_are_rejected_and_nothing_running_is_touched() {
    let site = Site::new(1);
    site.publish("0.1.0", &[]);
    let dx = site.start();
    let s = dx.wait_status("0.1.0 running", Duration::from_secs(60), |s| {
        all_running(s, "0.1.0")
    });
    let pid = pids(&s)[0];

    let good = std::fs::read(common::fixture_tarball(APP, "0.1.1")).unwrap();
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "malformed json",
            Box::new(|| site.write_current("{not json")),
            "current.json",
        ),
        (
            "missing version",
            Box::new(|| site.write_current(r#"{"hash":"x"}"#)),
            "version",
        ),
        (
            "missing tarball",
            Box::new(|| site.write_current(r#"{"version":"9.9.9"}"#)),
            "9.9.9",
        ),
        (
            "truncated tarball",
            Box::new(|| {
                site.publish_raw_tarball("0.5.1", &good[..good.len() / 2]);
                site.write_current(r#"{"version":"0.5.1"}"#);
            }),
            "0.5.1",
        ),
        (
            "not gzip",
            Box::new(|| {
                site.publish_raw_tarball("0.5.2", b"this is not a tarball at all");
                site.write_current(r#"{"version":"0.5.2"}"#);
            }),
            "0.5.2",
        ),
        (
            "path traversal",
            Box::new(|| {
                site.publish_raw_tarball("0.5.3", &common::evil_tarball_dotdot(APP));
                site.write_current(r#"{"version":"0.5.3"}"#);
            }),
            "0.5.3",
        ),
        (
            "absolute path",
            Box::new(|| {
                site.publish_raw_tarball("0.5.4", &common::evil_tarball_absolute(APP));
                site.write_current(r#"{"version":"0.5.4"}"#);
            }),
            "0.5.4",
        ),
        (
            "symlink escaping",
            Box::new(|| {
                site.publish_raw_tarball("0.5.5", &common::evil_tarball_symlink(APP));
                site.write_current(r#"{"version":"0.5.5"}"#);
            }),
            "0.5.5",
        ),
        (
            "no bin/app",
            Box::new(|| {
                site.publish_raw_tarball("0.5.6", &common::tarball_without_bin());
                site.write_current(r#"{"version":"0.5.6"}"#);
            }),
            "0.5.6",
        ),
        (
            "no releases/start_erl.data",
            Box::new(|| {
                site.publish_raw_tarball("0.5.7", &common::tarball_without_start_erl_data(APP));
                site.write_current(r#"{"version":"0.5.7"}"#);
            }),
            "start_erl.data",
        ),
        (
            "tarball of another version",
            Box::new(|| {
                site.publish_raw_tarball("0.5.8", &good);
                site.write_current(r#"{"version":"0.5.8"}"#);
            }),
            "is version 0.1.1",
        ),
        (
            "sha256 mismatch",
            Box::new(|| {
                site.publish_tarball("0.1.1");
                site.write_current(&format!(
                    r#"{{"version":"0.1.1","sha256":"{}"}}"#,
                    "ab".repeat(32)
                ));
            }),
            "sha256",
        ),
    ];
    let mut previous_error = String::new();
    for (name, make, expect) in cases {
        make();
        let s = dx.wait_status(
            &format!("last_error for {name}"),
            Duration::from_secs(20),
            |s| {
                let e = s["last_error"].as_str().unwrap_or("");
                e.contains(expect) && e != previous_error
            },
        );
        previous_error = s["last_error"].as_str().unwrap_or("").to_string();
        assert_eq!(pids(&s)[0], pid, "{name}: instance untouched");
        assert_eq!(s["instances"][0]["version"], "0.1.0", "{name}");
        assert_eq!(s["instances"][0]["crash_restarts"], 0, "{name}");
        assert_eq!(s["instances"][0]["forced_restarts"], 0, "{name}");
    }
    assert!(!site.store().join("escaped").exists());
    assert!(pid_alive(pid));
    // A good release afterwards clears the error and deploys.
    site.write_current(r#"{"version":"0.1.1"}"#);
    dx.wait_status(
        "0.1.1 deployed after the bad ones",
        Duration::from_secs(60),
        |s| all_running(s, "0.1.1") && s["last_error"].is_null(),
    );
}

#[test]
fn restarting_deployex_adopts_running_instances_and_sigterm_stops_them() {
    let mut site = Site::new(2).env("DEPLOYEX_STOP_APPS_ON_EXIT", "false");
    site.publish("0.1.0", &[]);
    let mut dx = site.start();
    let s = dx.wait_status("2 replicas running", Duration::from_secs(60), |s| {
        all_running(s, "0.1.0")
    });
    let before = pids(&s);
    let code = dx.stop_with(Signal::SIGTERM, Duration::from_secs(15));
    assert_eq!(code, Some(0));
    assert!(
        before.iter().all(|&p| pid_alive(p)),
        "apps keep running when DEPLOYEX_STOP_APPS_ON_EXIT=false"
    );

    // Start again, this time with the default (stop apps on exit).
    site.extra_env.clear();
    let mut dx = site.start();
    let s = dx.wait_status("adopted and running", Duration::from_secs(30), |s| {
        all_running(s, "0.1.0")
    });
    if pids(&s) != before {
        kill_pids(&before);
        panic!(
            "the same OS pids must be adopted: before {before:?}, after {:?}",
            pids(&s)
        );
    }
    assert_eq!(s["instances"][0]["crash_restarts"], 0);

    let started = Instant::now();
    let code = dx.stop_with(Signal::SIGTERM, Duration::from_secs(15));
    assert_eq!(code, Some(0));
    assert!(started.elapsed() < Duration::from_secs(15));
    // Adopted instances are not deployex's children (their parent is init
    // since the first deployex exited), so init reaps them: wait for that.
    common::wait_until_blocking("adopted instances gone", Duration::from_secs(5), || {
        before.iter().all(|p| !pid_alive(*p)).then_some(())
    });
}

#[test]
fn the_api_requires_a_valid_token() {
    let site = Site::new(1);
    let dx = site.start();
    use common::deployex::http;
    for path in ["/api/v1/status", "/api/v1/versions"] {
        assert_eq!(
            http(dx.api_port, "GET", path, None, None).0,
            401,
            "{path} without token"
        );
        assert_eq!(
            http(dx.api_port, "GET", path, Some("forged.token"), None).0,
            401,
            "{path} bad token"
        );
    }
    assert_eq!(
        http(
            dx.api_port,
            "POST",
            "/api/v1/instances/1/restart",
            None,
            Some("")
        )
        .0,
        401
    );
    let (code, body) = http(
        dx.api_port,
        "POST",
        "/api/v1/login",
        None,
        Some(r#"{"username":"admin","password":"wrong"}"#),
    );
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("error"));
    assert_eq!(
        http(dx.api_port, "GET", "/healthz", None, None),
        (200, "ok".to_string())
    );
    assert_eq!(
        http(
            dx.api_port,
            "GET",
            "/api/v1/status",
            dx.token.as_deref(),
            None
        )
        .0,
        200
    );
}
