//! Scope 2: deployment timing with the real fixture release: one instance's
//! boot, a rolling full deployment of 3 replicas (0.1.0 → 0.1.1) with
//! `stop_first` and with `start_first`, and an OTP hot upgrade (0.1.1 →
//! 0.1.2), each from the moment `current.json` changes. While a rollout
//! runs, every port of the pool is asked for `/version` at each poll: the
//! fewest that answered is the capacity the deployment left.
//!
//! Invariants: times are taken from the outside (the status API polled
//! every few ms, and the apps' own `/version`); a rollout only counts when
//! every app answers the new version, and the hot upgrade only counts as
//! one when every OS pid is unchanged.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::deployex::{APP, Deployex, Site, app_version, pids, running_on};
use crate::common::{Epmd, fixture_tarball, free_port, release_command, unpack_tarball};
use crate::peers::TICK_MS;
use crate::report::Samples;

/// How often the status API is polled while a rollout runs.
const STATUS_POLL: Duration = Duration::from_millis(10);
/// The store poll interval used here (deployex's default is 5000 ms).
pub const SCHEDULE_MS: u64 = 200;

/// One rollout, times in ms from the `current.json` write.
#[derive(Debug, Default)]
pub struct Rollout {
    /// deployex aims for the new version (`desired_version` or `deploying`).
    pub detect_ms: Option<f64>,
    /// Instance `i` (index i-1) first seen `running` on the new version.
    pub instance_done_ms: Vec<Option<f64>>,
    /// Every instance running the new version and every app answering it.
    pub total_ms: Option<f64>,
    /// Kinds recorded by deployex (`full_deployment`, `hot_upgrade`).
    pub kinds: Vec<String>,
    /// Every OS pid unchanged by the rollout.
    pub same_pids: bool,
    /// The fewest pool ports that answered `/version` at one poll.
    pub min_answering: Option<usize>,
    /// Polls taken.
    pub polls: usize,
}

impl Rollout {
    /// Time each instance added: instance 1 from detection, then from the
    /// previous instance's completion.
    pub fn per_instance_ms(&self) -> Samples {
        let mut out = Samples::default();
        let mut prev = self.detect_ms;
        for done in &self.instance_done_ms {
            if let (Some(p), Some(d)) = (prev, *done) {
                out.push(d - p);
            }
            prev = *done;
        }
        out
    }
}

#[derive(Debug, Default)]
pub struct DeployResult {
    pub boot_ms: Samples,
    pub full: Rollout,
    pub hot: Rollout,
    /// The same full deployment with `DEPLOYEX_DEPLOY_STRATEGY=start_first`.
    pub start_first: Rollout,
}

/// Boots and measures; panics with deployex's log on a stuck rollout.
pub fn run(boots: usize) -> DeployResult {
    let mut result = DeployResult {
        boot_ms: boot_times(boots),
        ..DeployResult::default()
    };
    let site = Site::new(3)
        .env("DEPLOYEX_MIN_READY_MS", "0")
        .env(
            "DEPLOYEX_DEPLOY_SCHEDULE_INTERVAL_MS",
            &SCHEDULE_MS.to_string(),
        )
        .env("DEPLOYEX_LOG", "info")
        .env("FIXTURE_TICK_MS", TICK_MS);
    site.publish("0.1.0", &[]);
    let dx = site.start();
    dx.wait_status("3 × 0.1.0", Duration::from_secs(120), |s| {
        running_on(s, "0.1.0")
    });
    eprintln!("[deploy] rolling full deployment 0.1.0 → 0.1.1 (stop_first)");
    result.full = rollout(&site, &dx, "0.1.1");
    eprintln!("[deploy] hot upgrade 0.1.1 → 0.1.2");
    result.hot = rollout(&site, &dx, "0.1.2");
    // BENCH_KEEP_LOG=FILE keeps deployex's log of the rollouts (timeline).
    if let Some(keep) = std::env::var_os("BENCH_KEEP_LOG") {
        let _ = std::fs::copy(site.dir.path().join("deployex.log"), keep);
    }
    drop(dx);
    drop(site);

    let mut site = Site::new(3)
        .env("DEPLOYEX_MIN_READY_MS", "0")
        .env(
            "DEPLOYEX_DEPLOY_SCHEDULE_INTERVAL_MS",
            &SCHEDULE_MS.to_string(),
        )
        .env("DEPLOYEX_DEPLOY_STRATEGY", "start_first")
        .env("DEPLOYEX_LOG", "info")
        .env("FIXTURE_TICK_MS", TICK_MS);
    // The pool: one spare port past the replicas'.
    site.app_port = crate::common::net::free_port_range(4);
    site.publish("0.1.0", &[]);
    let dx = site.start();
    dx.wait_status("3 × 0.1.0 (start_first)", Duration::from_secs(120), |s| {
        running_on(s, "0.1.0")
    });
    eprintln!("[deploy] rolling full deployment 0.1.0 → 0.1.1 (start_first)");
    result.start_first = rollout(&site, &dx, "0.1.1");
    result
}

/// `bin/dxtest start` of 0.1.1 until its port accepts, `n` times, each on
/// a fresh port, killed after.
fn boot_times(n: usize) -> Samples {
    let dir = tempfile::Builder::new()
        .prefix("bench-boot-")
        .tempdir()
        .expect("temp dir");
    let root = dir.path().join("rel");
    unpack_tarball(&fixture_tarball(APP, "0.1.1"), &root);
    let epmd = Epmd::new();
    let mut out = Samples::default();
    for _ in 0..n {
        let port = free_port();
        let mut child = release_command(&root, APP, &epmd)
            .arg("start")
            .env("PORT", port.to_string())
            .env("RELEASE_NODE_SUFFIX", "-boot")
            .env("RELEASE_COOKIE", "benchcookie")
            .env("FIXTURE_TICK_MS", TICK_MS)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn bin/dxtest start");
        let t0 = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                out.push(t0.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) || matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = child.wait();
    }
    out
}

/// Publishes `version` and follows the rollout until every instance runs it.
fn rollout(site: &Site, dx: &Deployex, version: &str) -> Rollout {
    let before = pids(&dx.status());
    site.publish_tarball(version);
    let current =
        serde_json::json!({"version": version, "pre_commands": [], "hash": format!("h{version}")});
    let t0 = Instant::now();
    site.write_current(&current.to_string());
    let ms = |t: Instant| t.duration_since(t0).as_secs_f64() * 1000.0;
    let mut r = Rollout {
        instance_done_ms: vec![None; before.len()],
        ..Rollout::default()
    };
    // Every port either strategy may use: the replicas' and one spare.
    let pool: Vec<u16> = (0..=before.len() as u16)
        .map(|i| site.app_port + i)
        .collect();
    loop {
        let answering = pool.iter().filter(|&&p| app_version(p).is_some()).count();
        r.min_answering = Some(r.min_answering.map_or(answering, |m| m.min(answering)));
        r.polls += 1;
        let s = dx.status();
        let now = Instant::now();
        if r.detect_ms.is_none()
            && (s["desired_version"] == version || s["deploying"]["version"] == version)
        {
            r.detect_ms = Some(ms(now));
        }
        if let Some(instances) = s["instances"].as_array() {
            for (i, inst) in instances.iter().enumerate() {
                if r.instance_done_ms[i].is_none()
                    && inst["version"] == version
                    && inst["state"] == "running"
                {
                    r.instance_done_ms[i] = Some(ms(now));
                }
            }
        }
        if running_on(&s, version) {
            // Where each instance listens now (start-first moves them).
            let ports: Vec<u16> = s["instances"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i["port"].as_u64())
                        .map(|p| p as u16)
                        .collect()
                })
                .unwrap_or_default();
            if ports
                .iter()
                .all(|&p| app_version(p).is_some_and(|(v, _)| v == version))
            {
                r.total_ms = Some(ms(Instant::now()));
                r.kinds = s["instances"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|i| i["last_deployment"].as_str().unwrap_or("?").to_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                r.same_pids = pids(&s) == before;
                return r;
            }
        }
        if t0.elapsed() > Duration::from_secs(180) {
            panic!(
                "rollout to {version} not done in 180 s\nstatus: {s:#}\nlog:\n{}",
                dx.log_tail(60)
            );
        }
        std::thread::sleep(STATUS_POLL);
    }
}
