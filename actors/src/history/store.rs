//! The process-wide store: one ring per app, instance and kind, one for
//! the host, behind a mutex each (one lock and one copy per sample).
//!
//! Instance rings are keyed by app, then instance number: app A's
//! instance 1 and app B's instance 1 are two rings (node names
//! `{app}-{i}`). The app's name is allocated once, at its first ring;
//! a sample is recorded without allocating.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::{BeamPoint, HostPoint, Latest, OsPoint, Ring, Series, Timed, capacity};

/// One instance's rings.
#[derive(Debug)]
pub struct InstanceRings {
    pub beam: Ring<BeamPoint>,
    pub os: Ring<OsPoint>,
}

/// Each app's instance rings, by app name, then instance number.
type AppRings = HashMap<String, HashMap<u32, InstanceRings>>;

/// The process-wide store.
#[derive(Debug)]
pub struct History {
    period: Mutex<Duration>,
    instances: Mutex<AppRings>,
    host: Mutex<Ring<HostPoint>>,
}

/// The store (created at first use with the default 5 s period; the
/// engine sets the configured one at start).
pub fn global() -> &'static History {
    static HISTORY: OnceLock<History> = OnceLock::new();
    HISTORY.get_or_init(|| History::new(Duration::from_secs(5)))
}

/// Records a BEAM sample of `app`'s `instance` into [`global`].
pub fn record_beam(app: &str, instance: u32, point: BeamPoint) {
    global().record_beam(app, instance, point);
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
            for rings in all.values_mut() {
                rings.retain(|_, r| !(r.beam.is_empty() && r.os.is_empty()));
            }
            all.retain(|_, rings| !rings.is_empty());
        }
    }

    pub fn period(&self) -> Duration {
        self.period
            .lock()
            .map(|p| *p)
            .unwrap_or(Duration::from_secs(5))
    }

    fn with_instance(&self, app: &str, instance: u32, f: impl FnOnce(&mut InstanceRings)) {
        let cap = capacity(self.period());
        if let Ok(mut all) = self.instances.lock() {
            // Looked up by `&str`: the name is copied at the app's first
            // ring only.
            if !all.contains_key(app) {
                all.insert(app.to_string(), HashMap::new());
            }
            let Some(app_rings) = all.get_mut(app) else {
                return;
            };
            let rings = app_rings.entry(instance).or_insert_with(|| InstanceRings {
                beam: Ring::new(cap),
                os: Ring::new(cap),
            });
            f(rings);
        }
    }

    pub fn record_beam(&self, app: &str, instance: u32, point: BeamPoint) {
        self.with_instance(app, instance, |r| r.beam.push(point));
    }

    pub fn record_os(&self, app: &str, instance: u32, point: OsPoint) {
        self.with_instance(app, instance, |r| r.os.push(point));
    }

    /// Drops the rings of every (app, instance) `keep` refuses: an app a
    /// reload removed, an instance a scale-down stopped (the sampler calls
    /// this every period with the current app list, so that a last BEAM
    /// sample recorded after the removal goes too).
    pub fn retain(&self, keep: impl Fn(&str, u32) -> bool) {
        if let Ok(mut all) = self.instances.lock() {
            for (app, rings) in all.iter_mut() {
                rings.retain(|i, _| keep(app, *i));
            }
            all.retain(|_, rings| !rings.is_empty());
        }
    }

    pub fn record_host(&self, point: HostPoint) {
        if let Ok(mut host) = self.host.lock() {
            host.push(point);
        }
    }

    /// The series of `app`'s `instance` newer than `since` (unix ms);
    /// `deploys` are left to the caller (they come from the deployment
    /// history).
    pub fn instance_series(&self, app: &str, instance: u32, since: Option<u64>) -> Series {
        let mut s = Series::new(self.period());
        let Ok(all) = self.instances.lock() else {
            return s;
        };
        let Some(r) = all.get(app).and_then(|rings| rings.get(&instance)) else {
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

    /// The newest points of the host and of `app`'s instances (for
    /// `/metrics`, which the web renders per app).
    pub fn latest(&self, app: &str) -> Latest {
        let host = self.host.lock().ok().and_then(|h| h.last().copied());
        let instances = self
            .instances
            .lock()
            .map(|all| {
                let mut v: Vec<_> = all
                    .get(app)
                    .into_iter()
                    .flatten()
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
                .flat_map(|rings| rings.values())
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
