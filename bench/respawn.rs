//! Benchmark (not a test): crash → respawn latency and RSS of a supervisor
//! of 3 replicas of a real fixture release. `make bench` (release build).
//!
//! Two supervisors are measured the same way, in the same run:
//! - **floor**: this binary re-executed as a trivial supervisor (one thread,
//!   blocking `waitid` on any child, `killpg` of the dead group, respawn
//!   with the same environment deployex gives). It is the lower bound of
//!   this machine: kernel exit of a BEAM + fork/exec, nothing else.
//! - **deployex**: the release binary, with its whole actor tree.
//!
//! For each of N `kill -9`s of an instance's BEAM it measures, polling
//! `/proc` at ~0.2 ms: the time until the supervisor has a new child process
//! (respawn) and until the instance's port accepts connections again.
//! `DEPLOYEX_BACKOFF_RESET_MS=1` makes every kill a first crash, so this
//! measures deployex's immediate-restart path (later crashes back off on
//! purpose).
//!
//! `cargo bench --bench respawn [-- --floor | --deployex]` runs one side
//! only; `BENCH_KILLS` (default 30) sets the number of kills per side.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
/// The compare bench's /proc helpers (for its pidfd exit watcher).
#[path = "compare/procfs.rs"]
#[allow(dead_code)]
mod procfs;

use std::collections::{HashMap, HashSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::deployex::{APP, Site, free_port_range};
use common::{Epmd, fixture_tarball, unpack_tarball};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;

/// First argument that turns this binary into the floor supervisor.
const FLOOR_SUPERVISOR: &str = "__floor_supervisor";
const REPLICAS: usize = 3;

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

fn status_field(pid: i32, field: &str) -> u64 {
    procfs::status_number(pid, field).unwrap_or(0)
}

fn rss_kib(pid: i32) -> u64 {
    status_field(pid, "VmRSS:")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One side's results.
struct Samples {
    name: &'static str,
    respawn_ms: Vec<f64>,
    /// kill → the kernel reports the process exited.
    exit_ms: Vec<f64>,
    /// exited → new process: the supervisor's own latency.
    own_ms: Vec<f64>,
    port_ms: Vec<f64>,
    rss_start_kib: u64,
    rss_after_kib: u64,
    threads: u64,
    load_start: String,
    load_end: String,
}

/// Kills instance `k % 3` `kills` times and times the way back.
/// `current_pid(i)` waits until instance `i` is up and returns its pid.
fn measure(
    name: &'static str,
    kills: usize,
    supervisor: i32,
    app_port: u16,
    mut current_pid: impl FnMut(usize) -> i32,
) -> Samples {
    let rss_start_kib = rss_kib(supervisor);
    let load_start = loadavg();
    let mut respawn_ms = Vec::new();
    let mut exit_ms = Vec::new();
    let mut own_ms = Vec::new();
    let mut port_ms = Vec::new();
    for k in 0..kills {
        let instance = k % REPLICAS;
        let pid = current_pid(instance);
        let port = app_port + instance as u16;
        let before = children(supervisor);
        let exit = procfs::exit_watch(pid);
        let t0 = Instant::now();
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        let respawned = loop {
            let now = children(supervisor);
            if now.iter().any(|c| !before.contains(c) && *c != pid) {
                break t0.elapsed();
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "{name}: no respawn");
            std::thread::sleep(Duration::from_micros(200));
        };
        let accepting = loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{name}: port {port} never accepted"
            );
            std::thread::sleep(Duration::from_micros(500));
        };
        respawn_ms.push(respawned.as_secs_f64() * 1000.0);
        if let Some(exited) = exit.and_then(|w| w.join().ok().flatten()) {
            let exited = exited.saturating_duration_since(t0);
            exit_ms.push(exited.as_secs_f64() * 1000.0);
            own_ms.push(respawned.saturating_sub(exited).as_secs_f64() * 1000.0);
        }
        port_ms.push(accepting.as_secs_f64() * 1000.0);
    }
    respawn_ms.sort_by(f64::total_cmp);
    exit_ms.sort_by(f64::total_cmp);
    own_ms.sort_by(f64::total_cmp);
    port_ms.sort_by(f64::total_cmp);
    Samples {
        name,
        respawn_ms,
        exit_ms,
        own_ms,
        port_ms,
        rss_start_kib,
        rss_after_kib: rss_kib(supervisor),
        threads: status_field(supervisor, "Threads:"),
        load_start,
        load_end: loadavg(),
    }
}

fn print_table(kills: usize, results: &[Samples]) {
    println!(
        "crash->respawn benchmark ({kills} kill -9 per supervisor, {REPLICAS} replicas of a real mix release)"
    );
    println!(
        "| supervisor | respawn median (ms) | p90 | max | kernel: kill -> exited median (ms) | own: exited -> new process median (ms) | p90 | port accepting median (ms) | p90 | RSS start (MiB) | RSS after (MiB) | threads | load avg start -> end |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in results {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.1} | {:.1} | {} | {} -> {} |",
            s.name,
            percentile(&s.respawn_ms, 0.5),
            percentile(&s.respawn_ms, 0.9),
            s.respawn_ms[s.respawn_ms.len() - 1],
            percentile(&s.exit_ms, 0.5),
            percentile(&s.own_ms, 0.5),
            percentile(&s.own_ms, 0.9),
            percentile(&s.port_ms, 0.5),
            percentile(&s.port_ms, 0.9),
            s.rss_start_kib as f64 / 1024.0,
            s.rss_after_kib as f64 / 1024.0,
            s.threads,
            s.load_start,
            s.load_end,
        );
    }
    if let [floor, dx] = results {
        println!(
            "gap deployex - floor (median respawn): {:.2} ms",
            percentile(&dx.respawn_ms, 0.5) - percentile(&floor.respawn_ms, 0.5)
        );
        println!(
            "gap deployex - floor (median exited -> new process): {:.2} ms",
            percentile(&dx.own_ms, 0.5) - percentile(&floor.own_ms, 0.5)
        );
    }
}

fn bench_deployex(kills: usize) -> Samples {
    let site = Site::new(REPLICAS as u32)
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
    measure("deployex", kills, dx.pid(), site.app_port, |instance| {
        let s = dx.wait_status("all running", Duration::from_secs(60), running);
        s["instances"][instance]["os_pid"].as_i64().unwrap() as i32
    })
}

/// The floor: unpacks the fixture release once per replica, runs this
/// binary as a trivial supervisor of them, and measures it like deployex.
fn bench_floor(kills: usize) -> Samples {
    let dir = tempfile::Builder::new()
        .prefix("dx-floor-")
        .tempdir()
        .unwrap();
    let epmd = Epmd::new();
    let app_port = free_port_range(REPLICAS as u16);
    let tarball = fixture_tarball(APP, "0.1.0");
    for i in 1..=REPLICAS {
        unpack_tarball(&tarball, &dir.path().join(i.to_string()));
    }
    let mut sup = Command::new(std::env::current_exe().unwrap())
        .arg(FLOOR_SUPERVISOR)
        .env("FLOOR_DIR", dir.path())
        .env("FLOOR_PORT", app_port.to_string())
        .env("ERL_EPMD_PORT", epmd.port.to_string())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let sup_pid = sup.id() as i32;
    let pid_of = |instance: usize| -> Option<i32> {
        std::fs::read_to_string(dir.path().join(format!("pid-{}", instance + 1)))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    // All replicas up before the first kill, like deployex's "3 replicas running".
    let deadline = Instant::now() + Duration::from_secs(120);
    for instance in 0..REPLICAS {
        while pid_of(instance).is_none()
            || std::net::TcpStream::connect(("127.0.0.1", app_port + instance as u16)).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "floor: instance {instance} not up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Waits for a pid other than the one last returned (and so killed) for
    // `instance`, with its port accepting.
    let mut last: HashMap<usize, i32> = HashMap::new();
    let current_pid = |instance: usize| -> i32 {
        let port = app_port + instance as u16;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(pid) = pid_of(instance)
                && last.get(&instance) != Some(&pid)
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                last.insert(instance, pid);
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "floor: instance {instance} not up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let samples = measure("floor", kills, sup_pid, app_port, current_pid);
    // Supervisor first (so nothing respawns), then each instance's group.
    let _ = sup.kill();
    let _ = sup.wait();
    let mut killed = Vec::new();
    for instance in 0..REPLICAS {
        if let Some(pid) = pid_of(instance) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            killed.push(pid);
        }
    }
    // Gone before the Epmd guard drops: epmd refuses `-kill` while nodes
    // are registered, and would be left behind.
    let deadline = Instant::now() + Duration::from_secs(10);
    while killed
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(epmd);
    samples
}

/// The floor supervisor's body (runs in the re-executed binary).
fn floor_supervisor() {
    let dir = PathBuf::from(std::env::var("FLOOR_DIR").unwrap());
    let port: u16 = std::env::var("FLOOR_PORT").unwrap().parse().unwrap();
    let epmd = std::env::var("ERL_EPMD_PORT").unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    // The children are reaped by the waitid/waitpid loop below, not
    // through their `Child`.
    #[allow(clippy::zombie_processes)]
    let spawn = |i: usize| -> i32 {
        let root = dir.join(i.to_string());
        let log = |stream: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{APP}-{i}-{stream}.log")))
                .unwrap()
        };
        let child = Command::new(root.join("bin").join(APP))
            .arg("start")
            .current_dir(&root)
            .env_clear()
            .env("PATH", &path)
            .env("HOME", &dir)
            .env("RELEASE_NODE_SUFFIX", format!("-{i}"))
            .env("RELEASE_DISTRIBUTION", "sname")
            .env("RELEASE_COOKIE", "floorcookie")
            .env("PORT", (port + i as u16 - 1).to_string())
            .env("ERL_EPMD_PORT", &epmd)
            .env("ERL_CRASH_DUMP_SECONDS", "0")
            .stdin(Stdio::null())
            .stdout(log("stdout"))
            .stderr(log("stderr"))
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        write_pidfile(&dir.join(format!("pid-{i}")), pid);
        pid
    };
    let mut instances: HashMap<i32, usize> = (1..=REPLICAS).map(|i| (spawn(i), i)).collect();
    loop {
        // WNOWAIT: the zombie keeps the pgid reserved while we kill its group.
        let pid = match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)) => pid,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => panic!("waitid: {e}"),
        };
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        if let Some(i) = instances.remove(&pid.as_raw()) {
            instances.insert(spawn(i), i);
        }
    }
}

fn write_pidfile(path: &Path, pid: i32) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, pid.to_string()).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(FLOOR_SUPERVISOR) {
        floor_supervisor();
        return;
    }
    let floor = !args.iter().any(|a| a == "--deployex");
    let deployex = !args.iter().any(|a| a == "--floor");
    let kills: usize = std::env::var("BENCH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let mut results = Vec::new();
    if floor {
        results.push(bench_floor(kills));
    }
    if deployex {
        results.push(bench_deployex(kills));
    }
    print_table(kills, &results);
}
