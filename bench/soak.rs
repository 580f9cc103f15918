//! Soak run (not a unit test): `make soak`, `SOAK_MINUTES` (default 15),
//! `SOAK_SEED` to replay a run's event sequence. Release build of deployex,
//! 3 replicas of the real fixture releases.
//!
//! Until the deadline, every 3–9 s (random) one event: `kill -9` of a
//! running, *stable* instance's BEAM (never the instance being deployed nor
//! one already on the new version, and only once it has been up for
//! `STABLE_AFTER`: deployex counts crashes without a stable period in
//! between as a crash loop, and kills every ~15 s of the same instance
//! would rightly ghost a good version, which a 15-minute run did), or a
//! publish of a good version (0.1.0/0.1.1/0.1.2:
//! full deploys and hot upgrades) or of a crashing one (0.2.0 dies at boot,
//! 0.3.0 after 3 s: both rolled back and ghosted). Meanwhile the API status
//! and the dashboard page are fetched every ~200 ms with a session token;
//! every answer must be 200.
//!
//! At the end: a good version is published and must run everywhere; exactly
//! one BEAM per instance (the status's pids) and none after deployex stops;
//! deployex's RSS grew by at most 1 MiB (and so did its anonymous part:
//! heap, stacks) and its open fd count by at most a few since the warm-up
//! sample (each sample: the lowest over 65 s idle, see `SAMPLE_WINDOW`;
//! the binary is read into the page cache first, see `warm_page_cache`).
//! Prints a table (docs/BENCHMARKS.md "Soak").
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
/// The compare bench's /proc helpers.
#[path = "compare/procfs.rs"]
#[allow(dead_code)]
mod procfs;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::deployex::{Deployex, Site, http, pids, running_on};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const GOOD: [&str; 3] = ["0.1.0", "0.1.1", "0.1.2"];
const CRASHING: [&str; 2] = ["0.2.0", "0.3.0"];
/// Allowed RSS growth after warm-up.
const MAX_RSS_GROWTH_KIB: i64 = 1024;
/// Allowed change of the open fd count after warm-up (a connection being
/// accepted or closed while sampling).
const MAX_FD_DRIFT: i64 = 3;
const POLL: Duration = Duration::from_millis(200);

fn status_kib(pid: i32, field: &str) -> i64 {
    procfs::status_number(pid, field).map_or(0, |v| v as i64)
}

fn rss_kib(pid: i32) -> i64 {
    status_kib(pid, "VmRSS:")
}

fn fd_count(pid: i32) -> i64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as i64)
        .unwrap_or(0)
}

fn beams(site: &Site) -> BTreeSet<i32> {
    deployex_actors::process::pids_running_under(&site.var())
        .into_iter()
        .collect()
}

/// current.json names `version`; its tarball is copied once only, so a
/// tarball deployex may be reading is never rewritten under it.
fn publish(site: &Site, version: &str) {
    let tarball = site
        .store()
        .join("dist")
        .join(common::deployex::APP)
        .join(format!("{}-{version}.tar.gz", common::deployex::APP));
    if !tarball.exists() {
        site.publish_tarball(version);
    }
    site.write_current(
        &serde_json::json!({"version": version, "hash": format!("h{version}")}).to_string(),
    );
}

fn ghosted(s: &Value) -> Vec<String> {
    s["ghosted_versions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Default)]
struct Counts {
    kills: u32,
    good_publishes: u32,
    crash_publishes: u32,
    polls: u32,
}

/// Fetches the status and the dashboard page; both must answer 200.
fn poll(dx: &Deployex, counts: &mut Counts) -> Value {
    let token = dx.token.as_deref();
    let (code, body) = http(dx.api_port, "GET", "/", token, None);
    assert_eq!(code, 200, "dashboard: {body}\n{}", dx.log_tail(40));
    counts.polls += 1;
    dx.status()
}

/// deployex unmaps its clean code pages every 60 s (ARCHITECTURE.md,
/// "Memory"), so its RSS saw-tooths by up to ~1 MiB of code between two
/// trims. A sample is the lowest value over a window longer than that
/// period, idle (no events, no polls): the same post-trim state at the
/// start and at the end, so what remains is growth.
const SAMPLE_WINDOW: Duration = Duration::from_secs(65);

/// One settled sample.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss: i64,
    anon: i64,
    file: i64,
    fds: i64,
}

/// The lowest RSS, anonymous RSS and fd count over [`SAMPLE_WINDOW`]: a
/// request in flight, a transient buffer or code not yet trimmed is not
/// growth.
fn settled_sample(pid: i32) -> Sample {
    let mut out = Sample {
        rss: i64::MAX,
        anon: i64::MAX,
        file: i64::MAX,
        fds: i64::MAX,
    };
    let until = Instant::now() + SAMPLE_WINDOW;
    while Instant::now() < until {
        out.rss = out.rss.min(rss_kib(pid));
        out.anon = out.anon.min(status_kib(pid, "RssAnon:"));
        out.file = out.file.min(status_kib(pid, "RssFile:"));
        out.fds = out.fds.min(fd_count(pid));
        std::thread::sleep(POLL);
    }
    out
}

/// Reads the deployex binary once so that all of it is in the page cache
/// before deployex starts.
///
/// deployex's code pages are file-backed and unmapped every 60 s (the
/// trim); a code fault then maps its page *and the neighbours that are in
/// the page cache* (the kernel's 64-KiB fault-around). With a binary that
/// is mostly out of the cache (an old build: `fincore` showed 28 KiB of
/// 14.4 MiB), each fault at the start of a run maps one page, and as the
/// run reads more of the file in, the same faults map up to 16: the
/// post-trim RSS climbed 2.3–2.7 MiB over a run with no byte of growth in
/// deployex (anonymous memory +0.2 MiB). With the whole file cached from
/// the start, both samples see the same fault-around and total RSS growth
/// is growth again.
fn warm_page_cache(bin: &std::path::Path) {
    let bytes = std::fs::read(bin).unwrap_or_else(|e| panic!("read {}: {e}", bin.display()));
    println!(
        "soak: {} ({} KiB) read into the page cache",
        bin.display(),
        bytes.len() / 1024
    );
}

/// Readiness of the soak's deployex (a crashing version dies inside it).
const MIN_READY_MS: u64 = 9000;
/// Ready this long, an instance's crash counter starts over.
const BACKOFF_RESET_MS: u64 = 3000;
/// Only instances up this long are killed: ready (min_ready) and then
/// stable (backoff reset), plus 5 s for a slow boot or node connection.
const STABLE_AFTER: Duration = Duration::from_millis(MIN_READY_MS + BACKOFF_RESET_MS + 5000);

fn main() {
    let minutes: f64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15.0);
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        });
    println!("soak: {minutes} min, SOAK_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    // The rollback settings of tests/safety.rs: a crashing version dies
    // inside min_ready, twice, and is ghosted.
    let site = Site::new(3)
        .env("DEPLOYEX_ROLLBACK_CRASHES", "2")
        .env("DEPLOYEX_BACKOFF_BASE_MS", "200")
        .env("DEPLOYEX_MIN_READY_MS", &MIN_READY_MS.to_string())
        .env("DEPLOYEX_BACKOFF_RESET_MS", &BACKOFF_RESET_MS.to_string())
        .env("DEPLOYEX_LOG", "info");
    publish(&site, "0.1.0");
    warm_page_cache(&common::deployex::deployex_bin());
    let mut dx = site.start();
    let dpid = dx.pid();
    let started = Instant::now();
    dx.wait_status("3 x 0.1.0", Duration::from_secs(180), |s| {
        running_on(s, "0.1.0")
    });
    let mut desired = "0.1.0";
    let mut counts = Counts::default();

    let total = Duration::from_secs_f64(minutes * 60.0);
    let deadline = started + total;
    // Warm-up: the first deploy, a hot-upgradable pair and a crash cycle
    // have touched every code path once before the baseline is taken.
    let warmup_until = started + total.mul_f64(0.2).max(Duration::from_secs(30));
    let mut baseline: Option<Sample> = None;
    let mut rss_max = 0i64;
    let mut next_event = Instant::now() + Duration::from_secs(3);

    while Instant::now() < deadline {
        assert!(
            dx.child.as_mut().unwrap().try_wait().unwrap().is_none(),
            "deployex exited:\n{}",
            dx.log_tail(60)
        );
        let s = poll(&dx, &mut counts);
        if baseline.is_none() && Instant::now() >= warmup_until && s["deploying"].is_null() {
            let b = settled_sample(dpid);
            println!(
                "soak: baseline after warm-up: RSS {} KiB (anonymous {}, file {}), {} fds",
                b.rss, b.anon, b.file, b.fds
            );
            baseline = Some(b);
            next_event = Instant::now() + Duration::from_secs(1);
        }
        rss_max = rss_max.max(rss_kib(dpid));

        if Instant::now() >= next_event {
            next_event = Instant::now() + Duration::from_millis(rng.random_range(3000..9000));
            let roll: u32 = rng.random_range(0..10);
            if roll < 6 {
                // kill -9 a running instance outside the deployment: not
                // the one being deployed, not one already on the new version.
                let busy = &s["deploying"];
                let running: Vec<i32> = s["instances"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .enumerate()
                    .filter(|(n, i)| {
                        i["state"] == "running"
                            && i["uptime_s"]
                                .as_u64()
                                .is_some_and(|u| u >= STABLE_AFTER.as_secs())
                            && (busy.is_null()
                                || (busy["instance"] != *n as u64 + 1
                                    && busy["version"] != i["version"]))
                    })
                    .filter_map(|(_, i)| i["os_pid"].as_i64())
                    .map(|p| p as i32)
                    .filter(|&p| p > 0)
                    .collect();
                if !running.is_empty() {
                    let pid = running[rng.random_range(0..running.len())];
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    counts.kills += 1;
                }
            } else if roll < 8 {
                let ghosts = ghosted(&s);
                let choices: Vec<&str> = GOOD
                    .iter()
                    .copied()
                    .filter(|v| *v != desired && !ghosts.iter().any(|g| g == v))
                    .collect();
                if !choices.is_empty() {
                    desired = choices[rng.random_range(0..choices.len())];
                    publish(&site, desired);
                    counts.good_publishes += 1;
                }
            } else {
                let v = CRASHING[rng.random_range(0..CRASHING.len())];
                publish(&site, v);
                counts.crash_publishes += 1;
            }
        }
        std::thread::sleep(POLL);
    }

    // Converge on a good version.
    let s = dx.status();
    let ghosts = ghosted(&s);
    let last = *GOOD
        .iter()
        .rev()
        .find(|v| **v != desired && !ghosts.iter().any(|g| g == *v))
        .or_else(|| GOOD.iter().find(|v| !ghosts.iter().any(|g| g == *v)))
        .unwrap_or_else(|| panic!("every good version ghosted: {s:#}"));
    publish(&site, last);
    let converge_start = Instant::now();
    let s = dx.wait_status(
        &format!("3 x {last} after the soak"),
        Duration::from_secs(300),
        |s| running_on(s, last) && s["deploying"].is_null(),
    );
    let converged_in = converge_start.elapsed();

    // Exactly the status's BEAMs run under the site (a killed one may take
    // a moment to be reaped).
    let expected: BTreeSet<i32> = pids(&s).into_iter().collect();
    let beam_deadline = Instant::now() + Duration::from_secs(20);
    let mut found = beams(&site);
    while found != expected && Instant::now() < beam_deadline {
        std::thread::sleep(POLL);
        found = beams(&site);
    }
    assert_eq!(found, expected, "BEAMs under the site vs. the status");
    assert_eq!(found.len(), 3);

    let base = baseline.expect("no baseline sample: run longer");
    // Quiet again: let the last connections close before the final sample.
    let end = settled_sample(dpid);
    let (base_rss, base_fds, end_rss, end_fds) = (base.rss, base.fds, end.rss, end.fds);
    let history = dx.get("/api/v1/versions");
    let rows = history.as_array().map(Vec::len).unwrap_or(0);
    let rollbacks = history
        .as_array()
        .map(|a| a.iter().filter(|r| r["deployment"] == "rollback").count())
        .unwrap_or(0);

    let code = dx.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(60));
    let stop_deadline = Instant::now() + Duration::from_secs(30);
    let mut left = beams(&site);
    while !left.is_empty() && Instant::now() < stop_deadline {
        std::thread::sleep(POLL);
        left = beams(&site);
    }

    println!();
    println!(
        "deployex soak: {minutes} min, 3 replicas, seed {seed}, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| metric | value |");
    println!("|---|---|");
    println!("| kill -9 of an instance | {} |", counts.kills);
    println!("| good versions published | {} |", counts.good_publishes);
    println!(
        "| crashing versions published | {} (ghosted: {}) |",
        counts.crash_publishes,
        ghosted(&s).join(", ")
    );
    println!("| history rows / rollbacks | {rows} / {rollbacks} |");
    println!("| dashboard + status polls (all 200) | {} |", counts.polls);
    println!(
        "| final convergence on {last} | {:.1} s |",
        converged_in.as_secs_f64()
    );
    println!(
        "| deployex RSS after warm-up → end (max) | {base_rss} → {end_rss} KiB ({:+} KiB; max {rss_max}) |",
        end_rss - base_rss
    );
    println!(
        "| … of which anonymous (heap, stacks) | {} → {} KiB ({:+} KiB) |",
        base.anon,
        end.anon,
        end.anon - base.anon
    );
    println!(
        "| … file-backed (code) | {} → {} KiB ({:+} KiB) |",
        base.file,
        end.file,
        end.file - base.file
    );
    println!(
        "| deployex open fds after warm-up → end | {base_fds} → {end_fds} ({:+}) |",
        end_fds - base_fds
    );
    println!(
        "| BEAMs at the end / after SIGTERM of deployex | {} / {} (exit {code:?}) |",
        found.len(),
        left.len()
    );

    assert_eq!(code, Some(0), "deployex exit status");
    assert!(
        left.is_empty(),
        "orphan BEAMs after deployex stopped: {left:?}"
    );
    assert!(
        end_rss - base_rss <= MAX_RSS_GROWTH_KIB,
        "RSS grew {} KiB",
        end_rss - base_rss
    );
    assert!(
        end.anon - base.anon <= MAX_RSS_GROWTH_KIB,
        "anonymous RSS grew {} KiB",
        end.anon - base.anon
    );
    assert!(
        (end_fds - base_fds).abs() <= MAX_FD_DRIFT,
        "fd count {base_fds} -> {end_fds}"
    );
    println!("soak: PASS");
}
