//! Health truth, end to end with the real binary and real releases:
//! readiness comes from the node's boot status (`init:get_status()`), not
//! from the clock; an instance still booting is killed at once when it is
//! replaced; deployex's own shutdown in the middle of a deployment leaves
//! no BEAM; a hung node is found by the liveness check; the memory
//! watchdog restarts an instance that grows past its limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::deployex::{Site, pids, running_on, site_instance_pids};
use nix::sys::signal::Signal;
use serde_json::Value;

fn instance(status: &Value, i: usize) -> &Value {
    &status["instances"][i - 1]
}

/// A release whose application fails in `start/2` 3 s into its boot (its
/// node answers on the distribution all along) is never ready with
/// `MIN_READY_MS=1000`: it is rolled back and ghosted on instance 1, and
/// instance 2 keeps its OS process throughout. Before readiness read the
/// boot status, instance 1 was "ready" after 1 s and the rollout moved on.
#[test]
fn a_release_failing_late_in_its_boot_is_never_ready_and_is_rolled_back() {
    let site = Site::new(2)
        .env("FIXTURE_SLOW_BOOT", "0.2.0:3000")
        .env("DEPLOYEX_MIN_READY_MS", "1000")
        .env("DEPLOYEX_ROLLBACK_CRASHES", "1");
    site.publish("0.1.0", &[]);
    let dx = site.start();
    let s = dx.wait_status("both on 0.1.0", Duration::from_secs(60), |s| {
        running_on(s, "0.1.0")
    });
    let before = pids(&s);
    assert_eq!(instance(&s, 1)["boot"], "started", "{s:#}");

    site.publish("0.2.0", &[]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut saw_booting = false;
    loop {
        let s = dx.status();
        let one = instance(&s, 1);
        assert!(
            !(one["version"] == "0.2.0" && one["state"] == "running"),
            "the failing release was called ready: {s:#}"
        );
        assert_eq!(
            instance(&s, 2)["os_pid"].as_i64().map(|p| p as i32),
            Some(before[1]),
            "instance 2 was touched: {s:#}"
        );
        assert_ne!(instance(&s, 2)["version"], "0.2.0", "{s:#}");
        if one["version"] == "0.2.0" && one["boot"] == "starting" && one["otp_connected"] == true {
            saw_booting = true;
        }
        let ghosted = s["ghosted_versions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "0.2.0");
        if ghosted && running_on(&s, "0.1.0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not rolled back in time: {s:#}\n{}",
            dx.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        saw_booting,
        "the node of 0.2.0 was seen answering while it booted"
    );
    let events = dx.get("/api/v1/events?limit=50");
    let kinds: Vec<(&str, &str)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap(),
                e["version"].as_str().unwrap_or(""),
            )
        })
        .collect();
    for want in [
        ("ghosted", "0.2.0"),
        ("rollback", "0.1.0"),
        ("deploy_started", "0.2.0"),
    ] {
        assert!(kinds.contains(&want), "{want:?} in {kinds:?}");
    }
}

/// Replacing an instance whose BEAM is still booting (a deployment that
/// arrives while it is `starting`) kills it at once instead of waiting the
/// stop timeout for a SIGTERM the booting VM ignores; and deployex's own
/// SIGTERM in the middle of a deployment, with the new BEAM booting,
/// leaves no BEAM behind.
#[test]
fn a_booting_instance_is_replaced_at_once_and_a_shutdown_mid_deploy_leaves_no_beam() {
    let site = Site::new(1)
        .env("FIXTURE_SLOW_BOOT", "0.1.0:60000")
        .env("DEPLOYEX_STOP_TIMEOUT_MS", "10000");
    site.publish("0.1.0", &[]);
    let mut dx = site.start();
    let s = dx.wait_status(
        "0.1.0 booting with its node up",
        Duration::from_secs(60),
        |s| instance(s, 1)["boot"] == "starting",
    );
    let booting = pids(&s)[0];
    // deployex dies; the booting instance stays for the next one to adopt.
    dx.stop_with(Signal::SIGKILL, Duration::from_secs(10));
    drop(dx);
    assert!(common::deployex::pid_alive(booting));

    site.publish("0.1.1", &[]);
    let started = Instant::now();
    let dx = site.start();
    let s = dx.wait_status("0.1.1 running", Duration::from_secs(60), |s| {
        running_on(s, "0.1.1")
    });
    let took = started.elapsed();
    assert!(
        !common::deployex::pid_alive(booting),
        "the booting BEAM is gone"
    );
    assert_ne!(pids(&s)[0], booting);
    assert!(
        took < Duration::from_secs(9),
        "replacing a booting instance took {took:?}: the 10 s stop timeout was waited\n{}",
        dx.log_tail(40)
    );
    eprintln!("booting instance replaced, new version ready in {took:?}");

    // Now a deployment of the slow-booting 0.1.0 over 0.1.1, and deployex
    // stopped while the new BEAM boots.
    site.publish("0.1.0", &[]);
    let s = dx.wait_status("0.1.0 deployed and booting", Duration::from_secs(60), |s| {
        instance(s, 1)["version"] == "0.1.0" && instance(s, 1)["boot"] == "starting"
    });
    let booting = pids(&s)[0];
    assert!(booting > 0);
    let mut dx = dx;
    let stopping = Instant::now();
    let code = dx.stop_with(Signal::SIGTERM, Duration::from_secs(30));
    assert_eq!(code, Some(0));
    let took = stopping.elapsed();
    assert!(!common::deployex::pid_alive(booting));
    let left = site_instance_pids(&site);
    assert!(left.is_empty(), "processes left after shutdown: {left:?}");
    assert!(
        took < Duration::from_secs(9),
        "shutdown waited the stop timeout for a booting BEAM: {took:?}"
    );
}

/// A BEAM that stops answering (SIGSTOP: alive to the kernel, silent on
/// the distribution) is found by the liveness check and replaced: a new
/// process serves its port within interval × failures + 5 s, the restart is
/// counted as `liveness` (not as a crash), and the other instance is not
/// touched.
#[test]
fn a_hung_instance_is_killed_and_restarted_by_the_liveness_check() {
    let site = Site::new(2)
        .env("DEPLOYEX_LIVENESS_INTERVAL_MS", "1000")
        .env("DEPLOYEX_LIVENESS_FAILURES", "3");
    site.publish("0.1.0", &[]);
    let dx = site.start();
    let s = dx.wait_status("both on 0.1.0", Duration::from_secs(60), |s| {
        running_on(s, "0.1.0")
    });
    let before = pids(&s);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(before[0]), Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let port = site.app_port;
    let (version, pid) = common::wait_until_blocking(
        "a new process serving instance 1's port",
        Duration::from_secs(30),
        || {
            let (v, p) = common::deployex::app_version(port)?;
            (p != before[0].to_string()).then_some((v, p))
        },
    );
    let took = stopped.elapsed();
    eprintln!("hung instance replaced and serving after {took:?} (new pid {pid}, {version})");
    assert!(
        took <= Duration::from_secs(3 + 5),
        "took {took:?} > interval × failures + 5 s"
    );
    assert!(
        !common::deployex::pid_alive(before[0]),
        "the hung BEAM is gone"
    );
    let s = dx.wait_status("instance 1 running again", Duration::from_secs(30), |s| {
        running_on(s, "0.1.0")
    });
    let one = instance(&s, 1);
    assert_eq!(one["last_restart_reason"], "liveness", "{s:#}");
    assert_eq!(one["liveness_restarts"], 1, "{s:#}");
    assert_eq!(one["crash_restarts"], 0, "{s:#}");
    assert_eq!(pids(&s)[1], before[1], "instance 2 untouched");
    assert_eq!(instance(&s, 2)["liveness_restarts"], 0);
    let events = dx.get("/api/v1/events?limit=20");
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "restart"
                && e["instance"] == 1
                && e["message"].as_str().unwrap().contains("liveness")),
        "{events:#}"
    );
}

/// An instance made to hold 200 MB more than the memory watchdog's limit
/// allows is restarted alone (graceful stop, then start), counted as
/// `memory`.
#[test]
fn the_memory_watchdog_restarts_an_instance_over_its_limit() {
    let site = Site::new(2)
        .env("DEPLOYEX_BEAM_SAMPLE_MS", "500")
        .env("DEPLOYEX_WATCHDOG_MEMORY_MB", "250");
    site.publish("0.1.0", &[]);
    let dx = site.start();
    let s = dx.wait_status("both on 0.1.0", Duration::from_secs(60), |s| {
        running_on(s, "0.1.0")
    });
    let before = pids(&s);
    // Stays under the limit while idle: nothing is restarted.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(pids(&dx.status()), before, "an idle instance was restarted");

    let current = site.service(2).join("current");
    let out = common::release_command(&current, common::deployex::APP, &site.epmd)
        .env("RELEASE_NODE_SUFFIX", "-2")
        .env("RELEASE_DISTRIBUTION", "sname")
        .env("RELEASE_COOKIE", "e2ecookie")
        .args([
            "rpc",
            r#":persistent_term.put(:watchdog_test, :binary.copy("x", 200_000_000))"#,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "rpc: {out:?}");
    let s = dx.wait_status(
        "instance 2 restarted by the watchdog",
        Duration::from_secs(30),
        |s| {
            instance(s, 2)["watchdog_restarts"] == 1
                && instance(s, 2)["last_restart_reason"] == "memory"
                && running_on(s, "0.1.0")
        },
    );
    let two = instance(&s, 2);
    assert_eq!(two["last_restart_reason"], "memory", "{s:#}");
    assert_ne!(pids(&s)[1], before[1]);
    assert_eq!(pids(&s)[0], before[0], "instance 1 untouched");
    assert_eq!(two["crash_restarts"], 0);
}

/// A bug that panics inside a deployment step's task (here: right after
/// `new/` was unpacked) fails that step cleanly: the running version keeps
/// running, the error names the panic, and the release is retried, never
/// ghosted. Before, the panic vanished with its task, the instance stayed
/// `deploying` until the rollback timeout, and a good release was ghosted.
#[test]
fn a_panic_inside_a_deployment_step_fails_the_step_and_ghosts_nothing() {
    let site = Site::new(1)
        .env("DEPLOYEX_TEST_PANIC_AT", "new_unpacked")
        .env("DEPLOYEX_DEPLOY_TIMEOUT_ROLLBACK_MS", "6000");
    site.publish_tarball("0.1.0");
    // 0.1.0 gets in before the hook can fire: install it by hand.
    let service = site.service(1);
    std::fs::create_dir_all(&service).unwrap();
    common::unpack_tarball(
        &common::fixture_tarball(common::deployex::APP, "0.1.0"),
        &service.join("current"),
    );
    let dx = site.start();
    dx.wait_status("0.1.0 running", Duration::from_secs(60), |s| {
        running_on(s, "0.1.0")
    });
    site.publish("0.1.1", &[]);
    let s = dx.wait_status("the failed step reported", Duration::from_secs(30), |s| {
        instance(s, 1)["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("panicked"))
    });
    assert_eq!(instance(&s, 1)["version"], "0.1.0", "{s:#}");
    // Until well past the rollback timeout: nothing ghosted, never stuck
    // in `deploying` for more than a retry.
    let watch_until = Instant::now() + Duration::from_secs(9);
    let mut deploying_since: Option<Instant> = None;
    while Instant::now() < watch_until {
        let s = dx.status();
        assert_eq!(s["ghosted_versions"], serde_json::json!([]), "{s:#}");
        assert_eq!(instance(&s, 1)["version"], "0.1.0", "{s:#}");
        if instance(&s, 1)["state"] == "running" {
            deploying_since = None;
        } else {
            let since = *deploying_since.get_or_insert_with(Instant::now);
            assert!(
                since.elapsed() < Duration::from_secs(3),
                "stuck in {}: {s:#}",
                instance(&s, 1)["state"]
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
