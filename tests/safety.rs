//! End-to-end tests of the safety half of the DeployManager: rollback,
//! ghosting, manual mode, crash-proof state, store outages. Real releases,
//! real processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::deployex::{Site, kill_pids, pid_alive, pids, running_on};
use nix::sys::signal::Signal;
use serde_json::Value;

fn history(dx: &common::deployex::Deployex) -> Vec<Value> {
    dx.get("/api/v1/versions").as_array().unwrap().clone()
}

#[test]
fn a_crash_looping_version_is_rolled_back_ghosted_and_skipped() {
    // The crash-at-boot release dies 4-5 s after its start, after its node
    // answered: min_ready must cover that (like the 5 s default does).
    let site = Site::new(3)
        .env("DEPLOYEX_ROLLBACK_CRASHES", "2")
        .env("DEPLOYEX_BACKOFF_BASE_MS", "200")
        .env("DEPLOYEX_MIN_READY_MS", "9000");
    site.publish("0.1.1", &[]);
    let dx = site.start();
    let s = dx.wait_status("3 x 0.1.1", Duration::from_secs(90), |s| {
        running_on(s, "0.1.1")
    });
    let healthy = pids(&s);

    let published = Instant::now();
    site.publish("0.2.0", &[]);
    // Watch until instance 1 is back on 0.1.1 with 0.2.0 ghosted; 2 and 3
    // must never leave 0.1.1 (same pids all along).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = dx.status();
        assert_eq!(
            &pids(&s)[1..],
            &healthy[1..],
            "instances 2 and 3 untouched: {s:#}"
        );
        for i in [1, 2] {
            assert_eq!(s["instances"][i]["version"], "0.1.1");
        }
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
            dx.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = published.elapsed();
    println!(
        "crash-at-boot 0.2.0 published -> rollback complete: {took:?} (rollback_crashes=2, backoff base 200 ms)"
    );
    let h = history(&dx);
    assert_eq!(h[0]["deployment"], "rollback", "{h:#?}");
    assert_eq!(h[0]["version"], "0.1.1");
    assert_eq!(h[0]["instance"], 1);
    assert_eq!(h[1]["version"], "0.2.0");

    // current.json still names 0.2.0: no new attempt during 3 schedule
    // intervals (an observation window, not a synchronisation).
    let rows = h.len();
    let window = Instant::now() + Duration::from_millis(3 * 200 + 300);
    while Instant::now() < window {
        let s = dx.status();
        assert!(
            s["deploying"].is_null(),
            "no deployment of a ghosted version: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(history(&dx).len(), rows);

    // A newer version deploys normally.
    site.publish("0.1.2", &[]);
    dx.wait_status("3 x 0.1.2", Duration::from_secs(120), |s| {
        running_on(s, "0.1.2")
    });
}

#[test]
fn a_version_that_never_becomes_ready_is_rolled_back_after_the_timeout() {
    let site = Site::new(1).env("DEPLOYEX_DEPLOY_TIMEOUT_ROLLBACK_MS", "8000");
    site.publish("0.1.0", &[]);
    let dx = site.start();
    dx.wait_status("0.1.0 running", Duration::from_secs(60), |s| {
        running_on(s, "0.1.0")
    });
    // 0.4.0 serves HTTP but has Erlang distribution off: never ready.
    site.publish("0.4.0", &[]);
    dx.wait_status("0.4.0 starting", Duration::from_secs(60), |s| {
        s["instances"][0]["version"] == "0.4.0"
    });
    let s = dx.wait_status("rolled back to 0.1.0", Duration::from_secs(60), |s| {
        running_on(s, "0.1.0")
            && s["ghosted_versions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v == "0.4.0")
    });
    assert!(
        s["last_error"].as_str().unwrap_or("").contains("0.4.0"),
        "{s:#}"
    );
    assert_eq!(history(&dx)[0]["deployment"], "rollback");
    // Un-ghost through the API.
    let (code, body) = common::deployex::http(
        dx.api_port,
        "DELETE",
        "/api/v1/ghosted/0.4.0",
        dx.token.as_deref(),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let s = dx.status();
    assert!(
        s["ghosted_versions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v != "0.4.0")
    );
}

#[test]
fn manual_mode_pins_a_version_across_restarts_and_automatic_returns() {
    let site = Site::new(2).env("DEPLOYEX_STOP_APPS_ON_EXIT", "false");
    site.publish("0.1.0", &[]);
    let mut dx = site.start();
    dx.wait_status("2 x 0.1.0", Duration::from_secs(60), |s| {
        running_on(s, "0.1.0")
    });
    site.publish("0.1.1", &[]);
    dx.wait_status("2 x 0.1.1", Duration::from_secs(90), |s| {
        running_on(s, "0.1.1")
    });

    let (code, body) = dx.post("/api/v1/mode", r#"{"mode":"manual","version":"9.9.9"}"#);
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("9.9.9"));
    let (code, body) = dx.post("/api/v1/mode", r#"{"mode":"manual","version":"0.1.0"}"#);
    assert_eq!(code, 200, "{body}");
    let s = dx.wait_status("pinned 0.1.0 everywhere", Duration::from_secs(90), |s| {
        running_on(s, "0.1.0")
    });
    assert_eq!(s["mode"], "manual");
    assert_eq!(s["manual_version"], "0.1.0");

    // The mode survives a restart of deployex.
    assert_eq!(
        dx.stop_with(Signal::SIGTERM, Duration::from_secs(15)),
        Some(0)
    );
    let dx2 = site.start();
    let s = dx2.wait_status("still manual after restart", Duration::from_secs(30), |s| {
        running_on(s, "0.1.0")
    });
    assert_eq!(s["mode"], "manual");
    let window = Instant::now() + Duration::from_secs(2);
    while Instant::now() < window {
        assert!(
            running_on(&dx2.status(), "0.1.0"),
            "current.json (0.1.1) is ignored in manual mode"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, body) = dx2.post("/api/v1/mode", r#"{"mode":"automatic"}"#);
    assert_eq!(code, 200, "{body}");
    dx2.wait_status("back to 0.1.1", Duration::from_secs(90), |s| {
        running_on(s, "0.1.1") && s["mode"] == "automatic"
    });
    drop(dx2);
    drop(dx);
    // dx2 ran with STOP_APPS_ON_EXIT=false: stop what it left.
    let leftovers = [1, 2]
        .iter()
        .flat_map(|i| {
            deployex_actors::process::pids_running_under(&site.service(*i).join("current"))
        })
        .collect::<Vec<_>>();
    kill_pids(&leftovers);
}

#[test]
fn a_truncated_history_file_is_reported_and_deployex_runs() {
    let site = Site::new(1);
    let storage = site.var().join("storage").join(common::deployex::APP);
    std::fs::create_dir_all(&storage).unwrap();
    std::fs::write(
        storage.join("history.json"),
        b"{\"format\": 1, \"entries\": [{\"vers",
    )
    .unwrap();
    site.publish("0.1.0", &[]);
    let dx = site.start();
    dx.wait_status("0.1.0 running", Duration::from_secs(60), |s| {
        running_on(s, "0.1.0")
    });
    let log = dx.log_text();
    assert!(
        log.contains("history.json"),
        "the log names the broken file:\n{log}"
    );
    // The broken file was kept for the operator (renamed aside on the first save).
    let kept = std::fs::read_dir(&storage)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
    assert!(kept, "the truncated file is kept");
    let h: Value =
        serde_json::from_slice(&std::fs::read(storage.join("history.json")).unwrap()).unwrap();
    assert!(h.is_object());
}

#[test]
fn a_store_outage_touches_nothing_and_deploys_resume() {
    let site = Site::new(1);
    site.publish("0.1.0", &[]);
    let dx = site.start();
    let s = dx.wait_status("0.1.0 running", Duration::from_secs(60), |s| {
        running_on(s, "0.1.0")
    });
    let pid = pids(&s)[0];
    let store = site.store();
    let hidden = site.dir.path().join("store-away");
    std::fs::rename(&store, &hidden).unwrap();
    // The outage shows as last_error within a few schedule ticks (200 ms
    // here); from then on, 50 more ticks (10 s) touch nothing and log
    // nothing new: a restart or a line per tick would show within one
    // tick. (A fixed 30 s window before: 20 s of waiting for nothing.)
    let error_deadline = Instant::now() + Duration::from_secs(30);
    let mut saw_error_at: Option<Instant> = None;
    loop {
        let s = dx.status();
        assert_eq!(pids(&s)[0], pid, "instance untouched during the outage");
        assert_eq!(s["instances"][0]["state"], "running");
        if saw_error_at.is_none() && s["last_error"].as_str().is_some() {
            saw_error_at = Some(Instant::now());
        }
        match saw_error_at {
            Some(at) if at.elapsed() >= Duration::from_secs(10) => break,
            None => assert!(
                Instant::now() < error_deadline,
                "the outage never showed as last_error within 30 s"
            ),
            Some(_) => {}
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // Logged once per state change, not once per tick (5 per second here).
    let errors = dx.log_text().matches("release rejected").count();
    assert!(errors <= 2, "logged {errors} times");
    std::fs::rename(&hidden, &store).unwrap();
    site.publish("0.1.1", &[]);
    dx.wait_status("deploys resume", Duration::from_secs(60), |s| {
        running_on(s, "0.1.1") && s["last_error"].is_null()
    });
    assert!(!pid_alive(pid) || pids(&dx.status())[0] != pid);
}

#[test]
fn restarts_and_deployments_never_interleave() {
    let site = Site::new(3).env("DEPLOYEX_MIN_READY_MS", "3000");
    site.publish("0.1.0", &[]);
    let dx = site.start();
    dx.wait_status("3 x 0.1.0", Duration::from_secs(90), |s| {
        running_on(s, "0.1.0")
    });

    // A restart of another instance while a deployment runs: refused.
    site.publish("0.1.1", &[]);
    dx.wait_status("a deployment in progress", Duration::from_secs(60), |s| {
        !s["deploying"].is_null()
    });
    let pid3 = pids(&dx.status())[2];
    let (code, body) = dx.post("/api/v1/instances/3/restart", "");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("deployment is in progress"), "{body}");
    let s = dx.wait_status("3 x 0.1.1", Duration::from_secs(120), |s| {
        running_on(s, "0.1.1")
    });
    assert_eq!(s["instances"][2]["forced_restarts"], 0, "{s:#}");
    assert_ne!(pids(&s)[2], pid3, "instance 3 was deployed, not restarted");

    // A deployment published while an instance restarts waits for it, and
    // a second restart meanwhile is refused: never two instances down.
    let (code, body) = dx.post("/api/v1/instances/3/restart", "");
    assert_eq!(code, 202, "{body}");
    let (code, body) = dx.post("/api/v1/instances/2/restart", "");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("instance 3 is restarting"), "{body}");
    site.publish("0.1.0", &[]);
    let deadline = Instant::now() + Duration::from_secs(180);
    let (mut saw_restart, mut restart_done) = (false, false);
    loop {
        let s = dx.status();
        let states: Vec<String> = s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["state"].as_str().unwrap_or("?").to_string())
            .collect();
        let down = states.iter().filter(|st| *st != "running").count();
        assert!(down <= 1, "two instances down at once: {states:?}\n{s:#}");
        if saw_restart && states[2] == "running" {
            restart_done = true;
        }
        if !restart_done && states[2] != "running" && s["instances"][2]["forced_restarts"] == 1 {
            saw_restart = true;
            assert_eq!(
                s["instances"][0]["version"], "0.1.1",
                "no deployment step while instance 3 restarts: {s:#}"
            );
        }
        if running_on(&s, "0.1.0") {
            break;
        }
        assert!(Instant::now() < deadline, "no convergence: {s:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(saw_restart, "the restart of instance 3 was observed");
}

/// The beam processes of a site, wherever they run from.
fn beams(site: &Site) -> Vec<i32> {
    deployex_actors::process::pids_running_under(&site.var())
}

/// Regression: a deployex killed right after spawning an instance (point
/// `spawned`: before the pid file names the new process) left a process the
/// next deployex did not know; the stray scan looked only for BEAMs naming
/// `current/` in their command line, and the new process was still the
/// `bin/{app}` shell script: it became a second BEAM of the instance, which
/// then crash-looped on the duplicate node name. Strays are now found by an
/// environment marker (`DEPLOYEX_INSTANCE_DIR`) at every stage of a start.
#[test]
fn sigkill_at_every_step_of_a_rolling_deploy_converges() {
    let site = Site::new(2).env("DEPLOYEX_STOP_APPS_ON_EXIT", "false");
    // Apps outlive deployex here: kill them even when an assertion fails.
    struct KillBeams<'a>(&'a Site);
    impl Drop for KillBeams<'_> {
        fn drop(&mut self) {
            for i in 1..=2 {
                kill_pids(&deployex_actors::process::instance_roots(
                    &self.0.service(i),
                ));
            }
            kill_pids(&beams(self.0));
        }
    }
    let _cleanup = KillBeams(&site);
    site.publish("0.1.0", &[]);
    let mut dx = site.start();
    dx.wait_status("2 x 0.1.0", Duration::from_secs(60), |s| {
        running_on(s, "0.1.0")
    });
    assert_eq!(
        dx.stop_with(Signal::SIGTERM, Duration::from_secs(15)),
        Some(0)
    );
    let mut version = "0.1.0";
    // DEPLOYEX_TEST_POINTS=a,b limits the points (to investigate one).
    let only = std::env::var("DEPLOYEX_TEST_POINTS").ok();
    let points = deployex_actors::testhook::POINTS.iter().filter(|p| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|x| x == **p))
    });
    for point in points {
        version = if version == "0.1.0" { "0.1.1" } else { "0.1.0" };
        // Crash at `point` while deploying `version`.
        let mut dx = site.start_with(&[("DEPLOYEX_TEST_CRASH_AT", point)]);
        site.publish(version, &["eval Fixture.Migrator.migrate"]);
        let status = dx.wait_exit(Duration::from_secs(90));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "deployex killed itself at {point}:\n{}",
            dx.log_text()
        );
        assert!(
            dx.log_text()
                .contains(&format!("DEPLOYEX_TEST_CRASH_AT={point}"))
        );
        // Restart: it converges, with exactly one BEAM per instance.
        let dx = site.start();
        dx.wait_status(
            &format!("converged after a crash at {point}"),
            Duration::from_secs(120),
            |s| running_on(s, version),
        );
        // Exactly one BEAM per instance (a process being stopped may take a
        // moment to go: poll, then report what runs).
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut b = beams(&site);
        while b.len() != 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            b = beams(&site);
        }
        if b.len() != 2 {
            eprintln!("{}", dx.log_tail(80));
            for p in &b {
                let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                eprintln!(
                    "beam {p}: {}",
                    String::from_utf8_lossy(&cmd).replace('\0', " ")
                );
            }
        }
        assert_eq!(
            b.len(),
            2,
            "one beam per instance after a crash at {point}: {b:?}"
        );
        for i in 1..=2 {
            // Every process of the instance (shell, erlexec, BEAM, helpers)
            // hangs below one root: one copy.
            let roots = deployex_actors::process::instance_roots(&site.service(i));
            if roots.len() != 1 {
                for p in deployex_actors::process::instance_pids(&site.service(i)) {
                    let stat =
                        std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                    let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                    eprintln!(
                        "{p}: {stat}\n   {}",
                        String::from_utf8_lossy(&cmd).replace('\0', " ")
                    );
                }
            }
            assert_eq!(roots.len(), 1, "{point}: instance {i} roots {roots:?}");
            assert!(
                !site.service(i).join("new").exists(),
                "{point}: new/ cleaned"
            );
            assert!(
                site.service(i).join("current/bin").is_dir(),
                "{point}: current/ intact"
            );
        }
        let storage = site.var().join("storage").join(common::deployex::APP);
        for f in ["history.json", "ghosted.json", "mode.json"] {
            if let Ok(bytes) = std::fs::read(storage.join(f)) {
                serde_json::from_slice::<Value>(&bytes)
                    .unwrap_or_else(|e| panic!("{point}: {f} parses: {e}"));
            }
        }
        let mut dx = dx;
        assert_eq!(
            dx.stop_with(Signal::SIGTERM, Duration::from_secs(15)),
            Some(0)
        );
    }
}
