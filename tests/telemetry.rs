//! BEAM telemetry end to end: the real `deployex` binary samples real
//! release nodes over distribution, and the samples reach the status API,
//! `/metrics` and the dashboard; a killed instance's sample goes with it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::deployex::{APP, Site, http, pids, running_on};
use nix::sys::signal::Signal;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const MIB: u64 = 1024 * 1024;

fn instances(status: &Value) -> &Vec<Value> {
    status["instances"].as_array().unwrap()
}

/// The instance has a plausible sample of a live BEAM.
fn sampled(i: &Value) -> bool {
    i["beam"]["memory_bytes"].as_u64().unwrap_or(0) > MIB
        && i["beam"]["processes"].as_u64().unwrap_or(0) > 10
        && i["beam"]["run_queue"].is_u64()
}

fn sampled_at(i: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(i["beam"]["sampled_at"].as_str().unwrap(), &Rfc3339).unwrap()
}

/// The value of the metric line `name{app="…",instance="i"} v`.
fn metric(body: &str, name: &str, instance: u32) -> Option<f64> {
    let prefix = format!("{name}{{app=\"{APP}\",instance=\"{instance}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
}

#[test]
fn beam_samples_reach_status_metrics_and_dashboard_and_die_with_their_node() {
    let site = Site::new(2);
    site.publish("0.1.0", &[]);
    let dx = site.start_with(&[("DEPLOYEX_BEAM_SAMPLE_MS", "300")]);

    let status = dx.wait_status(
        "both instances running with a BEAM sample",
        Duration::from_secs(90),
        |s| running_on(s, "0.1.0") && instances(s).iter().all(sampled),
    );
    // Two samples of one connection give a reductions rate (a running
    // BEAM always does some work).
    dx.wait_status(
        "a reductions rate for every instance",
        Duration::from_secs(10),
        |s| {
            instances(s)
                .iter()
                .all(|i| i["beam"]["reductions_per_s"].as_u64().unwrap_or(0) > 0)
        },
    );
    // Samples keep coming.
    let first = sampled_at(&instances(&status)[0]);
    dx.wait_status("a newer sample", Duration::from_secs(10), |s| {
        let i = &instances(s)[0];
        sampled(i) && sampled_at(i) > first
    });

    // The initial rollout was timed: one completed deployment per instance.
    let s = dx.status();
    let durations = &s["deploy_durations"];
    assert!(durations["count"].as_u64().unwrap() >= 2, "{s:#}");
    assert!(
        durations["last"]["duration_ms"].as_u64().unwrap() > 0,
        "{s:#}"
    );
    assert_eq!(durations["last"]["version"], "0.1.0");

    // /metrics: the same numbers per instance, and the deploy durations.
    let (code, body) = http(dx.api_port, "GET", "/metrics", dx.token.as_deref(), None);
    assert_eq!(code, 200, "{body}");
    for i in 1..=2 {
        let memory = metric(&body, "deployex_beam_memory_bytes", i);
        assert!(
            memory.is_some_and(|m| m > MIB as f64),
            "instance {i}:\n{body}"
        );
        let processes = metric(&body, "deployex_beam_processes", i);
        assert!(processes.is_some_and(|p| p > 10.0), "instance {i}:\n{body}");
        assert!(
            metric(&body, "deployex_beam_run_queue", i).is_some(),
            "{body}"
        );
    }
    let count = body
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "deployex_deploy_duration_seconds_count{{app=\"{APP}\"}} "
            ))
        })
        .and_then(|v| v.parse::<u64>().ok());
    assert!(count.is_some_and(|c| c >= 2), "{body}");

    // The dashboard draws the sample in human units.
    let (code, html) = http(dx.api_port, "GET", "/", dx.token.as_deref(), None);
    assert_eq!(code, 200);
    let memory_fields = html.matches("data-f=\"beam_memory\">").count();
    assert_eq!(memory_fields, 2, "{html}");
    assert_eq!(
        html.matches(" MiB</dd>").count(),
        2,
        "BEAM memory of both instances in MiB:\n{html}"
    );

    // kill -9 instance 1: its sample never outlives its connection, and a
    // new sample of the new BEAM arrives after the restart.
    let victim = pids(&dx.status())[0];
    let killed_at = OffsetDateTime::now_utc();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut saw_gap = false;
    loop {
        let s = dx.status();
        let i = &instances(&s)[0];
        if !i["beam"].is_null() {
            assert_eq!(i["otp_connected"], true, "a sample without a node: {i:#}");
        }
        let new_pid = i["os_pid"].as_i64().is_some_and(|p| p as i32 != victim);
        saw_gap |= i["beam"].is_null();
        if new_pid && i["state"] == "running" && sampled(i) && sampled_at(i) > killed_at {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no fresh sample after the restart: {s:#}\n{}",
            dx.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        saw_gap,
        "the killed node's sample was dropped before the new one"
    );
    drop(dx);

    // Sampling off: the same instances, connected, never sampled.
    let dx = site.start_with(&[("DEPLOYEX_BEAM_SAMPLE_MS", "0")]);
    dx.wait_status("running again", Duration::from_secs(60), |s| {
        running_on(s, "0.1.0")
    });
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let s = dx.status();
        assert!(
            instances(&s).iter().all(|i| i["beam"].is_null()),
            "sampled although DEPLOYEX_BEAM_SAMPLE_MS=0: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, body) = http(dx.api_port, "GET", "/metrics", dx.token.as_deref(), None);
    assert!(!body.contains("deployex_beam_memory_bytes{"), "{body}");
}
