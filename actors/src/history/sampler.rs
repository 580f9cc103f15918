//! The host and process-group sampler: one task, one `/proc` pass per
//! period (a full scan every few periods, the known members in between).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{History, HostPoint, OsPoint, global, to_kib, unix_ms_now};
use crate::config::EngineConfig;

/// CPU counters of `/proc/stat`'s first line: (busy, total) jiffies.
pub(super) fn host_cpu_jiffies(stat: &str) -> Option<(u64, u64)> {
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
pub(super) fn mem_used_kib(meminfo: &str) -> Option<u64> {
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

pub(super) fn load1(loadavg: &str) -> Option<f32> {
    loadavg.split_whitespace().next()?.parse().ok()
}

pub(super) fn disk_used_kib(path: &std::path::Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frsize = s.fragment_size() as u64;
    let used = (s.blocks() as u64).saturating_sub(s.blocks_free() as u64);
    Some(used.saturating_mul(frsize) / 1024)
}

/// The state of the host/OS sampler between two periods.
///
/// It samples every app of the list [`Sampler::sample`] is given (the
/// tree's current apps: a reload adds, removes or scales them), each
/// app's instances from its own configuration's service folders; one
/// `/proc` scan serves every app.
#[derive(Default)]
pub struct Sampler {
    host_prev: Option<(u64, u64)>,
    /// Per app, by name: its instances' state between periods (dropped
    /// when the app leaves the list).
    apps: HashMap<String, AppState>,
    /// Members of each group found by the last full `/proc` scan.
    members: HashMap<i32, Vec<i32>>,
    /// Periods until the next full scan.
    rescan_in: u32,
}

/// One app's instances between two periods.
#[derive(Default)]
struct AppState {
    /// Per instance: (leader pid, its start time, group CPU ticks, when).
    os_prev: HashMap<u32, (i32, u64, u64, Instant)>,
    /// Per instance: its pid file's mtime and (pid, start time), read
    /// again only when the file changes (a `stat` per period, not a read
    /// and a JSON parse: 200 instances).
    leaders: HashMap<u32, (std::time::SystemTime, i32, u64)>,
}

/// A full `/proc` scan (every process's stat file) finds the members of
/// each instance's process group every this many periods (30 s at 5 s);
/// in between only the known members are read (≈ 2–3 files per instance
/// instead of one per process on the host: a tenth of the cost, measured
/// in docs/BENCHMARKS.md). A new leader (restart) triggers a scan at once.
/// One scan covers every app's groups.
pub(super) const RESCAN_EVERY: u32 = 6;

/// The folder `cfg`'s `instance` runs from (start-first deployments move
/// it; without a record, slot `a`: one failed open).
fn service_dir(cfg: &EngineConfig, instance: u32) -> PathBuf {
    cfg.slot_service_dir(
        instance,
        crate::instance_monitor::slot::placement(cfg, instance).slot,
    )
}

impl Sampler {
    pub fn new() -> Self {
        Sampler::default()
    }

    /// One period: the host and every instance's process group of every
    /// app in `apps` (the first app's var dir for the disk). The rings of
    /// an app not in `apps`, or of an instance above its replica count,
    /// are dropped from `history`.
    pub fn sample(&mut self, history: &History, apps: &[Arc<EngineConfig>]) {
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
            disk_used_kib: apps
                .first()
                .and_then(|c| disk_used_kib(&c.var_dir))
                .unwrap_or(0),
        });

        // Only the current apps and instances: a removed app's rings go
        // (memory stays bounded), and so does its state here.
        let current = |app: &str, i: u32| apps.iter().any(|c| c.app == app && i <= c.replicas);
        history.retain(current);
        self.apps
            .retain(|name, _| apps.iter().any(|c| c.app == name.as_str()));

        // Each instance's group leader, from its pid file (pid + start
        // time: a reused pid is not ours): (app index, instance, pid,
        // start time).
        let mut leaders: Vec<(usize, u32, i32, u64)> =
            Vec::with_capacity(apps.iter().map(|c| c.replicas as usize).sum());
        for (a, cfg) in apps.iter().enumerate() {
            if !self.apps.contains_key(&cfg.app) {
                self.apps.insert(cfg.app.clone(), AppState::default());
            }
            let Some(st) = self.apps.get_mut(&cfg.app) else {
                continue;
            };
            st.leaders.retain(|i, _| *i <= cfg.replicas);
            st.os_prev.retain(|i, _| *i <= cfg.replicas);
            for i in 1..=cfg.replicas {
                let path = service_dir(cfg, i).join("pid");
                let Some(mtime) = std::fs::metadata(&path).and_then(|m| m.modified()).ok() else {
                    st.leaders.remove(&i);
                    continue;
                };
                match st.leaders.get(&i) {
                    Some(&(known, pid, start)) if known == mtime => {
                        leaders.push((a, i, pid, start))
                    }
                    _ => match crate::process::PidFile::read(&path) {
                        Ok(pf) => {
                            st.leaders.insert(i, (mtime, pf.pid, pf.start_time_ticks));
                            leaders.push((a, i, pf.pid, pf.start_time_ticks));
                        }
                        Err(_) => {
                            st.leaders.remove(&i);
                        }
                    },
                }
            }
        }
        let pgids: Vec<i32> = leaders.iter().map(|(_, _, pid, _)| *pid).collect();
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
        for (a, i, pid, start) in leaders {
            let Some(cfg) = apps.get(a) else {
                continue;
            };
            let Some(st) = self.apps.get_mut(&cfg.app) else {
                continue;
            };
            let Some(u) = usage.get(&pid).filter(|u| u.leader_start == Some(start)) else {
                st.os_prev.remove(&i);
                continue;
            };
            let prev = st.os_prev.insert(i, (pid, start, u.cpu_ticks, at));
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
                &cfg.app,
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
/// aborted, over the app list `apps` holds at each period (the
/// RootSupervisor publishes its list there at start and at each reload:
/// an added app is sampled from the next period on, a removed app's rings
/// are dropped).
///
/// Inline in the task, not on the blocking pool: a period costs 0.05 ms of
/// `/proc` reads (1.2 ms every sixth, docs/BENCHMARKS.md), which never
/// wait on a disk; a `spawn_blocking` every 5 s kept a pool thread alive
/// for good (+1 thread, +0.4 MiB RSS in `make bench`).
pub fn spawn_sampler(
    apps: tokio::sync::watch::Receiver<crate::root::Apps>,
    period: Duration,
) -> tokio::task::JoinHandle<()> {
    let mut sampler = Sampler::new();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // An `Arc` copy: the lock is not held while sampling.
            let current = apps.borrow().clone();
            sampler.sample(global(), &current);
        }
    })
}
