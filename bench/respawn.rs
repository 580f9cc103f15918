//! Benchmark (not a test): crash → respawn latency and deployex's RSS with
//! 3 replicas of a real fixture release. `make bench` (release build).
//!
//! For each of N `kill -9`s of an instance's BEAM it measures, polling
//! `/proc` at ~0.2 ms: the time until deployex has a new child process
//! (respawn) and until the instance's port accepts connections again.
//! `DEPLOYEX_BACKOFF_RESET_MS=1` makes every kill a first crash, so this
//! measures the immediate-restart path (later crashes back off on purpose).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::deployex::Site;

fn children(pid: i32) -> HashSet<i32> {
    let mut out = HashSet::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(c.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() {
    let kills: usize = std::env::var("BENCH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let site = Site::new(3)
        .env("DEPLOYEX_BACKOFF_RESET_MS", "1")
        .env("DEPLOYEX_MIN_READY_MS", "0")
        .env("DEPLOYEX_LOG", "info");
    site.publish("0.1.0", &[]);
    let dx = site.start();
    let running = |s: &serde_json::Value| {
        s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] == "running")
    };
    dx.wait_status("3 replicas running", Duration::from_secs(120), running);
    let dpid = dx.pid();
    // Let the first polls and connections settle before measuring RSS.
    let rss_start = rss_kib(dpid);

    let mut respawn_ms = Vec::new();
    let mut port_ms = Vec::new();
    for k in 0..kills {
        let instance = k % 3;
        let s = dx.wait_status("all running", Duration::from_secs(60), running);
        let pid = s["instances"][instance]["os_pid"].as_i64().unwrap() as i32;
        let port = site.app_port + instance as u16;
        let before = children(dpid);
        let t0 = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let respawned = loop {
            let now = children(dpid);
            if now.iter().any(|c| !before.contains(c) && *c != pid) {
                break t0.elapsed();
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no respawn");
            std::thread::sleep(Duration::from_micros(200));
        };
        let accepting = loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break t0.elapsed();
            }
            if t0.elapsed() > Duration::from_secs(30) {
                panic!(
                    "port {port} never accepted; status {:#}\nlog:\n{}",
                    dx.status(),
                    dx.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_micros(500));
        };
        respawn_ms.push(respawned.as_secs_f64() * 1000.0);
        port_ms.push(accepting.as_secs_f64() * 1000.0);
    }
    let rss_after = rss_kib(dpid);
    respawn_ms.sort_by(f64::total_cmp);
    port_ms.sort_by(f64::total_cmp);
    println!(
        "deployex crash->respawn benchmark ({kills} kill -9, 3 replicas of a real mix release)"
    );
    println!("| metric | median | p90 | max |");
    println!("|---|---|---|---|");
    println!(
        "| crash -> new process (ms) | {:.2} | {:.2} | {:.2} |",
        percentile(&respawn_ms, 0.5),
        percentile(&respawn_ms, 0.9),
        respawn_ms[respawn_ms.len() - 1]
    );
    println!(
        "| crash -> port accepting (ms) | {:.0} | {:.0} | {:.0} |",
        percentile(&port_ms, 0.5),
        percentile(&port_ms, 0.9),
        port_ms[port_ms.len() - 1]
    );
    println!(
        "| deployex RSS, 3 replicas (MiB) | {:.1} at start | {:.1} after {kills} restarts | |",
        rss_start as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
}
