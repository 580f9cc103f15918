//! Rings, series and the sampler's parsers; the memory and cost figures
//! docs/BENCHMARKS.md quotes.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use super::sampler::{RESCAN_EVERY, disk_used_kib, host_cpu_jiffies, load1, mem_used_kib};
use std::sync::Arc;

use super::*;
use crate::config::EngineConfig;

#[test]
fn ring_keeps_the_newest_in_order_without_growing() {
    let mut r = Ring::new(3);
    assert!(r.last().is_none());
    for v in 1..=5u64 {
        r.push(OsPoint {
            t_ms: v,
            ..Default::default()
        });
    }
    let ts: Vec<u64> = r.iter().map(|p| p.t_ms).collect();
    assert_eq!(ts, vec![3, 4, 5]);
    assert_eq!(r.last().unwrap().t_ms, 5);
    assert_eq!(r.heap_bytes(), 3 * std::mem::size_of::<OsPoint>());
}

#[test]
fn capacity_covers_an_hour() {
    assert_eq!(capacity(Duration::from_secs(5)), 721);
    assert_eq!(capacity(Duration::from_secs(1)), 3601);
    assert_eq!(capacity(Duration::from_millis(1)), MAX_POINTS);
    assert_eq!(capacity(Duration::from_secs(7200)), 2);
}

#[test]
fn points_are_compact() {
    assert_eq!(std::mem::size_of::<BeamPoint>(), 48);
    assert_eq!(std::mem::size_of::<OsPoint>(), 16);
    assert_eq!(std::mem::size_of::<HostPoint>(), 32);
}

#[test]
fn series_since_and_units() {
    let h = History::new(Duration::from_secs(1));
    for t in 1..=4u64 {
        h.record_beam(
            "a",
            7,
            BeamPoint {
                t_ms: t * 1000,
                mem_total_kib: 2,
                process_count: 10 + t as u32,
                ..Default::default()
            },
        );
        h.record_os(
            "a",
            7,
            OsPoint {
                t_ms: t * 1000,
                rss_kib: 1,
                cpu_pct: 12.345,
            },
        );
    }
    let s = h.instance_series("a", 7, Some(2000));
    assert_eq!(s.interval_ms, 1000);
    assert_eq!(
        s.series["beam_processes"],
        vec![Point(3000, 13.0), Point(4000, 14.0)]
    );
    assert_eq!(s.series["beam_memory_total"][0], Point(3000, 2048.0));
    assert_eq!(s.series["rss_bytes"][1], Point(4000, 1024.0));
    assert_eq!(s.series["cpu_pct"][0], Point(3000, 12.35));
    let json = serde_json::to_string(&s.series["beam_processes"]).unwrap();
    assert_eq!(json, "[[3000,13],[4000,14]]");
    assert!(h.instance_series("a", 8, None).series.is_empty());
    assert!(h.instance_series("b", 7, None).series.is_empty());
}

#[test]
fn proc_parsers() {
    let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n";
    assert_eq!(host_cpu_jiffies(stat), Some((150, 1000)));
    let mem = "MemTotal:       16000 kB\nMemFree: 1 kB\nMemAvailable:    6000 kB\n";
    assert_eq!(mem_used_kib(mem), Some(10_000));
    assert_eq!(load1("0.52 0.40 0.30 1/200 1234\n"), Some(0.52));
    assert!(disk_used_kib(std::path::Path::new("/")).is_some());
}

/// What one sampling period costs deployex: the host files and one
/// `/proc` scan (docs/BENCHMARKS.md quotes the printed line).
#[test]
fn cost_of_one_sampling_period() {
    let pids: Vec<i32> = (1..=3).map(|_| std::process::id() as i32).collect();
    let start = std::time::Instant::now();
    let cpu0 = crate::process::proc_stats(std::process::id() as i32)
        .unwrap()
        .cpu_ticks;
    let n = 200;
    for _ in 0..n {
        let _ = std::fs::read_to_string("/proc/stat");
        let _ = std::fs::read_to_string("/proc/meminfo");
        let _ = std::fs::read_to_string("/proc/loadavg");
        let _ = disk_used_kib(std::path::Path::new("/"));
        let _ = crate::process::group_usage(&pids);
    }
    let full = start.elapsed() / n;
    let cpu_full = crate::process::proc_stats(std::process::id() as i32)
        .unwrap()
        .cpu_ticks;
    let own = vec![std::process::id() as i32];
    let start = std::time::Instant::now();
    for _ in 0..n {
        let _ = std::fs::read_to_string("/proc/stat");
        let _ = std::fs::read_to_string("/proc/meminfo");
        let _ = std::fs::read_to_string("/proc/loadavg");
        let _ = disk_used_kib(std::path::Path::new("/"));
        for _ in 0..3 {
            let _ = crate::process::members_usage(own[0], &own);
        }
    }
    let wall = start.elapsed() / n;
    let cpu1 = crate::process::proc_stats(std::process::id() as i32)
        .unwrap()
        .cpu_ticks;
    let procs = std::fs::read_dir("/proc")
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        })
        .count();
    let hz = crate::process::ticks_per_second() as f64;
    let ms = |ticks: u64| ticks as f64 * 1000.0 / hz / f64::from(n);
    let (cpu_full_ms, cpu_known_ms) = (ms(cpu_full - cpu0), ms(cpu1 - cpu_full));
    // One full scan every RESCAN_EVERY periods.
    let avg = (cpu_full_ms + cpu_known_ms * f64::from(RESCAN_EVERY)) / f64::from(RESCAN_EVERY + 1);
    println!(
        "sampling period, {procs} processes on the host: full /proc scan {full:?} wall / {cpu_full_ms:.2} ms CPU; known members only {wall:?} / {cpu_known_ms:.2} ms CPU; average {avg:.2} ms CPU per period = {:.4} % of a core at 5 s",
        avg / 5000.0 * 100.0
    );
}

/// The memory of 200 replicas' full rings for an hour at the default
/// period (docs/BENCHMARKS.md quotes the printed line).
#[test]
fn memory_of_200_replicas_for_an_hour() {
    let period = Duration::from_secs(5);
    let h = History::new(period);
    let points = capacity(period) as u64;
    let started = Instant::now();
    for t in 0..points {
        for i in 1..=200 {
            h.record_beam(
                "a",
                i,
                BeamPoint {
                    t_ms: t,
                    ..Default::default()
                },
            );
            h.record_os(
                "a",
                i,
                OsPoint {
                    t_ms: t,
                    ..Default::default()
                },
            );
        }
        h.record_host(HostPoint {
            t_ms: t,
            ..Default::default()
        });
    }
    let filled = started.elapsed();
    let bytes = h.heap_bytes();
    // A second hour overwrites in place: not one byte more.
    for t in points..points * 2 {
        for i in 1..=200 {
            h.record_beam(
                "a",
                i,
                BeamPoint {
                    t_ms: t,
                    ..Default::default()
                },
            );
        }
    }
    assert_eq!(h.heap_bytes(), bytes);
    let per_record_ns = filled.as_nanos() as f64 / (points as f64 * 401.0);
    println!(
        "history: 200 replicas x {points} points (1 h at 5 s): {bytes} bytes ({:.2} MiB, {:.1} KiB per instance); {per_record_ns:.0} ns per record (unoptimised test build)",
        bytes as f64 / 1048576.0,
        (bytes as f64 / 200.0) / 1024.0
    );
    assert!(bytes < 10 * 1024 * 1024, "{bytes}");
    let s = h.instance_series("a", 200, None);
    assert_eq!(s.series["beam_processes"].len(), points as usize);
    assert_eq!(
        s.series["beam_processes"].last().map(|p| p.0),
        Some(points * 2 - 1)
    );
}

/// Two apps' instance 1 are two rings: a series and the newest points
/// are one app's only (issue 17: they were one ring keyed by instance).
#[test]
fn two_apps_instance_rings_are_separate() {
    let h = History::new(Duration::from_secs(1));
    let beam = |t_ms: u64, process_count: u32| BeamPoint {
        t_ms,
        process_count,
        ..Default::default()
    };
    h.record_beam("a", 1, beam(1000, 11));
    h.record_beam("b", 1, beam(1001, 21));
    h.record_beam("b", 2, beam(1002, 22));
    h.record_os(
        "b",
        1,
        OsPoint {
            t_ms: 1001,
            rss_kib: 7,
            cpu_pct: 0.0,
        },
    );
    let a1 = h.instance_series("a", 1, None);
    assert_eq!(a1.series["beam_processes"], vec![Point(1000, 11.0)]);
    assert!(
        a1.series["rss_bytes"].is_empty(),
        "B's OS point is not A's: {:?}",
        a1.series["rss_bytes"]
    );
    let b1 = h.instance_series("b", 1, None);
    assert_eq!(b1.series["beam_processes"], vec![Point(1001, 21.0)]);
    assert_eq!(b1.series["rss_bytes"], vec![Point(1001, 7.0 * 1024.0)]);
    assert!(h.instance_series("c", 1, None).series.is_empty());

    let la = h.latest("a");
    assert_eq!(la.instances.len(), 1, "{:?}", la.instances);
    assert_eq!(la.instances[0].0, 1);
    assert_eq!(la.instances[0].1, None);
    assert_eq!(la.instances[0].2.map(|p| p.process_count), Some(11));
    let lb = h.latest("b");
    let got: Vec<(u32, Option<u32>, Option<u32>)> = lb
        .instances
        .iter()
        .map(|(i, os, beam)| (*i, os.map(|p| p.rss_kib), beam.map(|p| p.process_count)))
        .collect();
    assert_eq!(got, vec![(1, Some(7), Some(21)), (2, None, Some(22))]);
    assert!(h.latest("c").instances.is_empty());
}

/// A process group for the sampler, in a new group: one `sleep` (0
/// children), or `sh` and `sleeps` sleeping children (their RSS does not
/// move while they sleep); killed (its group, which this test started)
/// on drop.
struct Group(std::process::Child);

impl Group {
    fn spawn(sleeps: usize) -> Group {
        use std::os::unix::process::CommandExt;
        let script = if sleeps == 0 {
            "exec sleep 60".to_string()
        } else {
            format!("{} wait", "sleep 60 & ".repeat(sleeps))
        };
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .process_group(0)
            .spawn()
            .unwrap();
        Group(child)
    }
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
    /// The group's RSS as the sampler reads it, once its members are
    /// these programs (exec done: a forked child not yet `sleep` has
    /// another RSS) and it stopped moving (the loader done: five equal
    /// readings 20 ms apart).
    fn rss_kib(&self, programs: &[&str]) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        let comm = |pid: &i32| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let (mut last, mut same) = (None, 0);
        loop {
            let u = crate::process::group_usage(&[self.pid()]);
            if let Some(u) = u.get(&self.pid()) {
                let mut running: Vec<String> = u.members.iter().map(comm).collect();
                running.sort();
                let rss = to_kib(u.rss_bytes);
                same = if running == programs && last == Some(rss) {
                    same + 1
                } else {
                    0
                };
                last = Some(rss);
                if same == 4 {
                    return rss;
                }
            }
            assert!(Instant::now() < deadline, "group of {}: {u:?}", self.pid());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

fn app_on(dir: &std::path::Path, app: &str, replicas: u32, leader: &Group) -> EngineConfig {
    let mut cfg = EngineConfig::with_defaults(app, dir);
    cfg.var_dir = dir.to_path_buf();
    cfg.replicas = replicas;
    let start = crate::process::proc_stats(leader.pid())
        .unwrap()
        .start_time_ticks;
    crate::process::PidFile {
        pid: leader.pid(),
        start_time_ticks: start,
        program: dir.join("bin").join(app),
        version: None,
        port: 0,
    }
    .write(&cfg.slot_service_dir(1, crate::config::Slot::A).join("pid"))
    .unwrap();
    cfg
}

/// One sampler samples every app's process groups, each app's instance
/// into that app's ring, follows the app list (an added app is sampled,
/// a removed app's rings are dropped, a scaled-down instance's too).
#[test]
fn the_sampler_samples_every_app_and_follows_the_list() {
    let dir = tempfile::tempdir().unwrap();
    // A: one process; B: `sh` and two sleeps (another RSS).
    let (ga, gb) = (Group::spawn(0), Group::spawn(2));
    let (rss_a, rss_b) = (
        ga.rss_kib(&["sleep"]),
        gb.rss_kib(&["sh", "sleep", "sleep"]),
    );
    assert_ne!(rss_a, rss_b, "the two groups must differ to be told apart");
    let a = Arc::new(app_on(dir.path(), "a", 1, &ga));
    let b = Arc::new(app_on(dir.path(), "b", 1, &gb));
    let h = History::new(Duration::from_secs(1));
    let mut sampler = Sampler::new();
    let os_of = |app: &str| -> Vec<(u32, Option<u32>)> {
        h.latest(app)
            .instances
            .iter()
            .map(|(i, os, _)| (*i, os.map(|p| p.rss_kib)))
            .collect()
    };

    // A first reading has no CPU rate: the second period records.
    let both = vec![a.clone(), b.clone()];
    sampler.sample(&h, &both);
    sampler.sample(&h, &both);
    assert_eq!(os_of("a"), vec![(1, Some(rss_a))], "A's group in A's ring");
    assert_eq!(os_of("b"), vec![(1, Some(rss_b))], "B's group in B's ring");
    assert!(h.latest("a").host.is_some());

    // B removed (a reload): its rings go, even one a late BEAM sample
    // made after the removal; A's stay.
    h.record_beam("b", 1, BeamPoint::default());
    sampler.sample(&h, std::slice::from_ref(&a));
    assert!(os_of("b").is_empty(), "{:?}", os_of("b"));
    assert_eq!(os_of("a"), vec![(1, Some(rss_a))]);

    // B added again: sampled from its second period on.
    sampler.sample(&h, &both);
    sampler.sample(&h, &both);
    assert_eq!(os_of("b"), vec![(1, Some(rss_b))]);

    // A scaled down to 0: its instance 1 ring goes.
    let mut a0 = (*a).clone();
    a0.replicas = 0;
    sampler.sample(&h, &[Arc::new(a0), b.clone()]);
    assert!(os_of("a").is_empty());
    assert_eq!(os_of("b").len(), 1);
}
