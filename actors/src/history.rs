//! Metrics over time: a bounded ring of samples per instance and one for
//! the host, filled at the sampling period (`DEPLOYEX_BEAM_SAMPLE_MS`).
//!
//! Who writes what:
//! - the OtpNodeWatcher records each BEAM telemetry sample
//!   ([`record_beam`], from its `Sampled` handler: one lock, one copy);
//! - the [`Sampler`] task records the host (CPU, memory, load, disk of the
//!   var dir's filesystem) and each instance's process group (RSS, CPU %),
//!   from one `/proc` scan per period, on the blocking pool.
//!
//! Invariants: every ring holds at most [`capacity`] points (≥ one hour at
//! the period, at most [`MAX_POINTS`]); its storage is allocated once, at
//! the ring's first point, and then overwritten in place (no allocation per
//! sample). Points are fixed-size `Copy` structs of `u32`/`f32` fields with
//! a `u64` time: [`BeamPoint`] 48 bytes, [`OsPoint`] 16, [`HostPoint`] 32
//! (200 replicas × 1 h at 5 s ≈ 9 MiB, measured by
//! `cargo test -p deployex-actors --lib history::tests::memory_of_200_replicas_for_an_hour -- --nocapture`).
//! Memory values are kept in KiB (`u32`: up to 4 TiB) and served in bytes.
//!
//! The store is process-wide ([`global`]): it outlives actor restarts (a
//! restarted watcher keeps the last hour), like the flight recorders.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

/// At least this much time is kept.
pub const KEEP: Duration = Duration::from_secs(3600);
/// Upper bound of a ring, whatever the period (36 000 points = one hour at
/// 100 ms).
pub const MAX_POINTS: usize = 36_000;

/// Points a ring holds at `period`: one hour's worth, plus one.
pub fn capacity(period: Duration) -> usize {
    let ms = period.as_millis().max(1);
    (KEEP.as_millis().div_ceil(ms) as usize + 1).clamp(2, MAX_POINTS)
}

/// A BEAM telemetry sample (memory in KiB).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BeamPoint {
    pub t_ms: u64,
    pub mem_total_kib: u32,
    pub mem_processes_kib: u32,
    pub mem_binary_kib: u32,
    pub mem_ets_kib: u32,
    pub mem_atom_kib: u32,
    pub mem_code_kib: u32,
    pub process_count: u32,
    pub run_queue: u32,
    pub port_count: u32,
    pub atom_count: u32,
}

/// An instance's process group, as the OS sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OsPoint {
    pub t_ms: u64,
    pub rss_kib: u32,
    /// Of one core (a busy 2-core BEAM reads 200).
    pub cpu_pct: f32,
}

/// The host.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostPoint {
    pub t_ms: u64,
    /// Of all cores (0–100).
    pub cpu_pct: f32,
    pub load1: f32,
    pub mem_used_kib: u32,
    pub disk_used_kib: u64,
}

trait Timed {
    fn t_ms(&self) -> u64;
}
impl Timed for BeamPoint {
    fn t_ms(&self) -> u64 {
        self.t_ms
    }
}
impl Timed for OsPoint {
    fn t_ms(&self) -> u64 {
        self.t_ms
    }
}
impl Timed for HostPoint {
    fn t_ms(&self) -> u64 {
        self.t_ms
    }
}

/// A fixed-capacity ring: the oldest point is overwritten.
#[derive(Debug)]
pub struct Ring<T> {
    buf: Vec<T>,
    cap: usize,
    /// Where the next point goes once `buf` is full.
    head: usize,
}

impl<T: Copy> Ring<T> {
    pub fn new(cap: usize) -> Self {
        Ring {
            buf: Vec::new(),
            cap: cap.max(1),
            head: 0,
        }
    }

    pub fn push(&mut self, point: T) {
        if self.buf.capacity() == 0 {
            // Once, at the first point: rings of nodes never sampled cost
            // nothing.
            self.buf.reserve_exact(self.cap);
        }
        if self.buf.len() < self.cap {
            self.buf.push(point);
        } else {
            self.buf[self.head] = point;
            self.head = (self.head + 1) % self.cap;
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        let (newer, older) = self.buf.split_at(self.head.min(self.buf.len()));
        older.iter().chain(newer.iter())
    }

    pub fn last(&self) -> Option<&T> {
        if self.buf.len() < self.cap || self.head == 0 {
            self.buf.last()
        } else {
            self.buf.get(self.head - 1)
        }
    }

    /// Bytes held (the allocation, not the points in use).
    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity() * std::mem::size_of::<T>()
    }
}

/// One instance's rings.
#[derive(Debug)]
pub struct InstanceRings {
    pub beam: Ring<BeamPoint>,
    pub os: Ring<OsPoint>,
}

/// The process-wide store.
#[derive(Debug)]
pub struct History {
    period: Mutex<Duration>,
    instances: Mutex<HashMap<u32, InstanceRings>>,
    host: Mutex<Ring<HostPoint>>,
}

/// The store (created at first use with the default 5 s period; the
/// engine sets the configured one at start).
pub fn global() -> &'static History {
    static HISTORY: OnceLock<History> = OnceLock::new();
    HISTORY.get_or_init(|| History::new(Duration::from_secs(5)))
}

/// Records a BEAM sample of `instance` into [`global`].
pub fn record_beam(instance: u32, point: BeamPoint) {
    global().record_beam(instance, point);
}

impl History {
    pub fn new(period: Duration) -> Self {
        History {
            period: Mutex::new(period),
            instances: Mutex::new(HashMap::new()),
            host: Mutex::new(Ring::new(capacity(period))),
        }
    }

    /// Sets the sampling period; rings not yet filled take the new size
    /// (the engine calls this once, before any sample).
    pub fn set_period(&self, period: Duration) {
        if let Ok(mut p) = self.period.lock() {
            *p = period;
        }
        let cap = capacity(period);
        if let Ok(mut host) = self.host.lock()
            && host.is_empty()
        {
            *host = Ring::new(cap);
        }
        if let Ok(mut all) = self.instances.lock() {
            all.retain(|_, r| !(r.beam.is_empty() && r.os.is_empty()));
        }
    }

    pub fn period(&self) -> Duration {
        self.period
            .lock()
            .map(|p| *p)
            .unwrap_or(Duration::from_secs(5))
    }

    fn with_instance(&self, instance: u32, f: impl FnOnce(&mut InstanceRings)) {
        let cap = capacity(self.period());
        if let Ok(mut all) = self.instances.lock() {
            let rings = all.entry(instance).or_insert_with(|| InstanceRings {
                beam: Ring::new(cap),
                os: Ring::new(cap),
            });
            f(rings);
        }
    }

    pub fn record_beam(&self, instance: u32, point: BeamPoint) {
        self.with_instance(instance, |r| r.beam.push(point));
    }

    pub fn record_os(&self, instance: u32, point: OsPoint) {
        self.with_instance(instance, |r| r.os.push(point));
    }

    pub fn record_host(&self, point: HostPoint) {
        if let Ok(mut host) = self.host.lock() {
            host.push(point);
        }
    }

    /// The series of `instance` newer than `since` (unix ms); `deploys`
    /// are left to the caller (they come from the deployment history).
    pub fn instance_series(&self, instance: u32, since: Option<u64>) -> Series {
        let mut s = Series::new(self.period());
        let Ok(all) = self.instances.lock() else {
            return s;
        };
        let Some(r) = all.get(&instance) else {
            return s;
        };
        let newer = |t: u64| since.is_none_or(|since| t > since);
        let kib = |v: u32| f64::from(v) * 1024.0;
        let beam: Vec<&BeamPoint> = r.beam.iter().filter(|p| newer(p.t_ms())).collect();
        let os: Vec<&OsPoint> = r.os.iter().filter(|p| newer(p.t_ms())).collect();
        s.add("rss_bytes", os.iter().map(|p| (p.t_ms, kib(p.rss_kib))));
        s.add(
            "cpu_pct",
            os.iter().map(|p| (p.t_ms, round2(f64::from(p.cpu_pct)))),
        );
        let beam_series: [BeamField; 10] = [
            ("beam_memory_total", |p| p.mem_total_kib, true),
            ("beam_memory_processes", |p| p.mem_processes_kib, true),
            ("beam_memory_binary", |p| p.mem_binary_kib, true),
            ("beam_memory_ets", |p| p.mem_ets_kib, true),
            ("beam_memory_atom", |p| p.mem_atom_kib, true),
            ("beam_memory_code", |p| p.mem_code_kib, true),
            ("beam_processes", |p| p.process_count, false),
            ("run_queue", |p| p.run_queue, false),
            ("port_count", |p| p.port_count, false),
            ("atom_count", |p| p.atom_count, false),
        ];
        for (name, get, is_kib) in beam_series {
            s.add(
                name,
                beam.iter().map(|p| {
                    let v = get(p);
                    (p.t_ms, if is_kib { kib(v) } else { f64::from(v) })
                }),
            );
        }
        s
    }

    pub fn host_series(&self, since: Option<u64>) -> Series {
        let mut s = Series::new(self.period());
        let Ok(host) = self.host.lock() else {
            return s;
        };
        let pts: Vec<&HostPoint> = host
            .iter()
            .filter(|p| since.is_none_or(|since| p.t_ms > since))
            .collect();
        s.add(
            "cpu_pct",
            pts.iter().map(|p| (p.t_ms, round2(f64::from(p.cpu_pct)))),
        );
        s.add(
            "mem_used_bytes",
            pts.iter()
                .map(|p| (p.t_ms, f64::from(p.mem_used_kib) * 1024.0)),
        );
        s.add(
            "load1",
            pts.iter().map(|p| (p.t_ms, round2(f64::from(p.load1)))),
        );
        s.add(
            "disk_used_bytes",
            pts.iter()
                .map(|p| (p.t_ms, p.disk_used_kib as f64 * 1024.0)),
        );
        s
    }

    /// The newest points (for `/metrics`).
    pub fn latest(&self) -> Latest {
        let host = self.host.lock().ok().and_then(|h| h.last().copied());
        let instances = self
            .instances
            .lock()
            .map(|all| {
                let mut v: Vec<_> = all
                    .iter()
                    .map(|(i, r)| (*i, r.os.last().copied(), r.beam.last().copied()))
                    .collect();
                v.sort_by_key(|(i, _, _)| *i);
                v
            })
            .unwrap_or_default();
        Latest { host, instances }
    }

    /// Bytes held by every ring's storage.
    pub fn heap_bytes(&self) -> usize {
        let host = self.host.lock().map_or(0, |h| h.heap_bytes());
        let instances = self.instances.lock().map_or(0, |all| {
            all.values()
                .map(|r| r.beam.heap_bytes() + r.os.heap_bytes())
                .sum()
        });
        host + instances
    }
}

/// A BEAM series: its name, its field, whether the field is in KiB.
type BeamField = (&'static str, fn(&BeamPoint) -> u32, bool);

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The newest point of every ring.
#[derive(Debug, Clone, Default)]
pub struct Latest {
    pub host: Option<HostPoint>,
    pub instances: Vec<(u32, Option<OsPoint>, Option<BeamPoint>)>,
}

/// One `[unix_ms, value]` pair (integers print without a fraction).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point(pub u64, pub f64);

impl Serialize for Point {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.0)?;
        if self.1.fract() == 0.0 && self.1.abs() < 9.0e15 {
            t.serialize_element(&(self.1 as i64))?;
        } else {
            t.serialize_element(&self.1)?;
        }
        t.end()
    }
}

/// The answer of the history endpoints.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Series {
    pub interval_ms: u64,
    pub series: std::collections::BTreeMap<&'static str, Vec<Point>>,
    /// `[unix_ms, version]`, oldest first.
    pub deploys: Vec<(u64, String)>,
}

impl Series {
    /// No points.
    pub fn empty(period: Duration) -> Self {
        Series::new(period)
    }
    fn new(period: Duration) -> Self {
        Series {
            interval_ms: period.as_millis() as u64,
            series: Default::default(),
            deploys: Vec::new(),
        }
    }
    fn add(&mut self, name: &'static str, points: impl Iterator<Item = (u64, f64)>) {
        self.series
            .insert(name, points.map(|(t, v)| Point(t, v)).collect());
    }
}

pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// RFC 3339 → unix ms.
pub fn rfc3339_ms(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

fn to_kib(bytes: u64) -> u32 {
    u32::try_from(bytes / 1024).unwrap_or(u32::MAX)
}

/// A BEAM reading as a ring point.
pub fn beam_point(t_ms: u64, s: &crate::otp_node_watcher::BeamSample) -> BeamPoint {
    let n = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    BeamPoint {
        t_ms,
        mem_total_kib: to_kib(s.memory_bytes),
        mem_processes_kib: to_kib(s.memory_processes),
        mem_binary_kib: to_kib(s.memory_binary),
        mem_ets_kib: to_kib(s.memory_ets),
        mem_atom_kib: to_kib(s.memory_atom),
        mem_code_kib: to_kib(s.memory_code),
        process_count: n(s.processes),
        run_queue: n(s.run_queue),
        port_count: n(s.port_count),
        atom_count: n(s.atom_count),
    }
}

// ------------------------------------------------------------- sampler --

/// CPU counters of `/proc/stat`'s first line: (busy, total) jiffies.
fn host_cpu_jiffies(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest counted in user)
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// `MemTotal - MemAvailable` of `/proc/meminfo`, in KiB.
fn mem_used_kib(meminfo: &str) -> Option<u64> {
    let field = |name: &str| {
        meminfo.lines().find_map(|l| {
            l.strip_prefix(name)?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Some(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?))
}

fn load1(loadavg: &str) -> Option<f32> {
    loadavg.split_whitespace().next()?.parse().ok()
}

fn disk_used_kib(path: &std::path::Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frsize = s.fragment_size() as u64;
    let used = (s.blocks() as u64).saturating_sub(s.blocks_free() as u64);
    Some(used.saturating_mul(frsize) / 1024)
}

/// The state of the host/OS sampler between two periods.
pub struct Sampler {
    replicas: u32,
    var_dir: PathBuf,
    service_dir: Arc<dyn Fn(u32) -> PathBuf + Send + Sync>,
    host_prev: Option<(u64, u64)>,
    /// Per instance: (leader pid, its start time, group CPU ticks, when).
    os_prev: HashMap<u32, (i32, u64, u64, Instant)>,
    /// Members of each group found by the last full `/proc` scan.
    members: HashMap<i32, Vec<i32>>,
    /// Per instance: its pid file's mtime and (pid, start time), read
    /// again only when the file changes (a `stat` per period, not a read
    /// and a JSON parse: 200 instances).
    leaders: HashMap<u32, (std::time::SystemTime, i32, u64)>,
    /// Periods until the next full scan.
    rescan_in: u32,
}

/// A full `/proc` scan (every process's stat file) finds the members of
/// each instance's process group every this many periods (30 s at 5 s);
/// in between only the known members are read (≈ 2–3 files per instance
/// instead of one per process on the host: a tenth of the cost, measured
/// in docs/BENCHMARKS.md). A new leader (restart) triggers a scan at once.
const RESCAN_EVERY: u32 = 6;

impl Sampler {
    pub fn new(cfg: &crate::config::EngineConfig) -> Self {
        let var = cfg.var_dir.clone();
        let c = cfg.clone();
        Sampler {
            replicas: cfg.replicas,
            var_dir: var,
            // The slot the instance runs from (start-first deployments
            // move it; without a record, slot `a`: one failed open).
            service_dir: Arc::new(move |i| {
                c.slot_service_dir(i, crate::instance_monitor::slot::placement(&c, i).slot)
            }),
            host_prev: None,
            os_prev: HashMap::new(),
            members: HashMap::new(),
            leaders: HashMap::new(),
            rescan_in: 0,
        }
    }

    /// One period: the host and every instance's process group.
    pub fn sample(&mut self, history: &History) {
        let now = unix_ms_now();
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cpu = host_cpu_jiffies(&stat).map(|(busy, total)| {
            // The first reading: the average since boot.
            let (pb, pt) = self.host_prev.unwrap_or((0, 0));
            let pct = if total > pt {
                busy.saturating_sub(pb) as f64 * 100.0 / (total - pt) as f64
            } else {
                0.0
            };
            self.host_prev = Some((busy, total));
            pct
        });
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        history.record_host(HostPoint {
            t_ms: now,
            cpu_pct: cpu.unwrap_or(0.0) as f32,
            load1: load1(&loadavg).unwrap_or(0.0),
            mem_used_kib: u32::try_from(mem_used_kib(&meminfo).unwrap_or(0)).unwrap_or(u32::MAX),
            disk_used_kib: disk_used_kib(&self.var_dir).unwrap_or(0),
        });

        // Each instance's group leader, from its pid file (pid + start
        // time: a reused pid is not ours).
        let mut leaders: Vec<(u32, i32, u64)> = Vec::with_capacity(self.replicas as usize);
        for i in 1..=self.replicas {
            let path = (self.service_dir)(i).join("pid");
            let Some(mtime) = std::fs::metadata(&path).and_then(|m| m.modified()).ok() else {
                self.leaders.remove(&i);
                continue;
            };
            match self.leaders.get(&i) {
                Some(&(known, pid, start)) if known == mtime => leaders.push((i, pid, start)),
                _ => match crate::process::PidFile::read(&path) {
                    Ok(pf) => {
                        self.leaders.insert(i, (mtime, pf.pid, pf.start_time_ticks));
                        leaders.push((i, pf.pid, pf.start_time_ticks));
                    }
                    Err(_) => {
                        self.leaders.remove(&i);
                    }
                },
            }
        }
        let pgids: Vec<i32> = leaders.iter().map(|(_, pid, _)| *pid).collect();
        let new_leader = pgids.iter().any(|p| !self.members.contains_key(p));
        let usage: HashMap<i32, crate::process::GroupUsage> = if self.rescan_in == 0 || new_leader {
            self.rescan_in = RESCAN_EVERY;
            crate::process::group_usage(&pgids)
        } else {
            self.rescan_in -= 1;
            pgids
                .iter()
                .filter_map(|p| {
                    let known = self.members.get(p)?;
                    Some((*p, crate::process::members_usage(*p, known)))
                })
                .collect()
        };
        self.members = usage.iter().map(|(p, u)| (*p, u.members.clone())).collect();
        let hz = crate::process::ticks_per_second().max(1) as f64;
        let at = Instant::now();
        for (i, pid, start) in leaders {
            let Some(u) = usage.get(&pid).filter(|u| u.leader_start == Some(start)) else {
                self.os_prev.remove(&i);
                continue;
            };
            let prev = self.os_prev.insert(i, (pid, start, u.cpu_ticks, at));
            // A first reading of this process has no rate yet: no point
            // (a 0 % would be a lie), the next period has one.
            let Some((_, _, pticks, pat)) =
                prev.filter(|&(ppid, pstart, _, _)| ppid == pid && pstart == start)
            else {
                continue;
            };
            let secs = at.duration_since(pat).as_secs_f64();
            let cpu = if secs > 0.0 {
                u.cpu_ticks.saturating_sub(pticks) as f64 / hz / secs * 100.0
            } else {
                0.0
            };
            history.record_os(
                i,
                OsPoint {
                    t_ms: now,
                    rss_kib: to_kib(u.rss_bytes),
                    cpu_pct: cpu as f32,
                },
            );
        }
    }
}

/// The sampling period: `DEPLOYEX_BEAM_SAMPLE_MS`, or 5 s when BEAM
/// sampling is off (the host and process groups are still recorded).
pub fn period_of(cfg: &crate::config::EngineConfig) -> Duration {
    if cfg.beam_sample_interval.is_zero() {
        Duration::from_secs(5)
    } else {
        cfg.beam_sample_interval
    }
}

/// Runs the host/OS sampler every `period` until the returned task is
/// aborted.
///
/// Inline in the task, not on the blocking pool: a period costs 0.05 ms of
/// `/proc` reads (1.2 ms every sixth, docs/BENCHMARKS.md), which never
/// wait on a disk; a `spawn_blocking` every 5 s kept a pool thread alive
/// for good (+1 thread, +0.4 MiB RSS in `make bench`).
pub fn spawn_sampler(
    cfg: &crate::config::EngineConfig,
    period: Duration,
) -> tokio::task::JoinHandle<()> {
    let mut sampler = Sampler::new(cfg);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            sampler.sample(global());
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
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
        let avg =
            (cpu_full_ms + cpu_known_ms * f64::from(RESCAN_EVERY)) / f64::from(RESCAN_EVERY + 1);
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
}
