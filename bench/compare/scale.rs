//! Scope 3: deployex with 200 replicas of a light process: its RSS, idle CPU
//! and wakeups, status API latency, the time to restart every instance after
//! a mass `kill -9`, and the stop.
//!
//! The light process: 200 BEAMs would need ~7 GB and minutes to boot, so
//! each instance runs a release-shaped tarball whose `bin/dxtest start`
//! (`/bin/sh`) execs this very benchmark binary in its `light-child` mode:
//! bind `127.0.0.1:$PORT`, accept and drop connections, nothing else (about
//! 1–2 MB RSS, no wakeups). deployex runs it with
//! `DEPLOYEX_OTP_READINESS=false` (there is no node to reach), so readiness
//! is "process alive" (+ `min_ready_ms` = 0).
//!
//! Invariant: every process started here is stopped at the end, by pid.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::deployex::{APP, Site, http};
use crate::peers::Leftovers;
use crate::procfs;
use crate::report::Samples;

/// The argument that turns this binary into a light child.
pub const LIGHT_CHILD_ARG: &str = "light-child";

/// Entry point of the light child: listen on `$PORT` until killed.
pub fn light_child() -> ! {
    let Some(port) = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
    else {
        eprintln!("light-child: PORT is unset or not a port number");
        std::process::exit(2);
    };
    let listener = match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("light-child: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    for conn in listener.incoming() {
        drop(conn);
    }
    std::process::exit(0);
}

#[derive(Debug, Default)]
pub struct ScaleResult {
    pub replicas: usize,
    pub initial_rollout_ms: Option<f64>,
    pub rss_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub threads: usize,
    pub child_rss_kib: Option<f64>,
    pub idle_secs: f64,
    pub idle_cpu_pct: Option<f64>,
    pub idle_wakeups: Option<f64>,
    pub status_ms: Samples,
    pub status_bytes: usize,
    pub mass_respawn_ms: Option<f64>,
    pub mass_accept_ms: Option<f64>,
    pub mass_running_ms: Option<f64>,
    pub stop_ms: Option<f64>,
    pub left_at_exit: Option<usize>,
}

/// The release-shaped tarball: `bin/dxtest` execs `exe light-child`, and
/// `releases/start_erl.data` names the version (deployex reads an instance's
/// version there, as in every `mix release`).
fn light_tarball(exe: &Path, version: &str, nodes: bool) -> Vec<u8> {
    let script = if nodes {
        // A bare Erlang node named like an instance (deployex connects to
        // it, checks its boot and, with liveness on, pings it), one
        // scheduler, nothing else.
        "#!/bin/sh\n# Light Erlang node for a release (bench/compare/scale.rs, BENCH_SCALE_NODES=1).\nexec erl -sname \"$RELEASE_NODE\" -setcookie \"$RELEASE_COOKIE\" -noshell -noinput +S 1:1 +A 1 +sbwt none +sbwtdcpu none +sbwtdio none\n".to_string()
    } else {
        format!(
            "#!/bin/sh\n# Light stand-in for a release (bench/compare/scale.rs): ignores its\n# arguments and listens on $PORT.\nexec '{}' {LIGHT_CHILD_ARG}\n",
            exe.display()
        )
    };
    let start_erl = format!("13.1.5 {version}\n");
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let entries: [(&str, Option<&[u8]>, u32); 4] = [
        ("bin/", None, 0o755),
        ("releases/", None, 0o755),
        (&format!("bin/{APP}"), Some(script.as_bytes()), 0o755),
        ("releases/start_erl.data", Some(start_erl.as_bytes()), 0o644),
    ];
    for (path, body, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(if body.is_some() {
            tar::EntryType::Regular
        } else {
            tar::EntryType::Directory
        });
        h.set_path(path).expect("tar path");
        h.set_mode(mode);
        h.set_size(body.map_or(0, |b| b.len() as u64));
        h.set_cksum();
        tar.append(&h, body.unwrap_or_default()).expect("tar entry");
    }
    let mut gz = tar.into_inner().expect("tar finish");
    gz.flush().expect("flush");
    gz.finish().expect("gzip finish")
}

pub fn run(replicas: usize, idle: Duration, status_requests: usize) -> ScaleResult {
    let mut r = ScaleResult {
        replicas,
        ..ScaleResult::default()
    };
    let exe = std::env::current_exe().expect("current_exe");
    // `BENCH_SCALE_NODES=1`: every instance is a bare Erlang node (about
    // 20 MB each) instead of a listener, so readiness, telemetry and
    // liveness run over real distribution links.
    let nodes = std::env::var("BENCH_SCALE_NODES").is_ok_and(|v| v == "1");
    let mut site = Site::new(replicas as u32)
        .env(
            "DEPLOYEX_OTP_READINESS",
            if nodes { "true" } else { "false" },
        )
        .env("DEPLOYEX_MIN_READY_MS", "0")
        .env("DEPLOYEX_BACKOFF_RESET_MS", "1")
        .env("DEPLOYEX_DEPLOY_SCHEDULE_INTERVAL_MS", "5000")
        .env("DEPLOYEX_LOG", "info");
    // `BENCH_DEPLOYEX_ENV="K=V;K=V"` as for the side-by-side part.
    for kv in std::env::var("BENCH_DEPLOYEX_ENV")
        .unwrap_or_default()
        .split(';')
        .filter(|kv| !kv.is_empty())
    {
        if let Some((k, v)) = kv.split_once('=') {
            site = site.env(k, v);
        }
    }
    site.publish_raw_tarball("0.1.0", &light_tarball(&exe, "0.1.0", nodes));
    site.write_current(r#"{"version":"0.1.0","pre_commands":[],"hash":"light"}"#);
    let t0 = Instant::now();
    let mut dx = site.start();
    let mut leftovers = Leftovers::default();
    let all_running = |s: &serde_json::Value| {
        s["instances"]
            .as_array()
            .is_some_and(|a| a.len() == replicas && a.iter().all(|i| i["state"] == "running"))
    };
    eprintln!("[scale] first rollout of {replicas} light instances");
    let s = dx.wait_status(
        "every light instance running",
        Duration::from_secs(400),
        all_running,
    );
    r.initial_rollout_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
    let dpid = dx.pid();
    leftovers.note_children_of(dpid);
    let ports: Vec<u16> = (0..replicas as u16).map(|i| site.app_port + i).collect();
    if !nodes {
        wait_accepting(&ports, Duration::from_secs(60)).expect("every light instance accepts");
    }
    r.rss_kib = procfs::rss_kib(dpid);
    r.threads = procfs::threads(dpid);
    let kids: Vec<u64> = procfs::children(dpid)
        .into_iter()
        .filter_map(procfs::rss_kib)
        .collect();
    if !kids.is_empty() {
        r.child_rss_kib = Some(kids.iter().sum::<u64>() as f64 / kids.len() as f64);
    }

    eprintln!("[scale] idle window {idle:?}");
    let cpu0 = procfs::cpu_secs(dpid);
    let ctx0 = procfs::context_switches(dpid);
    let w0 = Instant::now();
    std::thread::sleep(idle); // the measurement window itself
    r.idle_secs = w0.elapsed().as_secs_f64();
    r.idle_cpu_pct = cpu0
        .zip(procfs::cpu_secs(dpid))
        .map(|(a, b)| (b - a) / r.idle_secs * 100.0);
    r.idle_wakeups = Some(procfs::context_switches(dpid).saturating_sub(ctx0) as f64 / r.idle_secs);

    eprintln!("[scale] {status_requests} × GET /api/v1/status");
    for _ in 0..status_requests {
        let t = Instant::now();
        let (code, body) = http(
            dx.api_port,
            "GET",
            "/api/v1/status",
            dx.token.as_deref(),
            None,
        );
        r.status_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(code, 200, "status: {body}");
        r.status_bytes = body.len();
    }

    eprintln!("[scale] mass kill -9 of {replicas} instances");
    let victims: Vec<i32> = s["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["os_pid"].as_i64())
                .map(|p| p as i32)
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(victims.len(), replicas, "an os_pid per instance");
    let before: HashSet<i32> = procfs::children(dpid);
    let k0 = Instant::now();
    for &v in &victims {
        let _ = kill(Pid::from_raw(v), Signal::SIGKILL);
    }
    loop {
        let fresh = procfs::children(dpid)
            .iter()
            .filter(|c| !before.contains(c))
            .count();
        if fresh >= replicas {
            r.mass_respawn_ms = Some(k0.elapsed().as_secs_f64() * 1000.0);
            break;
        }
        if k0.elapsed() > Duration::from_secs(120) {
            eprintln!("[scale] only {fresh}/{replicas} respawned after 120 s");
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if let Some(ms) = wait_accepting(&ports, Duration::from_secs(120)) {
        r.mass_accept_ms = Some(k0.elapsed().as_secs_f64() * 1000.0);
        let _ = ms;
    }
    dx.wait_status(
        "every light instance running again",
        Duration::from_secs(120),
        all_running,
    );
    r.mass_running_ms = Some(k0.elapsed().as_secs_f64() * 1000.0);
    leftovers.note_children_of(dpid);
    r.rss_after_kib = procfs::rss_kib(dpid);

    eprintln!("[scale] stop");
    let apps: Vec<(i32, u64)> = procfs::children(dpid)
        .into_iter()
        .filter_map(|c| procfs::start_ticks(c).map(|s| (c, s)))
        .collect();
    let s0 = Instant::now();
    let _ = kill(Pid::from_raw(dpid), Signal::SIGTERM);
    while procfs::alive(dpid) && s0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(1));
    }
    if !procfs::alive(dpid) {
        r.stop_ms = Some(s0.elapsed().as_secs_f64() * 1000.0);
        r.left_at_exit = Some(
            apps.iter()
                .filter(|&&(p, st)| procfs::same_process_alive(p, st))
                .count(),
        );
    }
    if let Some(mut child) = dx.child.take() {
        let _ = child.wait();
    }
    leftovers.kill_survivors();
    r
}

/// Polls until every port accepts; the elapsed time, or `None` at the deadline.
fn wait_accepting(ports: &[u16], deadline: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut pending: Vec<u16> = ports.to_vec();
    loop {
        pending.retain(|&p| std::net::TcpStream::connect(("127.0.0.1", p)).is_err());
        if pending.is_empty() {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > deadline {
            eprintln!(
                "[scale] {} ports still closed: {:?}…",
                pending.len(),
                &pending[..pending.len().min(5)]
            );
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
