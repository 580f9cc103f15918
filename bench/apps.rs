//! Benchmark (not a test): what several applications cost deployex. `make
//! bench-apps` (release build, docs/BENCHMARKS.md "Several applications").
//!
//! For each N in `BENCH_APPS` (default `1,5`): N differently named fixture
//! apps (real `mix release`s: `dxtest`, `dxsmoke`, then `dxbench3`…) ×
//! `BENCH_REPLICAS` (default 3) replicas, from one `[[apps]]` configuration
//! file, on their own temp dir, free ports and EPMD. deployex runs with its
//! production defaults (store polled every 5 s, `min_ready_ms` 5 s, BEAM
//! sampling and liveness every 5 s, log level info). The bench polls
//! `/api/v1/apps` (deadline `BENCH_READY_SECS`, default 300) until every
//! instance of every app is `running` on 0.1.0 with its node connected,
//! then stops polling the API: after `BENCH_SETTLE_SECS` (default 5) it
//! reads only `/proc` (once a second) for `BENCH_IDLE_SECS` (default 30).
//!
//! Measured: OS processes of the instances (found by the instance marker)
//! and how many are BEAMs, time from spawn to all ready, deployex's CPU
//! time until then, RSS at ready and after the idle window (and the
//! window's max; anonymous RSS too, since the code pages are trimmed
//! every 60 s), idle CPU % of one core (utime+stime of all threads, in
//! clock ticks: 10 ms = 0.033 % of 30 s; and the live threads' schedstat,
//! in ns), wake-ups/s (voluntary + involuntary context switches summed
//! over `/proc/PID/task/*/status`), threads, the BEAMs' own CPU over the
//! same window, and the SIGTERM → exit time. Then every instance process left
//! is killed by pid (there should be none: deployex stops them on
//! SIGTERM), and the count is printed. Prints a markdown table.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
/// The compare bench's /proc helpers.
#[path = "compare/procfs.rs"]
#[allow(dead_code)]
mod procfs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::apps::{app_pids, publish};
use common::deployex::{APP, Deployex, Site, deployex_bin, free_port_range, kill_pids, running_on};
use serde_json::Value;

const VERSION: &str = "0.1.0";

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// App `i` (0-based): the tests' two fixture apps first (their releases
/// are usually cached already), then `dxbench3`, `dxbench4`, …
fn app_name(i: usize) -> String {
    match i {
        0 => APP.to_string(),
        1 => "dxsmoke".to_string(),
        _ => format!("dxbench{}", i + 1),
    }
}

/// Kills, by pid, whatever is left of the apps' instances (the site's own
/// guard covers its first app only), and waits until they are gone so the
/// site's EPMD can stop.
struct AppsGuard<'a> {
    site: &'a Site,
    apps: Vec<String>,
    replicas: u32,
}

impl AppsGuard<'_> {
    fn pids(&self) -> Vec<i32> {
        self.apps
            .iter()
            .flat_map(|a| app_pids(self.site, a, self.replicas))
            .collect()
    }
}

impl Drop for AppsGuard<'_> {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.pids();
            if left.is_empty() || Instant::now() >= deadline {
                return;
            }
            kill_pids(&left);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn config_file(site: &Site, apps: &[String], replicas: u32) -> PathBuf {
    let mut text = format!(
        "monitored_replicas = {replicas}\nrelease_dir = \"{}\"\n",
        site.store().display()
    );
    for (i, app) in apps.iter().enumerate() {
        let port = if i == 0 {
            site.app_port
        } else {
            free_port_range(replicas as u16)
        };
        text.push_str(&format!(
            "\n[[apps]]\nmonitored_app_name = \"{app}\"\nmonitored_app_port = {port}\n"
        ));
    }
    let path = site.dir.path().join("deployex.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// deployex with `config`, host-wide settings only, production defaults
/// (unlike the tests' `start_with_config`, which polls the store every
/// 200 ms and logs at debug).
fn start(site: &Site, config: &Path) -> Deployex {
    common::apps::start_with_config_env(site, config, &[("DEPLOYEX_LOG", "info")])
}

/// Every app listed, each with `replicas` instances running `VERSION`
/// with their nodes connected.
fn all_ready(list: &Value, apps: &[String], replicas: u32) -> bool {
    let Some(list) = list.as_array() else {
        return false;
    };
    list.len() == apps.len()
        && apps.iter().all(|app| {
            list.iter().any(|s| {
                s["app"] == app.as_str()
                    && s["instances"]
                        .as_array()
                        .is_some_and(|i| i.len() == replicas as usize)
                    && running_on(s, VERSION)
            })
        })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One run's numbers.
struct Row {
    apps: usize,
    replicas: u32,
    processes: usize,
    beams: usize,
    ready_secs: f64,
    cpu_to_ready_secs: f64,
    rss_ready_kib: u64,
    rss_after_kib: u64,
    rss_max_kib: u64,
    idle_secs: f64,
    idle_cpu_pct: f64,
    idle_sched_pct: f64,
    anon_ready_kib: u64,
    anon_after_kib: u64,
    wakeups_per_sec: f64,
    threads: usize,
    beams_cpu_pct: f64,
    stop_secs: f64,
    exit_code: Option<i32>,
    left_after_stop: usize,
    load_start: String,
    load_end: String,
}

/// CPU time of the live threads in ns (`/proc/PID/task/*/schedstat`, first
/// field): the same CPU as utime+stime at nanosecond resolution instead of
/// clock ticks (10 ms = 0.033 % of a 30 s window). A thread that exits
/// during the window takes its time with it (an underestimate).
fn sched_ns(pid: i32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn anon_kib(pid: i32) -> u64 {
    procfs::status_number(pid, "RssAnon:").unwrap_or(0)
}

fn beams_cpu_secs(beams: &[i32]) -> f64 {
    beams.iter().filter_map(|p| procfs::cpu_secs(*p)).sum()
}

fn run(n_apps: usize, replicas: u32, settle: Duration, idle: Duration, ready_in: Duration) -> Row {
    let apps: Vec<String> = (0..n_apps).map(app_name).collect();
    let site = Site::new(replicas);
    let guard = AppsGuard {
        site: &site,
        apps: apps.clone(),
        replicas,
    };
    for app in &apps {
        publish(&site, app, VERSION);
    }
    let config = config_file(&site, &apps, replicas);
    let load_start = procfs::loadavg();
    println!(
        "apps: {n_apps} apps x {replicas} replicas ({}), load {load_start}",
        apps.join(", ")
    );
    let t0 = Instant::now();
    let mut dx = start(&site, &config);
    let pid = dx.pid();
    let deadline = t0 + ready_in;
    let mut last = Value::Null;
    loop {
        let (code, body) = common::deployex::http(
            site.api_port,
            "GET",
            "/api/v1/apps",
            dx.token.as_deref(),
            None,
        );
        if code == 200 {
            last = serde_json::from_str(&body).unwrap_or(Value::Null);
            if all_ready(&last, &apps, replicas) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not all {n_apps} x {replicas} running within {ready_in:?}\nlast /api/v1/apps: {last:#}\nlog tail:\n{}",
            dx.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready_secs = t0.elapsed().as_secs_f64();
    let cpu_to_ready_secs = procfs::cpu_secs(pid).unwrap_or(f64::NAN);
    let rss_ready_kib = procfs::rss_kib(pid).unwrap_or(0);
    let anon_ready_kib = anon_kib(pid);
    let processes = guard.pids().len();
    let beams = deployex_actors::process::pids_running_under(&site.var());
    println!(
        "apps: ready after {ready_secs:.1} s: {processes} instance processes, {} BEAMs",
        beams.len()
    );
    assert_eq!(
        beams.len(),
        n_apps * replicas as usize,
        "one BEAM per instance: {beams:?}"
    );

    // Settle (the last instances just turned running), then the idle
    // window: /proc only, no API request.
    std::thread::sleep(settle);
    let cpu0 = procfs::cpu_secs(pid).unwrap_or(f64::NAN);
    let ctx0 = procfs::context_switches(pid);
    let ns0 = sched_ns(pid);
    let beams_cpu0 = beams_cpu_secs(&beams);
    let w0 = Instant::now();
    let mut rss_max_kib = 0;
    while w0.elapsed() < idle {
        rss_max_kib = rss_max_kib.max(procfs::rss_kib(pid).unwrap_or(0));
        let left = idle.saturating_sub(w0.elapsed());
        std::thread::sleep(left.min(Duration::from_secs(1)));
    }
    let idle_secs = w0.elapsed().as_secs_f64();
    let cpu1 = procfs::cpu_secs(pid).unwrap_or(f64::NAN);
    let ctx1 = procfs::context_switches(pid);
    let ns1 = sched_ns(pid);
    let beams_cpu1 = beams_cpu_secs(&beams);
    let rss_after_kib = procfs::rss_kib(pid).unwrap_or(0);
    let anon_after_kib = anon_kib(pid);
    rss_max_kib = rss_max_kib.max(rss_after_kib);
    let threads = procfs::threads(pid);
    let load_end = procfs::loadavg();
    // Nothing restarted during the window (same BEAMs).
    let beams_after = deployex_actors::process::pids_running_under(&site.var());
    let mut a = beams.clone();
    let mut b = beams_after.clone();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b, "the BEAMs changed during the idle window");

    // Stop: SIGTERM, deployex stops the instances and exits.
    let s0 = Instant::now();
    let exit_code = dx.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(120));
    let stop_secs = s0.elapsed().as_secs_f64();
    let left_after_stop = guard.pids().len();
    if left_after_stop > 0 {
        println!("apps: {left_after_stop} instance processes left after deployex's exit: killed");
    }
    drop(guard);

    Row {
        apps: n_apps,
        replicas,
        processes,
        beams: beams.len(),
        ready_secs,
        cpu_to_ready_secs,
        rss_ready_kib,
        rss_after_kib,
        rss_max_kib,
        idle_secs,
        idle_cpu_pct: (cpu1 - cpu0) / idle_secs * 100.0,
        idle_sched_pct: ns1.saturating_sub(ns0) as f64 / 1e9 / idle_secs * 100.0,
        anon_ready_kib,
        anon_after_kib,
        wakeups_per_sec: ctx1.saturating_sub(ctx0) as f64 / idle_secs,
        threads,
        beams_cpu_pct: (beams_cpu1 - beams_cpu0) / idle_secs * 100.0,
        stop_secs,
        exit_code,
        left_after_stop,
        load_start,
        load_end,
    }
}

fn print_table(rows: &[Row], settle: Duration) {
    println!();
    println!("deployex with several applications ({})", procfs::machine());
    println!(
        "idle window {:.0} s after {} s settle; CPU in % of one core",
        rows.first().map_or(0.0, |r| r.idle_secs),
        settle.as_secs()
    );
    println!(
        "| apps × replicas | instance OS processes (BEAMs) | all ready after (s) | deployex CPU to ready (s) | RSS at ready (MiB) | RSS after idle (MiB) | RSS max in window (MiB) | anon RSS ready → after (MiB) | idle CPU, utime+stime (%) | idle CPU, schedstat (%) | wake-ups/s | threads | BEAMs' idle CPU, sum (%) | SIGTERM → exit (s) | left after exit | load avg start → end |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} × {} | {} ({}) | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} → {:.1} | {:.3} | {:.3} | {:.1} | {} | {:.1} | {:.1}{} | {} | {} → {} |",
            r.apps,
            r.replicas,
            r.processes,
            r.beams,
            r.ready_secs,
            r.cpu_to_ready_secs,
            mib(r.rss_ready_kib),
            mib(r.rss_after_kib),
            mib(r.rss_max_kib),
            mib(r.anon_ready_kib),
            mib(r.anon_after_kib),
            r.idle_cpu_pct,
            r.idle_sched_pct,
            r.wakeups_per_sec,
            r.threads,
            r.beams_cpu_pct,
            r.stop_secs,
            match r.exit_code {
                Some(0) => String::new(),
                other => format!(" (exit {other:?})"),
            },
            r.left_after_stop,
            r.load_start,
            r.load_end,
        );
    }
}

fn main() {
    let counts: Vec<usize> = std::env::var("BENCH_APPS")
        .unwrap_or_else(|_| "1,5".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect();
    assert!(!counts.is_empty(), "BENCH_APPS: a list like 1,5");
    let replicas: u32 = env_num("BENCH_REPLICAS", 3);
    let idle = Duration::from_secs(env_num("BENCH_IDLE_SECS", 30));
    let settle = Duration::from_secs(env_num("BENCH_SETTLE_SECS", 5));
    let ready_in = Duration::from_secs(env_num("BENCH_READY_SECS", 300));
    println!("apps: deployex {}", deployex_bin().display());
    let rows: Vec<Row> = counts
        .iter()
        .map(|&n| run(n, replicas, settle, idle, ready_in))
        .collect();
    print_table(&rows, settle);
}
