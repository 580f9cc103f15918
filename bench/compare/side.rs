//! Scope 1: the same workload under deployex, supervisord and PM2, measured
//! in one run: daemon RSS, crash → respawn and crash → port accepting over
//! `kill -9`s, idle CPU and wakeups, and the stop.
//!
//! Invariants: every peer is measured by the same code from the outside
//! (`/proc` and TCP connects), never through its own reporting; a kill is
//! only sent when the victim has been up ≥ 1.5 s and its supervisor sees
//! every copy up, so each kill exercises the supervisor's "restart a process
//! that was running fine" path (no peer's start-failure backoff applies).

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::peers::{self, Peer};
use crate::procfs;
use crate::report::Samples;

/// Minimum age of a process before it is killed (supervisord's
/// `startsecs` and PM2's `min_uptime` are 1 s).
const MIN_AGE_S: f64 = 1.5;

/// What one peer measured.
#[derive(Debug, Default)]
pub struct PeerResult {
    pub name: String,
    pub version: String,
    pub config: String,
    pub rss_start_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub threads: usize,
    pub respawn_ms: Samples,
    /// kill → the kernel reports the process exited (same for every peer).
    pub exit_ms: Samples,
    /// exit reported → new process: the supervisor's own share.
    pub own_ms: Samples,
    pub accept_ms: Samples,
    pub idle_cpu_pct: Option<f64>,
    pub idle_wakeups: Option<f64>,
    pub stop_ms: Option<f64>,
    pub left_at_exit: Option<usize>,
    pub apps_gone_ms: Option<f64>,
}

/// How the run is sized.
pub struct Plan {
    pub kills: usize,
    pub idle: Duration,
    pub poll: Duration,
}

/// Starts each peer named in `which` in turn, measures all of them, stops
/// them; results in the same order.
pub fn run(which: &[String], plan: &Plan) -> Vec<PeerResult> {
    let mut peers: Vec<Box<dyn Peer>> = Vec::new();
    for name in which {
        eprintln!("[side] starting {name}");
        let peer: Box<dyn Peer> = match name.as_str() {
            "deployex" => Box::new(peers::DeployexPeer::start()),
            "supervisord" => Box::new(peers::SupervisordPeer::start()),
            "pm2" => Box::new(peers::Pm2Peer::start()),
            other => panic!("unknown peer {other} (deployex, supervisord, pm2)"),
        };
        peers::wait_ready(peer.as_ref(), Duration::from_secs(120));
        peers.push(peer);
    }
    let mut results: Vec<PeerResult> = peers
        .iter()
        .map(|p| PeerResult {
            name: p.name().into(),
            version: p.version(),
            config: p.config_note(),
            rss_start_kib: procfs::rss_kib(p.daemon_pid()),
            threads: procfs::threads(p.daemon_pid()),
            ..PeerResult::default()
        })
        .collect();

    // Idle: all peers at once (they are independent; this keeps the run
    // short), nobody touching them during the window.
    eprintln!("[side] idle window {:?}", plan.idle);
    let before: Vec<(Option<f64>, u64)> = peers
        .iter()
        .map(|p| {
            (
                procfs::cpu_secs(p.daemon_pid()),
                procfs::context_switches(p.daemon_pid()),
            )
        })
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(plan.idle); // the measurement window itself
    let secs = t0.elapsed().as_secs_f64();
    for ((p, r), (cpu0, ctx0)) in peers.iter().zip(results.iter_mut()).zip(before) {
        let cpu1 = procfs::cpu_secs(p.daemon_pid());
        let ctx1 = procfs::context_switches(p.daemon_pid());
        r.idle_cpu_pct = cpu0.zip(cpu1).map(|(a, b)| (b - a) / secs * 100.0);
        r.idle_wakeups = Some(ctx1.saturating_sub(ctx0) as f64 / secs);
    }

    for (peer, r) in peers.iter_mut().zip(results.iter_mut()) {
        eprintln!("[side] {} × kill -9 under {}", plan.kills, peer.name());
        crash_loop(peer.as_ref(), plan, r);
        r.rss_after_kib = procfs::rss_kib(peer.daemon_pid());
        eprintln!("[side] stopping {}", peer.name());
        stop(peer.as_mut(), r, plan.poll);
    }
    drop(peers);
    results
}

/// `plan.kills` × SIGKILL of copy `k % 3`, timing the new process and the
/// port accepting again.
fn crash_loop(peer: &dyn Peer, plan: &Plan, r: &mut PeerResult) {
    let daemon = peer.daemon_pid();
    for k in 0..plan.kills {
        let port = peer.ports()[k % peer.ports().len()];
        let victim = wait_for_victim(peer, port);
        let before = procfs::children(daemon);
        let exit = procfs::exit_watch(victim);
        let t0 = Instant::now();
        kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill -9 the app");
        loop {
            if procfs::children(daemon).iter().any(|c| !before.contains(c)) {
                let respawned = t0.elapsed();
                r.respawn_ms.push(respawned.as_secs_f64() * 1000.0);
                if let Some(exited) = exit.and_then(|w| w.join().ok().flatten()) {
                    let exit = exited.saturating_duration_since(t0);
                    r.exit_ms.push(exit.as_secs_f64() * 1000.0);
                    r.own_ms
                        .push(respawned.saturating_sub(exit).as_secs_f64() * 1000.0);
                }
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{}: no new process 30 s after kill -9 {victim}\n{}",
                peer.name(),
                peer.diagnose()
            );
            std::thread::sleep(plan.poll);
        }
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                r.accept_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{}: port {port} not accepting 60 s after kill -9 {victim}\n{}",
                peer.name(),
                peer.diagnose()
            );
            std::thread::sleep(plan.poll);
        }
    }
}

/// The pid serving `port`, once it is old enough to kill and every copy is up.
fn wait_for_victim(peer: &dyn Peer, port: u16) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(pid) = peers::app_pid(peer.daemon_pid(), port)
            && procfs::age_secs(pid).is_some_and(|a| a >= MIN_AGE_S)
            && peers::all_accepting(peer.ports())
            && peer.apps_ready()
        {
            return pid;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{}: the app on port {port} was not up and ≥ {MIN_AGE_S} s old within 120 s\n{}",
            peer.name(),
            peer.diagnose()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops the peer its own way: time until the daemon is gone, apps still
/// alive at that moment, time until the last app is gone.
fn stop(peer: &mut dyn Peer, r: &mut PeerResult, poll: Duration) {
    let daemon = peer.daemon_pid();
    let apps: Vec<(i32, u64)> = procfs::children(daemon)
        .into_iter()
        .filter_map(|c| procfs::start_ticks(c).map(|s| (c, s)))
        .collect();
    let alive = |apps: &[(i32, u64)]| {
        apps.iter()
            .filter(|&&(p, s)| procfs::same_process_alive(p, s))
            .count()
    };
    let t0 = Instant::now();
    peer.begin_stop();
    while procfs::alive(daemon) && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(poll);
    }
    if !procfs::alive(daemon) {
        r.stop_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
        r.left_at_exit = Some(alive(&apps));
    }
    while alive(&apps) > 0 && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(poll);
    }
    if alive(&apps) == 0 {
        r.apps_gone_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
    }
    peer.finish_stop();
}
