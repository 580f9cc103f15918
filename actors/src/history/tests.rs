//! Rings, series and the sampler's parsers; the memory and cost figures
//! docs/BENCHMARKS.md quotes.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use super::sampler::{RESCAN_EVERY, disk_used_kib, host_cpu_jiffies, load1, mem_used_kib};
use super::*;

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
            7,
            BeamPoint {
                t_ms: t * 1000,
                mem_total_kib: 2,
                process_count: 10 + t as u32,
                ..Default::default()
            },
        );
        h.record_os(
            7,
            OsPoint {
                t_ms: t * 1000,
                rss_kib: 1,
                cpu_pct: 12.345,
            },
        );
    }
    let s = h.instance_series(7, Some(2000));
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
    assert!(h.instance_series(8, None).series.is_empty());
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
                i,
                BeamPoint {
                    t_ms: t,
                    ..Default::default()
                },
            );
            h.record_os(
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
    let s = h.instance_series(200, None);
    assert_eq!(s.series["beam_processes"].len(), points as usize);
    assert_eq!(
        s.series["beam_processes"].last().map(|p| p.0),
        Some(points * 2 - 1)
    );
}
